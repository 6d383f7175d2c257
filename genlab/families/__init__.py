"""Families: one file each. Importing this package registers them."""
from . import gan  # noqa: F401  (registration side effects)
from .base import Family, build_family  # noqa: F401
