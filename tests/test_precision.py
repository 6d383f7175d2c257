"""Precision and memory format: the families' declared defaults resolve as documented, fall back to
float32 where the hardware has no native bf16, are recorded with the run, and bf16 steps agree with
float32 steps on a fixed batch to a stated tolerance."""
import pytest
import torch

from genlab import config as C
from genlab import registry, speed
from genlab.data import DataInfo, load_dataset
from genlab.errors import ConfigError
from genlab.families.base import build_family
from genlab.parallel.modules import to_channels_last
from genlab.train import Trainer, autocast
from statedicts import state_tensors  # tests/statedicts.py

IMAGE = DataInfo("mnist", "image", (1, 28, 28), 10)
POINTS = DataInfo("ring8", "points", (2,), 8)
# n_critic 1: the logged critic losses are then those of the first update, before any weight moved
TINY = {"gan": ["gan.g_width=8", "gan.d_width=8", "gan.n_critic=1"],
        "autoregressive": ["autoregressive.width=8", "autoregressive.layers=2"],
        "prior": ["prior.vqvae=untrained", "prior.width=8", "prior.layers=2"],
        "diffusion": ["diffusion.width=8"], "flow-matching": ["flow-matching.width=8"],
        "cyclegan": ["cyclegan.g_width=4", "cyclegan.d_width=4", "cyclegan.n_blocks=1"],
        "flow": ["flow.hidden=8", "flow.depth=2"]}


@pytest.mark.parametrize("text, native", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),  # AVX512 without BF16 (emulated)
    ("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\nflags\t\t: fpu avx512f avx512_bf16\n", True),
    ("flags\t\t: fpu avx512f amx_tile amx_bf16\n", True),
    ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm (e.g. Neoverse V1)
    ("Features\t: fp asimd\nmodel name\t: bf16 lookalike\n", False),
])
def test_native_bf16_is_read_from_cpuinfo_flags(text, native):
    assert speed.bf16_in_cpuinfo(text) is native


def test_auto_takes_the_family_default_per_data_kind(monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    cfg = C.resolve("gan")
    build_family(cfg, IMAGE, torch.device("cpu"))
    assert (cfg.train.amp, cfg.train.channels_last) == ("bf16", "on")
    assert cfg.resolved["precision"] == "bf16 autocast" and cfg.resolved["channels_last"] is True
    ar = C.resolve("pixelcnn")
    build_family(ar, DataInfo("mnist", "image", (1, 28, 28), 10, binarized=True), torch.device("cpu"))
    assert (ar.train.amp, ar.train.channels_last) == ("bf16", "off")
    assert ar.resolved["precision"] == "bf16 autocast" and ar.resolved["channels_last"] is False
    gated = C.resolve("gated-pixelcnn")  # its config turns channels_last on over the family default
    build_family(gated, DataInfo("mnist", "image", (1, 28, 28), 10, binarized=True), torch.device("cpu"))
    assert (gated.train.amp, gated.train.channels_last) == ("bf16", "on")
    assert "channels_last as configured" in gated.resolved["source"]
    toy = C.resolve("gan", sets=["data.name=ring8"])
    build_family(toy, POINTS, torch.device("cpu"))
    assert (toy.train.amp, toy.train.channels_last) == ("off", "off")  # 2-D MLPs stay float32
    vae = C.resolve("vae")
    build_family(vae, DataInfo("mnist", "image", (1, 28, 28), 10, binarized=True), torch.device("cpu"))
    assert (vae.train.amp, vae.train.channels_last) == ("bf16", "on")
    vq = C.resolve("vqvae")
    build_family(vq, DataInfo("mnist", "image", (1, 28, 28), 10), torch.device("cpu"))
    assert (vq.train.amp, vq.train.channels_last) == ("bf16", "on")
    ddpm = C.resolve("ddpm")  # the UNet reads x_t in float32 (tests/test_diffusion.py)
    build_family(ddpm, IMAGE, torch.device("cpu"))
    assert (ddpm.train.amp, ddpm.train.channels_last) == ("bf16", "on")
    fm = C.resolve("flow-matching")
    build_family(fm, IMAGE, torch.device("cpu"))
    assert (fm.train.amp, fm.train.channels_last, fm.resolved["sampling"]) == ("bf16", "on", "bf16 autocast")


def test_bf16_without_native_support_falls_back_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    auto = C.resolve("gated-pixelcnn")  # its measured default is bf16
    build_family(auto, DataInfo("mnist", "image", (1, 28, 28), 10, binarized=True), torch.device("cpu"))
    assert auto.train.amp == "off" and auto.resolved["precision"] == "float32"
    asked = C.resolve("gan", sets=["train.amp=bf16", "gan.g_width=4", "gan.d_width=4", "train.steps=1",
                                   "train.batch_size=4", "train.grid_size=2", f"out={tmp_path}", "name=r"])
    Trainer(asked, tmp_path / "r", show_progress=False).run()
    saved = C.read_yaml(tmp_path / "r" / "config.yaml")
    assert saved["resolved"]["precision"].startswith("float32 (bf16 asked, but this CPU has no native bf16")


def _tiny_step(model: str, amp: str, sets: tuple[str, ...] = ()):
    """A small `model` (TINY sizes, batch 8, contiguous unless `sets`, applied last, say otherwise)
    and a function taking its first training step on a fixed random batch shaped like its dataset's
    images, under `amp`, as the trainer would."""
    family = C.model_layer(model).get("family", "gan")
    cfg = C.resolve(model, sets=[f"train.amp={amp}", "train.channels_last=off", "train.batch_size=8",
                                 *TINY.get(family, []), *sets])
    info = load_dataset(cfg.data, "test").info  # bundled: mnist, or mnist-pair's [A | B] rows
    torch.manual_seed(0)
    fam = build_family(cfg, info, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8 * fam.batches_per_step, *info.shape), generator=g, dtype=torch.uint8)
    if info.binarized:
        x = (x > 127).to(torch.uint8) * 255
    if cfg.train.channels_last == "on":  # as the trainer hands batches over
        x = to_channels_last(x)

    def step() -> dict:
        torch.manual_seed(2)
        with autocast(torch.device("cpu"), cfg.train.amp):
            return fam.train_step((x, torch.zeros(len(x), dtype=torch.long)), 1)
    return fam, step


@pytest.mark.parametrize("model", registry.available("model"))  # all train on images
def test_a_float32_step_gives_the_same_losses_in_channels_last(model):
    """Every image model's first step on a fixed batch, contiguous and channels_last: the same logged
    losses (float32 sums in another order). The nets change layouts on purpose in places (flatten,
    normalisation, the generator's projection; genlab/nets/common.py::to_layout), gradient penalties
    differentiate through those changes twice, and none of that may change a result."""
    losses = {}
    for layout in ("off", "on"):
        fam, step = _tiny_step(model, "off", (f"train.channels_last={layout}",))
        losses[layout] = {k: float(v) for k, v in step().items()}
    assert losses["on"].keys() == losses["off"].keys()
    for k, v in losses["off"].items():
        assert losses["on"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (model, k)


@pytest.mark.parametrize("model", registry.available("model"))
def test_a_compiled_step_gives_the_same_losses(monkeypatch, model):
    """`train.compile=true` on every model: each net a step calls becomes torch.compile's wrapper, which
    a family must use as it uses the net (`net or self.net` once asked a compiled PixelCNN for its
    len() and crashed). Dynamo traces every forward for real; its eager backend runs the captured
    graphs without inductor's C++ build, which tests/test_train.py's compile test runs."""
    real, wrapped = torch.compile, []

    def compile_eagerly(net, **kwargs):
        wrapped.append(type(net).__name__)
        return real(net, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    losses = {}
    for compiled in ("false", "true"):
        fam, step = _tiny_step(model, "off", (f"train.compile={compiled}",))
        losses[compiled] = {k: float(v) for k, v in step().items()}
    assert wrapped, f"{model}: nothing was compiled"
    assert losses["true"].keys() == losses["false"].keys()
    for k, v in losses["false"].items():
        assert losses["true"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (model, k)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 on this CPU")
@pytest.mark.parametrize("model", registry.available("model"))
def test_bf16_step_agrees_with_float32_on_a_fixed_batch(monkeypatch, model):
    """One training step of the same weights on the same batch: every logged loss within 5% (bf16 keeps
    8 bits of mantissa, ~0.4% per value; the batch means and the float32 loss sums stay close).
    Run wherever oneDNN computes bf16, emulated or native: the numbers are the same format."""
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)  # else a CPU without it would compare fp32 to fp32
    out, after = {}, {}
    for amp in ("off", "bf16"):
        fam, step = _tiny_step(model, amp)
        out[amp] = {k: float(v) for k, v in step().items()}
        after[amp] = dict(state_tensors(fam.state_dict()))
    for k, v in out["off"].items():
        assert out["bf16"][k] == pytest.approx(v, rel=0.05, abs=0.02), (model, k)
    # bf16 really ran: its gradients moved the weights or the optimizer's moments elsewhere (the
    # logged losses alone can agree exactly: a denoiser's zero-initialised output layer predicts 0)
    assert after["off"].keys() == after["bf16"].keys()
    assert any(not torch.equal(t, after["bf16"][k]) for k, t in after["off"].items())


def _check_every_weighted_forward(nets: list[torch.nn.Module]) -> tuple[list[int], list[str]]:
    """Hooks on every conv / linear layer of `nets` that redo the layer's forward with autocast's
    weight cache off (so its weights are cast afresh) and note each layer whose output differs.
    Spectrally normalised layers are skipped: a second forward would step their power iteration."""
    calls, stale, busy = [0], [], [False]

    def redo(module, args, out):
        if busy[0]:
            return
        busy[0] = True
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False,
                                                 enabled=torch.is_autocast_enabled("cpu")):
                again = module(*args)
        finally:
            busy[0] = False
        calls[0] += 1
        if not torch.equal(out, again):
            stale.append(type(module).__name__)

    for net in nets:
        for m in net.modules():
            if (isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))
                    and not torch.nn.utils.parametrize.is_parametrized(m)):
                m.register_forward_hook(redo)
    return calls, stale


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 on this CPU")
@pytest.mark.parametrize("model", registry.available("model"))
def test_bf16_forwards_in_a_step_use_the_current_weights(monkeypatch, model):
    """autocast keeps the bf16 copy of every weight it cast until its region ends, and a family's
    whole step is one region: unless Update empties that cache after each update, a later forward in
    the same step (WGAN-GP's second critic iteration) runs with the weights from before the update.
    GANs are built with two critic updates per step here, so there is such a forward to check."""
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    gan = C.model_layer(model).get("family", "gan") == "gan"
    fam, step = _tiny_step(model, "bf16", ("gan.n_critic=2",) if gan else ())  # later sets win over TINY's
    calls, stale = _check_every_weighted_forward([v for v in vars(fam).values() if isinstance(v, torch.nn.Module)])
    step()
    assert calls[0] > 0 and not stale, (model, stale)


# ----------------------------------------------------------------------------- sampling precision
def _families():
    return [registry.get("family", name) for name in registry.available("family")]


@pytest.mark.parametrize("native", [True, False])
def test_sampling_precision_auto_is_the_declared_default_where_bf16_is_native(monkeypatch, native):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    for cls in _families():
        declared = cls.speed.get("image", {}).get("sample", "float32")
        amp, label = speed.sampling_amp(cls, "image", cpu)
        expect = "bf16" if declared == "bf16" and native else "off"
        assert (amp, label) == (expect, "bf16 autocast" if expect == "bf16" else "float32"), cls
        assert speed.sampling_amp(cls, "image", cpu, "float32") == ("off", "float32")
    gan = registry.get("family", "gan")
    assert speed.sampling_amp(gan, "image", cpu)[0] == ("bf16" if native else "off")  # GANs declare bf16
    assert speed.sampling_amp(gan, "points", cpu) == ("off", "float32")  # 2-D MLPs: nothing measured


def test_sampling_precision_asked_for(monkeypatch):
    cpu = torch.device("cpu")
    gan, flow = registry.get("family", "gan"), registry.get("family", "flow")
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    amp, label = speed.sampling_amp(registry.get("family", "diffusion"), "image", cpu, "bf16")
    assert amp == "off" and label.startswith("float32 (bf16 asked, but this CPU has no native bf16")
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    assert speed.sampling_amp(registry.get("family", "diffusion"), "image", cpu, "bf16")[0] == "bf16"
    assert speed.sampling_amp(flow, "image", cpu, "bf16")[0] == "bf16"  # asked for: any family
    with pytest.raises(ConfigError, match="--precision must be one of auto, float32, bf16"):
        speed.sampling_amp(gan, "image", cpu, "fp16")


def _models_sampling_bf16():
    return [m for m in registry.available("model")
            if registry.get("family", C.model_layer(m).get("family", "gan")).speed.get("image", {}).get("sample") == "bf16"]


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 on this CPU")
@pytest.mark.parametrize("model", _models_sampling_bf16())
def test_bf16_samples_agree_with_float32_on_a_fixed_seed(model):
    """The same weights and seed sampled both ways: float32 images out either way, within 0.05 of each
    other everywhere and 0.005 on average (a trained GAN measured: max 0.049, mean 0.0005)."""
    torch.manual_seed(0)
    family = build_family(C.resolve(model), IMAGE, torch.device("cpu"))
    with torch.no_grad():  # untrained denoisers end in a zero conv: both precisions would return the noise
        for p in (p for m in family.ema_modules for p in m.parameters() if not p.any()):
            p.normal_(0, 0.02)
    a, b = (speed.draw(family, amp, 64, torch.Generator().manual_seed(1)) for amp in ("off", "bf16"))
    assert a.dtype == b.dtype == torch.float32
    diff = (a - b).abs()
    assert 0 < diff.mean() < 0.005 and diff.max() < 0.05, (diff.mean(), diff.max())  # > 0: bf16 really ran
