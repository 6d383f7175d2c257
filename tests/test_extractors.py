"""Pretrained feature extractors (Inception, DINOv2, CLIP) tested on RANDOM-WEIGHT STAND-INS.

No pretrained weights are reachable on a test machine, so each extractor's code path is exercised on a
tiny file in the real format filled with random weights: `standin_*` builders, `STANDIN_*` specs and
the test-only registry entries `standin-dinov2` / `standin-clip` (registered for one test at a time,
with the stand-in's own sha256 as the expected one; the real entries' checks are never relaxed). They
test the wiring -- file lookup, verification, loading, preprocessing, dims, the eval path -- and say
nothing about feature quality; the real files are refused by the same code when they are wrong.
"""
import json
import os
from contextlib import nullcontext
import sys
import urllib.request
import warnings

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from genlab import config as C
from genlab import registry
from genlab.cli import app
from genlab.errors import GenlabError
from genlab.eval import features as FE
from genlab.eval import pretrained as P
from genlab.eval.evaluator import sha256_file
from genlab.train import Trainer

PRETRAINED = [n for n in registry.available("features") if getattr(registry.get("features", n), "weights", None)]
STANDINS = ("standin-dinov2", "standin-clip")
# A random-weight stand-in of DINOv2's checkpoint layout: patch 14 and the 37x37 position grid of the
# real files, but width 32 and 2 blocks.
STANDIN_VIT = P.ViTShape("random-weight stand-in ViT", patch=14, width=32, depth=2, heads=2)
TIMM_NAMES = {"dinov2-vit-b-14": "vit_base_patch14_dinov2", "dinov2-vit-l-14": "vit_large_patch14_dinov2"}


def _no_download(*args, **kwargs):
    pytest.fail("attempted a download")


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty weights directories (genlab's and torch hub's) in tmp; any download attempt fails the test."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for target, attr in ((torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                         (urllib.request, "urlopen")):
        monkeypatch.setattr(target, attr, _no_download)
    dirs = tmp_path / "cache" / "weights", tmp_path / "hub" / "checkpoints"
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


# ----------------------------------------------------------------------------- random-weight stand-ins
def standin_dinov2_state(shape=STANDIN_VIT, seed=0) -> dict:
    """A random-weight state dict with exactly the keys and layout of an official DINOv2 checkpoint."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(s, generator=g) for k, s in shape.tensors().items()}


def standin_clip_archive(path, seed=0) -> str:
    """A random-weight TorchScript archive with the tensors torch-fidelity's build_model reads (a ViT
    visual tower: width 64 = 1 head, 2 layers, patch 14, 56 px, 32-d embedding); returns its sha256."""
    from torch_fidelity.feature_extractor_clip import VisionTransformer

    class StandinClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = VisionTransformer(input_resolution=56, patch_size=14, width=64, layers=2, heads=1,
                                            output_dim=32)
            self.text_projection = torch.nn.Parameter(torch.randn(16, 32))

        def forward(self, x):
            return self.visual(x)

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch.jit is deprecated (OpenAI's archives are TorchScript); tracer notes
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(StandinClip().eval(), torch.rand(1, 3, 56, 56)), str(path))
    return sha256_file(path)


@pytest.fixture
def standins(places, monkeypatch):
    """The test-only entries standin-dinov2 / standin-clip, their files in genlab's weights directory."""
    pytest.importorskip("torch_fidelity")
    pytest.importorskip("timm")
    folder = places[0]
    torch.save(standin_dinov2_state(), folder / "standin_dinov2.pth")
    clip_sha = standin_clip_archive(folder / "standin_clip.pt")
    nowhere = "(nowhere: a random-weight test stand-in)"
    files = {"standin-dinov2": P.WeightsFile("random-weight stand-in DINOv2", ("standin_dinov2.pth",), nowhere),
             "standin-clip": P.WeightsFile("random-weight stand-in CLIP", ("standin_clip.pt",), nowhere, clip_sha)}
    table = registry._REGISTRY["features"]
    monkeypatch.setitem(table, "standin-dinov2", lambda device="cpu": P.DinoV2Extractor(
        device, name="standin-dinov2", shape=STANDIN_VIT, weights=files["standin-dinov2"]))
    monkeypatch.setitem(table, "standin-clip", lambda device="cpu": P.ClipExtractor(
        device, name="standin-clip", weights=files["standin-clip"]))
    return {n: folder / f.names[0] for n, f in files.items()}


# ----------------------------------------------------------------------------- the real entries
def test_registered_pretrained_extractors():
    assert set(PRETRAINED) == {"inception", "dinov2-vit-b-14", "dinov2-vit-l-14", "clip-vit-l-14"}
    assert all(registry.get("features", n).num_classes == 0 for n in PRETRAINED if n != "inception")


@pytest.mark.parametrize("name", [n for n in PRETRAINED if n.startswith("dinov2-")])
def test_dinov2_architecture_is_timms_and_matches_the_checkpoint_layout(name):
    """genlab's ViT equals timm's registered DINOv2 model; the official tensor list agrees with it."""
    timm = pytest.importorskip("timm")
    entry = registry.get("features", name)
    shape = entry.keywords["shape"]
    with torch.device("meta"):  # no memory, no init: only the structure
        ours = P.build_vit(shape, 224)
        theirs = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0, img_size=224)
    assert repr(ours) == repr(theirs) and ours.num_features == entry.dim == shape.width
    model = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    official = shape.tensors()
    assert official.pop("mask_token") == (1, shape.width)  # in the file, unused at inference
    assert official.pop("pos_embed") == (1, 37 * 37 + 1, shape.width)  # 518 px in the file, 224 px here
    assert model.pop("pos_embed") == (1, 16 * 16 + 1, shape.width)
    assert official == model


def test_clip_file_is_torch_fidelitys():
    tf = pytest.importorskip("torch_fidelity.feature_extractor_clip")
    assert P.CLIP_L14_FILE.sha256 == tf.MODEL_METADATA["clip-vit-l-14"]["hash"]
    assert P.CLIP_L14_FILE.url == tf.MODEL_URLS["clip-vit-l-14"]
    assert P.CLIP_L14_FILE.sha256 in P.CLIP_L14_FILE.url  # OpenAI's URL carries the digest we check
    assert f"clip-vit-l-14-{P.CLIP_L14_FILE.sha256}.pt" in P.CLIP_L14_FILE.names  # torch-fidelity's cache name


@pytest.mark.parametrize("name", PRETRAINED)
def test_missing_weights_is_one_line_naming_file_directories_and_url(places, name):
    pytest.importorskip("torch_fidelity")
    pytest.importorskip("timm")
    spec = registry.get("features", name).weights
    with pytest.raises(GenlabError) as e:
        FE.get_extractor(name)
    msg = str(e.value)
    assert "\n" not in msg and spec.names[0] in msg and spec.url in msg and "never downloads" in msg
    assert all(f"{d}/" in msg for d in places)


@pytest.mark.parametrize("name", PRETRAINED)
def test_missing_package_names_the_pip_command(places, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if neither were installed
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(GenlabError, match="pip install (timm )?torch-fidelity ") as e:
        FE.get_extractor(name)
    msg = str(e.value)
    assert "\n" not in msg and "genlab[features]" in msg and registry.get("features", name).weights.names[0] in msg
    assert ("pip install timm" in msg) == name.startswith("dinov2-")


# ----------------------------------------------------------------------------- stand-ins through the code path
@pytest.mark.parametrize("name", STANDINS)
def test_standin_features_dims_determinism_grey_and_sizes(standins, name):
    ext = FE.get_extractor(name)
    assert (ext.dim, ext.num_classes) == (32, 0) and ext.fingerprint == sha256_file(standins[name])[:16]
    assert ext.describe()["preprocessing"] == ext.preprocessing and "TF1-bilinear" in ext.preprocessing
    g = torch.Generator().manual_seed(0)
    for size in ((28, 28), (32, 32), (20, 36)):
        grey = torch.rand(5, 1, *size, generator=g)
        f, p = ext.features_and_probs(grey)
        assert f.shape == (5, 32) and p.shape == (5, 0) and f.dtype == torch.float32 and torch.isfinite(f).all()
        assert torch.equal(ext.features(grey.expand(-1, 3, -1, -1)), f)  # grey is replicated to RGB
        assert torch.equal(ext.features(grey), f)  # deterministic
        assert f.std(0).mean() > 1e-3  # different images, different features
    rgb = torch.rand(7, 3, 32, 32, generator=g)
    f = ext.features(rgb)
    assert torch.equal(ext.features((rgb * 255).round().to(torch.uint8)), f)  # 8-bit quantised, like uint8 data
    ext.batch_size = 3  # internal batching does not change the result
    assert torch.allclose(ext.features(rgb), f, atol=1e-5)
    for bad in (torch.rand(2, 2, 32, 32), torch.rand(2, 4, 32, 32)):
        with pytest.raises(GenlabError, match="1- or 3-channel"):
            ext.features(bad)


def test_standin_clip_matches_torch_fidelitys_extractor(standins):
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP

    ext = FE.get_extractor("standin-clip")
    with pytest.warns(FutureWarning):
        ref = FeatureExtractorCLIP("clip-vit-l-14", ["clip"],
                                   feature_extractor_weights_path=str(standins["standin-clip"]))
    x = torch.rand(4, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref((x * 255).round().to(torch.uint8))[0]
    assert ext.input_shape == (3, 56, 56) and torch.allclose(ext.features(x), expected, atol=1e-6)


def dinov2_reference_forward(state: dict, shape: P.ViTShape, x_uint8: torch.Tensor) -> torch.Tensor:
    """DINOv2's own computation in plain torch ops, written from facebookresearch/dinov2 (DinoVisionTransformer
    with block_chunks=0, interpolate_pos_encoding: bicubic, scale (w0 + 0.1) / sqrt(N)) after torch-fidelity's
    FeatureExtractorDinoV2 input path (TF1 bilinear to 224, ImageNet mean/std): no timm, no genlab."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torchvision.transforms.functional import normalize

    x = interpolate_bilinear_2d_like_tensorflow1x(x_uint8.float(), size=(224, 224), align_corners=False)
    x = normalize(x, (255 * 0.485, 255 * 0.456, 255 * 0.406), (255 * 0.229, 255 * 0.224, 255 * 0.225))
    w, heads, m, g = shape.width, shape.heads, shape.grid, 224 // shape.patch
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=shape.patch)
    t = torch.cat([state["cls_token"].expand(len(t), -1, -1), t.flatten(2).transpose(1, 2)], 1)
    pos = state["pos_embed"]
    grid = F.interpolate(pos[:, 1:].reshape(1, m, m, w).permute(0, 3, 1, 2), mode="bicubic",
                         scale_factor=((g + 0.1) / m, (g + 0.1) / m))
    t = t + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, g * g, w)], 1)
    n, length = t.shape[:2]

    def ln(v, p):
        return F.layer_norm(v, (w,), state[f"{p}.weight"], state[f"{p}.bias"], eps=1e-6)

    for i in range(shape.depth):
        b = f"blocks.{i}."
        qkv = F.linear(ln(t, b + "norm1"), state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, length, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (w // heads) ** -0.5).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(n, length, w)
        a = F.linear(a, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        t = t + state[b + "ls1.gamma"] * a
        h = F.gelu(F.linear(ln(t, b + "norm2"), state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"]))
        t = t + state[b + "ls2.gamma"] * F.linear(h, state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"])
    return ln(t, "norm")[:, 0]


def test_standin_dinov2_matches_dinov2s_own_computation(standins):
    ext = FE.get_extractor("standin-dinov2")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    u8 = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = dinov2_reference_forward(standin_dinov2_state(), STANDIN_VIT, u8)
    assert ext.input_shape == (3, 224, 224) and torch.allclose(ext.features(x), expected, rtol=1e-5, atol=1e-5)


def test_dinov2_position_embedding_resampling():
    pos = torch.randn(1, 37 * 37 + 1, 8)
    assert P.dinov2_pos_embed(pos, 37) is pos
    out = P.dinov2_pos_embed(pos, 16)
    assert out.shape == (1, 257, 8) and torch.equal(out[:, 0], pos[:, 0])
    const = torch.ones(1, 37 * 37 + 1, 8)  # bicubic without antialiasing keeps a constant field
    assert torch.allclose(P.dinov2_pos_embed(const, 16), torch.ones(1, 257, 8), atol=1e-5)


# ----------------------------------------------------------------------------- wrong files are refused
class RunsCodeOnLoad:
    """Pickled as a call of os.mkdir(marker): a file that would run code if unpickled unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_clip_refuses_a_file_whose_sha256_is_not_openais(places, monkeypatch):
    pytest.importorskip("torch_fidelity")
    standin_clip_archive(places[1] / "ViT-L-14.pt")  # a valid archive, but not the published one
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("loaded an unverified archive"))
    with pytest.raises(GenlabError, match="is not OpenAI's CLIP ViT-L/14 archive") as e:
        FE.get_extractor("clip-vit-l-14")
    assert P.CLIP_L14_FILE.url in str(e.value) and str(places[1] / "ViT-L-14.pt") in str(e.value)


@pytest.mark.parametrize("variant, looks", [
    ("standin", "a ViT with patch 14, width 32, 2 blocks, a 37x37 position grid"),
    ("registers", "with register tokens"),
    ("not-a-vit", "no DINOv2 ViT (its first tensors: weight)"),
])
def test_dinov2_refuses_another_architecture_saying_what_it_is(places, variant, looks):
    pytest.importorskip("torch_fidelity")
    pytest.importorskip("timm")
    state = {"standin": standin_dinov2_state(), "not-a-vit": {"weight": torch.zeros(3)},
             "registers": {**standin_dinov2_state(), "register_tokens": torch.zeros(1, 4, 32)}}[variant]
    torch.save(state, places[0] / "dinov2_vitb14_pretrain.pth")
    with pytest.raises(GenlabError, match="is not DINOv2 ViT-B/14 weights") as e:
        FE.get_extractor("dinov2-vit-b-14")
    msg = str(e.value)
    assert looks in msg and "expected patch 14, width 768, 12 blocks" in msg and P.DINOV2_B14_FILE.url in msg


@pytest.mark.parametrize("name", ["dinov2-vit-b-14", "inception"])
def test_state_dicts_with_code_or_corrupt_are_refused_without_running_it(places, tmp_path, name):
    pytest.importorskip("torch_fidelity")
    pytest.importorskip("timm")
    path = places[0] / registry.get("features", name).weights.names[0]
    marker = tmp_path / "code-ran"
    torch.save({"pos_embed": RunsCodeOnLoad(marker)}, path)
    with pytest.warns(UserWarning) if name == "inception" else nullcontext():  # its name's sha256 prefix
        with pytest.raises(GenlabError, match="refused without running code"):
            FE.get_extractor(name)
    assert not marker.exists()
    torch.save(standin_dinov2_state(), path)
    path.write_bytes(path.read_bytes()[:5000])  # truncated download
    with pytest.warns(UserWarning) if name == "inception" else nullcontext():
        with pytest.raises(GenlabError, match="corrupt"):
            FE.get_extractor(name)


def test_inception_refuses_a_state_dict_of_another_net(places):
    pytest.importorskip("torch_fidelity")
    torch.save(standin_dinov2_state(), places[1] / P.INCEPTION.names[0])
    with pytest.warns(UserWarning, match="sha256"), \
            pytest.raises(GenlabError, match="not torch-fidelity's InceptionV3"):
        FE.get_extractor("inception")


# ----------------------------------------------------------------------------- genlab eval with a stand-in
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    sets = ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8", "train.log_every=1",
            "train.sample_every=100", "train.checkpoint_every=100", "train.grid_size=4", "train.steps=2"]
    cfg = C.resolve("gan", sets=sets + [f"out={out}", "name=tiny"])
    Trainer(cfg, out / "tiny", show_progress=False).run()
    return out / "tiny"


@pytest.mark.filterwarnings("ignore:KID subset_size")
@pytest.mark.parametrize("name", STANDINS)
def test_cli_eval_with_a_standin_extractor(standins, tiny_run, name):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(tiny_run), "--features", name, "--n", "40", "--batch-size", "20"])
    assert res.exit_code == 0, res.output
    assert f"features: {name} (fingerprint {sha256_file(standins[name])[:16]})" in res.output
    assert f"IS skipped: IS needs class probabilities and {name} has no classifier" in res.output
    rec = json.loads((tiny_run / "eval.json").read_text())[-1]
    assert rec["extractor"] == name and rec["extractor_fingerprint"] == sha256_file(standins[name])[:16]
    assert {"fid", "kid_mean", "precision", "coverage"} <= set(rec["metrics"]) and "is_mean" not in rec["metrics"]
    assert rec["metrics"]["fid"] > 0 and (rec["n_real"], rec["n_fake"]) == (40, 40)
    again = runner.invoke(app, ["eval", str(tiny_run), "--features", name, "--n", "40", "--batch-size", "20",
                                "--metrics", "fid", "--json", "--no-save"])
    assert again.exit_code == 0, again.output  # same features from the cached reference: same FID
    assert json.loads(again.stdout)["metrics"]["fid"] == pytest.approx(rec["metrics"]["fid"], rel=1e-9)
    res = runner.invoke(app, ["eval", str(tiny_run), "--features", name, "--n", "40", "--metrics", "is"])
    assert res.exit_code == 2
    assert f"--metrics is: IS needs class probabilities and {name} has no classifier" in res.output
