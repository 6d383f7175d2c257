"""`python -m genlab ...` (and `torchrun ... -m genlab train ...`): the same CLI as `genlab`."""
from .cli import main

main()
