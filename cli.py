"""Shim so that `python cli.py ...` works from a checkout without installing."""
from genlab.cli import main

main()
