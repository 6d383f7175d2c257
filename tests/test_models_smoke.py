"""Every registered model trains 2 steps on random data, moves its parameters, and samples.

Parametrised over the registry, so a newly registered model is covered without anyone
remembering to add it here."""
import pytest
import torch

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.registry import available
from statedicts import state_tensors  # tests/statedicts.py

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


def tiny_family(model: str, kind: str, extra=()):
    family = C.model_layer(model).get("family", "gan")
    sets, image_shape = TINY.get(family, ([], SHAPES["image"]))
    cfg = C.resolve(model, sets=["train.batch_size=4", *sets, *extra])
    shape = image_shape if kind == "image" else SHAPES[kind]
    info = DataInfo(name="random", kind=kind, shape=shape, num_classes=10)
    if kind == "points" and not getattr(C.family_options_class(cfg.family), "supports_points", True):
        pytest.skip(f"{model} is image-only")
    torch.manual_seed(0)
    return cfg, info, build_family(cfg, info, torch.device("cpu"))


def _trained_parameters(fam) -> dict[str, torch.Tensor]:
    """Every parameter of the family's nets that an optimizer updates."""
    out = {}
    for name, value in vars(fam).items():
        if isinstance(value, torch.nn.Module):
            for pname, p in value.named_parameters():
                if p.requires_grad:
                    out[f"{name}.{pname}"] = p
    return out


@pytest.mark.parametrize("model", available("model"))
@pytest.mark.parametrize("kind", ["image", "points"])
def test_model_trains_two_steps_and_samples(model, kind):
    cfg, info, fam = tiny_family(model, kind)
    params = _trained_parameters(fam)
    assert params, "the family has trainable parameters"
    before = {k: p.detach().clone() for k, p in params.items()}
    n = cfg.train.batch_size * fam.batches_per_step
    for step in (1, 2):
        losses = fam.train_step(_random_batch(info, n), step)
        assert losses, "train_step returns the losses to log"
        for key, v in losses.items():
            # losses stay on the device (no host read-back per step) and are detached
            assert isinstance(v, (torch.Tensor, float)), f"{key}: {type(v).__name__}"
            if isinstance(v, torch.Tensor):
                assert v.numel() == 1 and not v.requires_grad, key
            assert torch.isfinite(torch.as_tensor(v)).all(), f"{key} = {v}"
    moved = [k for k, p in params.items() if not torch.equal(p.detach(), before[k])]
    assert moved, "two training steps changed no parameter"
    assert fam.ema_modules and all(list(m.parameters()) for m in fam.ema_modules)
    out = fam.sample(5, torch.Generator().manual_seed(0))
    assert out.shape == (5, *info.shape)
    assert torch.isfinite(out).all()
    if kind == "image":
        assert out.min() >= 0 and out.max() <= 1
    again = fam.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "sampling with the same seed is reproducible"


# Exact resume for every registered model, through the real trainer on bundled data: a 2-step run
# interrupted after its first step (checkpointed) and resumed equals 2 straight steps in every
# tensor of the checkpoint (weights, optimizer state, buffers, EMA, RNG states, data sampler).
RESUME_DATA = {"cyclegan": ["data.name=mnist-pair", "cyclegan.g_width=4", "cyclegan.d_width=4", "cyclegan.n_blocks=1"],
               "vae": ["vae.width=4", "vae.iw_samples=2"], "vqvae": ["vqvae.width=8", "vqvae.n_codes=16"],
               "autoregressive": ["autoregressive.width=4"], "prior": ["prior.width=4"],
               "gan": ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8"]}


def _resume_sets(model: str, tmp_path, name: str, steps: int) -> list[str]:
    family = C.model_layer(model).get("family", "gan")
    tiny = TINY.get(family, ([], None))[0]
    return [*tiny, *RESUME_DATA.get(family, []), "train.batch_size=4", f"train.steps={steps}", "train.log_every=1",
            "train.sample_every=1000", "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.grid_size=2",
            "train.ema_decay=0.9",
            f"out={tmp_path}", f"name={name}"]


@pytest.mark.parametrize("model", available("model"))
def test_every_model_resumes_exactly(model, tmp_path):
    from genlab import checkpoint
    from genlab.train import Trainer

    Trainer(C.resolve(model, sets=_resume_sets(model, tmp_path, "full", 2)), tmp_path / "full", show_progress=False).run()
    cut = Trainer(C.resolve(model, sets=_resume_sets(model, tmp_path, "half", 2)), tmp_path / "half", show_progress=False)
    real_step = cut.family.train_step

    def interrupted(batch, step):
        if step == 2:
            raise KeyboardInterrupt("stopped after the step-1 checkpoint")
        return real_step(batch, step)

    cut.family.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    Trainer(C.resolve(model, sets=_resume_sets(model, tmp_path, "half", 2)), tmp_path / "half", resume=True,
            show_progress=False).run()
    a, b = (checkpoint.load(tmp_path / d / "checkpoints" / "last.pt") for d in ("full", "half"))
    ta = dict(state_tensors({k: a[k] for k in ("family_state", "ema", "rng", "sampler")}, floating_only=False))
    tb = dict(state_tensors({k: b[k] for k in ("family_state", "ema", "rng", "sampler")}, floating_only=False))
    assert ta.keys() == tb.keys() and len(ta) > 4
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{model}: resumed state differs in {different[:5]}"


# Inference forwards run in row chunks (genlab.speed.inference_chunk: 64 on the CPU): every model's
# samples, likelihoods and reconstructions must not depend on the chunk. Chunks of 2 rows against one
# forward of the whole batch; the tolerance covers float rounding that differs between batch shapes.
INFERENCE_EXTRA = {"vae": ["vae.iw_samples=6", "vae.iw_batch=12"],
                   # a small net for the adaptive ODE likelihood (80 s at the default width, perturbed)
                   "flow-matching": ["flow-matching.width=8", "flow-matching.ode_tol=1e-4"]}


def _inference_outputs(model: str) -> dict[str, torch.Tensor]:
    family = C.model_layer(model).get("family", "gan")
    cfg, info, fam = tiny_family(model, "image", INFERENCE_EXTRA.get(family, ()))
    if "translate" in fam.capabilities:
        pytest.skip("translation samples are drawn from the images trained on (test_cyclegan.py)")
    with torch.no_grad():  # zero-initialised output layers (the denoisers') would ignore their input
        for p in _trained_parameters(fam).values():
            if not p.any():
                p.normal_(0, 0.01)
    n = 5
    x = _random_batch(info, n)[0]
    if family in ("vae", "autoregressive"):  # binary data
        x = (x > 127).to(torch.uint8) * 255
    out = {"sample": fam.sample(n, torch.Generator().manual_seed(0))}
    if "log_likelihood" in fam.capabilities:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            out["log_likelihood"] = torch.as_tensor(fam.log_likelihood(x)).double()
    if "reconstruct" in fam.capabilities:
        out["reconstruct"] = fam.reconstruct(x).float()
    return out


@pytest.mark.parametrize("model", available("model"))
def test_inference_does_not_depend_on_the_chunk(model, monkeypatch):
    from genlab import speed

    monkeypatch.setattr(speed, "CPU_INFERENCE_CHUNK", 1 << 30)
    whole = _inference_outputs(model)
    monkeypatch.setattr(speed, "CPU_INFERENCE_CHUNK", 2)
    chunks = _inference_outputs(model)
    assert whole.keys() == chunks.keys()
    for key in whole:
        diff = (whole[key].double() - chunks[key].double()).abs().max().item()
        assert diff <= 1e-4 * (1 + whole[key].double().abs().max().item()), (model, key, diff)
