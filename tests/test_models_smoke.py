"""Every registered model trains 2 steps on random data and samples with the right shape.

Parametrised over the registry, so a newly registered model is covered without anyone
remembering to add it here."""
import pytest
import torch

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.registry import available

SHAPES = {"image": (1, 28, 28), "points": (2,)}
# Small sizes per family keep the smoke test at a few seconds: PixelCNN samples pixel by pixel,
# so it gets a tiny net and 8x8 images (784 sequential forwards at 28x28 would dominate the suite).
TINY = {"autoregressive": (["autoregressive.width=8", "autoregressive.layers=1"], (1, 8, 8)),
        # the VQ-VAE prior needs a VQ-VAE: "untrained" builds a random one instead of loading a run
        "prior": (["prior.vqvae=untrained", "prior.width=8", "prior.layers=1"], (1, 28, 28)),
        "flow": (["flow.hidden=16", "flow.depth=2"], (1, 28, 28))}


def _random_batch(info: DataInfo, n: int):
    if info.kind == "points":
        return torch.randn(n, 2), torch.zeros(n, dtype=torch.long)
    return torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("model", available("model"))
@pytest.mark.parametrize("kind", ["image", "points"])
def test_model_trains_two_steps_and_samples(model, kind):
    family = C.model_layer(model).get("family", "gan")
    sets, image_shape = TINY.get(family, ([], SHAPES["image"]))
    cfg = C.resolve(model, sets=["train.batch_size=4", *sets])
    shape = image_shape if kind == "image" else SHAPES[kind]
    info = DataInfo(name="random", kind=kind, shape=shape, num_classes=10)
    if kind == "points" and not getattr(C.family_options_class(cfg.family), "supports_points", True):
        pytest.skip(f"{model} is image-only")
    torch.manual_seed(0)
    fam = build_family(cfg, info, torch.device("cpu"))
    before = {k: v.clone() for k, v in fam.state_dict().items() if isinstance(v, torch.Tensor)}
    n = cfg.train.batch_size * getattr(fam, "batches_per_step", 1)
    for step in (1, 2):
        losses = fam.train_step(_random_batch(info, n), step)
        assert losses and all(isinstance(v, float) and v == v for v in losses.values())
    params = [p for p in fam.ema_module.parameters()]
    assert params, "the sampling module has parameters"
    out = fam.sample(5, torch.Generator().manual_seed(0))
    assert out.shape == (5, *info.shape)
    assert torch.isfinite(out).all()
    if kind == "image":
        assert out.min() >= 0 and out.max() <= 1
    again = fam.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "sampling with the same seed is reproducible"
    del before
