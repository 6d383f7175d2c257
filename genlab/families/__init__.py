"""Families: one file each. Importing this package registers them."""
from . import autoregressive, cyclegan, flow, gan, vae, vqvae  # noqa: F401  (registration side effects)
from .base import Family, build_family  # noqa: F401
