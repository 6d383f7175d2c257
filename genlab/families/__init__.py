"""Families: one file each. Importing this package imports every module in it, which registers the
families they define -- a new family is a new file here, with no list to edit."""
import importlib
import pkgutil

from .base import Family, FamilyBase, build_family  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
