"""genlab: a generative-models laboratory (one training loop, one evaluation path)."""
from importlib import import_module

from . import registry

__version__ = "0.1.0"

# Importing a subpackage registers what it defines; do it lazily, on the first lookup of a kind,
# so that `genlab --help` stays fast and a broken optional module cannot break unrelated commands.
for _kind, _module in {
    "family": "genlab.families",
    "net": "genlab.nets",
    "loss": "genlab.losses",
    "regularizer": "genlab.losses",
    "dataset": "genlab.data",
    "features": "genlab.eval.features",
}.items():
    registry.register_loader(_kind, lambda m=_module: import_module(m))
registry.register_loader("model", lambda: import_module("genlab.config").register_models())
# measures: the sample metrics, then translation, then the diagnostics (this order is the display order)
registry.register_loader("measure", lambda: [import_module(f"genlab.eval.{m}")
                                             for m in ("sample_measures", "translation", "diagnostics")])
