"""Architectures only. Every net is parameterised by the data shape (resolution, channels) and
width; there is no per-resolution copy. Importing this package imports every module in it, which
registers the nets (each with its declared role, data kinds and output)."""
import importlib
import pkgutil

from .common import apply_spectral_norm, make_norm  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
