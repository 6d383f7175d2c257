"""What the measures of one evaluation share, each piece computed on first use and only once.

    ctx = EvalContext(run, n=10000, seed=0)          # run: a LoadedRun, or a trainer's view of itself
    ctx.fake            (features, probs) of n seeded samples: ONE sampling + feature pass (or of the
                        first n images of a sample file, `source=`)
    ctx.reference       cached features of n real images of the reference split
    ctx.sample_metrics  every selected sample metric (FID, KID, ...) from those two, in one call
    ctx.test_images     real uint8 images for likelihood / reconstruction measures
    ctx.record          provenance the pieces add to the record (extractor, fingerprint, n_real, ...)

A `run` needs: family (with capabilities and device), info, cfg, step, checkpoint, `sampling()`, a
context in which family.sample uses the weights to evaluate (the EMA when there is one), and
`sample_amp` / `sample_precision`, what sampling computes in (speed.sampling_amp).
"""
from __future__ import annotations

import contextlib
import sys
import time
from functools import cached_property
from typing import Callable

import torch

from .. import parallel
from ..errors import GenlabError
from ..speed import draw


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class EvalContext:
    def __init__(self, run, n: int = 10000, seed: int = 0, batch_size: int = 500, features: str = "auto",
                 ref: str = "test", n_boot: int = 0, n_test: int | None = None, extractor=None, reference=None,
                 log: Callable[[str], None] = stderr, kid_subset_size: int = 1000, sample_options: dict | None = None,
                 source=None):
        if n < 2:
            raise GenlabError(f"--n must be at least 2, got {n}")
        if batch_size < 1:
            raise GenlabError(f"--batch-size must be positive, got {batch_size}")
        self.run, self.family, self.info = run, run.family, run.info
        self.n, self.seed, self.batch_size, self.features, self.ref = n, seed, batch_size, features, ref
        self.n_boot, self.n_test, self.log, self.kid_subset_size = n_boot, n_test, log, kid_subset_size
        self.sample_options = dict(sample_options or {})
        self.source = source  # a sample file (genlab.samplefiles) scored instead of the run's own samples
        self._extractor, self._reference = extractor, reference
        self.sample_metric_names: tuple[str, ...] = ()  # set by evaluate: the selected sample metrics
        self.want_probs = True
        self.record: dict = {}
        self.seconds: dict = {}

    @property
    def device(self) -> torch.device:
        return torch.device(self.family.device)

    @property
    def data_cfg(self):
        from .reference import data_config_for

        return data_config_for(self.run.cfg.data)

    def _timed(self, key: str, t0: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - t0, 2)

    # ------------------------------------------------------------------ the shared sample pass
    @cached_property
    def extractor(self):
        from .features import get_extractor, resolve_extractor

        name, picked = resolve_extractor(self.features, self.info)
        ext = self._extractor or get_extractor(name, self.device)
        ext.check_shape(tuple(self.info.shape))
        if not ext.num_classes:  # DINOv2, CLIP: no class probabilities, so no IS
            self.sample_metric_names = without_probs(self.sample_metric_names, ext, self.log)
            self.want_probs = False
        self.record.update(extractor=ext.name, extractor_fingerprint=ext.fingerprint, extractor_auto=picked)
        return ext

    @cached_property
    def reference(self):
        from .reference import describe, get_reference

        t0 = time.perf_counter()
        ext = self.extractor
        refs = self._reference or parallel.on_main(get_reference, self.data_cfg, self.ref, self.n, ext,
                                                   batch_size=self.batch_size, log=self.log)
        self.record.update(**describe(refs), reference_cache=refs.status)
        self._timed("reference", t0)
        return refs

    def draw(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """k samples of the evaluated weights, with the sampling options asked for (e.g. temperature), in
        the run's sampling precision (--precision; not train.amp: evaluation numbers should not depend
        on a training speed knob). Features are extracted in float32 whatever it is."""
        return draw(self.family, self.run.sample_amp, k, generator, **self.sample_options)

    @cached_property
    def fake(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        from .passes import sample_features, source_features

        ext = self.extractor
        t0 = time.perf_counter()
        if self.source is not None:
            feats, probs = source_features(self.source, self.n, ext, self.batch_size, keep_probs=self.want_probs)
        else:
            with self.run.sampling():
                feats, probs = sample_features(self.draw, self.n, ext, self.batch_size, self.seed, self.info.shape,
                                               keep_probs=self.want_probs)
        self.record.update(n_fake=int(feats.shape[0]), n_boot=self.n_boot)
        if self.source is None:
            self.record["precision"] = self.run.sample_precision
        self._timed("sample_and_features", t0)
        return feats, probs

    @cached_property
    def sample_metrics(self) -> dict[str, float]:
        """Every selected sample metric from the one feature pass (metrics.compute_all: the k-NN radii
        of precision/recall and density/coverage are shared, as in one call)."""
        from .metrics import compute_all

        refs, (fake, probs) = self.reference, self.fake
        t0 = time.perf_counter()
        kid_size = min(self.kid_subset_size, refs.n, fake.shape[0])
        names = self.sample_metric_names

        def compute():
            ks = [k for k, m in ((3, "pr"), (5, "dc")) if m in names]  # compute_all's default pr_k / dc_k
            radii = refs.knn_radii(ks) if ks and refs.n > max(ks) else None
            return compute_all(*_on(self.device, refs.features, fake, probs), names, n_boot=self.n_boot,
                               seed=self.seed, kid_subset_size=kid_size, real_radii=radii)

        values = parallel.on_main(compute)
        self._timed("metrics", t0)
        return values

    # ------------------------------------------------------------------ test images
    @cached_property
    def test_images(self) -> torch.Tensor:
        """Real `ref`-split uint8 images (as train_step gets them) for likelihood / reconstruction.
        Binarized data: load_real returns ONE fixed, seeded Bernoulli draw (named in the record)."""
        from .reference import BINARIZATION, load_real

        t0 = time.perf_counter()
        n_test = self.n_test or self.family.eval_n_test or self.n
        images, info = load_real(self.data_cfg, self.ref, n_test)
        self.record.update(test_split=self.ref, **({"nll_binarization": BINARIZATION} if info.binarized else {}))
        self._timed("test_images", t0)
        return images


def without_probs(names, extractor, log: Callable[[str], None] = stderr) -> tuple[str, ...]:
    """The sample metrics `names` less those that need class probabilities (IS), for an extractor
    without a classifier (num_classes 0), with a note; a GenlabError when nothing would be left."""
    from .measures import get_measure

    dropped = [n for n in names if get_measure(n).uses_probs]
    kept = tuple(n for n in names if n not in dropped)
    if not dropped:
        return kept
    labels = ", ".join(get_measure(n).figures[0].label for n in dropped)
    why = f"{labels} needs class probabilities and {extractor.name} has no classifier"
    if not kept:
        raise GenlabError(f"--metrics {','.join(dropped)}: {why}; use --features inception (or genlab-DATASET) for it")
    log(f"{labels} skipped: {why} (--features inception has one)")
    return kept


def _on(device, *tensors):
    """Metrics where the features can be fastest: on the GPU when the model is there."""
    dev = torch.device(device)
    return [t.to(dev) if t is not None and dev.type == "cuda" else t for t in tensors]


class TrainerView:
    """A trainer seen as a run by the measures (its family, data, config and sampling weights)."""

    def __init__(self, trainer):
        self.family, self.info, self.cfg = trainer.family, trainer.info, trainer.cfg
        self.run_dir, self.step, self.checkpoint = trainer.run_dir, trainer.step, "training"
        self.sampling = trainer.sampling_context
        self.sample_amp, self.sample_precision = trainer.sample_amp, trainer.sample_precision


@contextlib.contextmanager
def preserved_modes(family):
    """Restore the .training flag of every module reachable from the family's attributes."""
    modules = [m for v in vars(family).values() if isinstance(v, torch.nn.Module) for m in v.modules()]
    modes = [m.training for m in modules]
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def forked_rng(device) -> contextlib.AbstractContextManager:
    """The global RNGs (CPU, and this device's on CUDA) as they were when the block ends."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
