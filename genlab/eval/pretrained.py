"""Pretrained feature extractors whose weights a user places by hand: Inception-v3, DINOv2, CLIP.

    inception        torch-fidelity's InceptionV3 (the TF-2015 FID network): 2048-d pool features and
                     the 1008-way softmax IS uses
    dinov2-vit-b-14  DINOv2 ViT-B/14 (Oquab et al. 2023) through timm: the 768-d CLS token; FD-DINOv2
    dinov2-vit-l-14  (Stein et al. 2023, who use ViT-L/14) is the Frechet distance on these features
    clip-vit-l-14    OpenAI CLIP ViT-L/14 through torch-fidelity: the 768-d image embedding (CMMD, FD-CLIP)

genlab never downloads weights (a download that hangs offline is worse than a clear error). Each net's
file is looked for under its exact name in $GENLAB_CACHE/weights/ (genlab's own place, paths.weights_dir)
and in torch hub's checkpoints/ directory, where torch.hub / torch-fidelity would have saved it, so a
machine that once ran them online already has it. A missing file is a one-line error naming the file,
both directories and the download URL.

Verification, before a net is built from the file:
- CLIP's TorchScript archive may hold code, so its sha256 must equal the published one (part of OpenAI's
  URL) BEFORE torch.jit.load; any other file is refused.
- State dicts (Inception, DINOv2) are read with torch.load(weights_only=True): a pickle carrying code is
  refused without running it. No sha256 of the DINOv2 files is published, so their check is structural:
  every tensor of the official checkpoint, with the shapes of the expected ViT (patch, width, blocks);
  anything else is refused with what the file looks like instead. Inception's name carries a sha256
  prefix (torch hub's convention); a file that does not match it is used with a warning, as before.
The fingerprint of every one is the first 16 hex digits of the file's sha256 (features.FINGERPRINT_CHARS).

DINOv2 and CLIP have no classifier: num_classes is 0 and their probabilities are (n, 0), so IS is not
available with them (eval.context drops it; `--metrics is` alone is an error). Preprocessing follows
torch-fidelity: uint8 RGB (grey replicated), TF1-compatible bilinear resize of the whole image to the
net's resolution (224 here; dgm-eval resizes with PIL bicubic instead), then the net's mean/std.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import registry
from ..errors import GenlabError
from ..paths import weights_dir
from .evaluator import sha256_file
from .features import FINGERPRINT_CHARS, Extractor

PIP_HINT = "pip install 'genlab[features]'"
PACKAGES = {"torch_fidelity": "torch-fidelity", "timm": "timm"}  # module -> pip name


@dataclass(frozen=True)
class WeightsFile:
    """A weights file a user places by hand: accepted names (the first is the one asked for), where to
    download it, and its published sha256 where there is one (then no other file is accepted)."""

    label: str
    names: tuple[str, ...]
    url: str
    sha256: str = ""

    @staticmethod
    def directories() -> list[Path]:
        return [weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"]

    def where(self) -> str:
        return " or ".join(f"{d}/" for d in self.directories())

    def locate(self) -> Path:
        for folder in self.directories():
            for name in self.names:
                if (folder / name).is_file():
                    return folder / name
        raise GenlabError(f"{self.label} weights not found: place {self.names[0]} in {self.where()} (download it "
                          f"from {self.url}); genlab never downloads weights itself")


def require(name: str, weights: WeightsFile, *modules: str) -> None:
    """A one-line install hint (naming the weights file too) when optional packages are missing."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(PACKAGES[module])
    if missing:
        raise GenlabError(f"the {name} feature extractor needs {' and '.join(missing)}: "
                          f"pip install {' '.join(missing)} (or {PIP_HINT}); then place its weights file {weights.names[0]} in {weights.where()} "
                          f"(download it from {weights.url})")


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A plain state dict from `path`, never running code a pickle may carry (weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise GenlabError(f"{path} is corrupt or not a plain state dict, refused without running code from it "
                          f"({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GenlabError(f"{path} is not a state dict of tensors (it holds a {type(state).__name__})")
    return state


class PretrainedExtractor(Extractor):
    """Any image size, 1 or 3 channels: the net sees uint8 RGB and resizes it itself."""

    batch_size = 64
    weights: WeightsFile

    def check_shape(self, shape: tuple) -> None:
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise GenlabError(f"{self.name} takes 1- or 3-channel images, got shape {'x'.join(map(str, shape))}")

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = (x * 255).round().to(torch.uint8)
        return self._forward_rgb8(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    def _forward_rgb8(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @staticmethod
    def _no_probs(feats: Tensor) -> tuple[Tensor, Tensor]:
        return feats, feats.new_zeros(feats.shape[0], 0)  # no classifier: IS is unavailable


def _tf1_resize_and_normalise(x: Tensor, size: int, mean, std) -> Tensor:
    """torch-fidelity's DINOv2 input path: uint8 -> float 0..255, TF1 bilinear resize, mean/std."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as resize

    x = resize(x.float(), size=(size, size), align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


# ----------------------------------------------------------------------------- Inception-v3
INCEPTION = WeightsFile("Inception", ("weights-inception-2015-12-05-6726825d.pth",),
                        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                        "weights-inception-2015-12-05-6726825d.pth")


class InceptionExtractor(PretrainedExtractor):
    """torch-fidelity's InceptionV3 via torchmetrics (NoTrainInceptionV3), resizing like torch-fidelity."""

    dim, num_classes, input_shape = 2048, 1008, (3, 299, 299)
    preprocessing = "[0,1] -> uint8 RGB (grey replicated), TF1-bilinear resize to 299 (torch-fidelity)"

    def __init__(self, device: str | torch.device = "cpu", weights: WeightsFile = INCEPTION):
        super().__init__(device)
        self.name, self.weights = "inception", weights
        require(self.name, weights, "torch_fidelity")
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = weights.locate()
        digest = sha256_file(path)
        expected = path.stem.rsplit("-", 1)[-1]  # torch hub names files <name>-<sha256 prefix>.pth
        if not digest.startswith(expected):
            warnings.warn(f"{path}: sha256 starts with {digest[:8]}, not {expected} as its name says; "
                          f"FID values may not be comparable with published ones", stacklevel=2)
        load_tensors(path)  # refuse pickled code before torch-fidelity loads it with weights_only=False
        try:  # antialias=False: torch-fidelity's own TF1-compatible bilinear resize (torchmetrics' default differs)
            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(path), antialias=False)
        except RuntimeError as e:  # load_state_dict: missing keys or other shapes
            raise GenlabError(f"{path} is not torch-fidelity's InceptionV3 state dict "
                              f"({str(e).splitlines()[0][:120]}); download it again from {weights.url}") from None
        self.net, self.path, self.fingerprint = net.to(self.device), path, digest[:FINGERPRINT_CHARS]

    def _forward_rgb8(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = self.net._torch_fidelity_forward(x)
        return feats, logits.softmax(1)


# ----------------------------------------------------------------------------- DINOv2
@dataclass(frozen=True)
class ViTShape:
    """The shape of an official DINOv2 checkpoint (facebookresearch/dinov2, block_chunks=0 key layout)."""

    label: str
    patch: int
    width: int
    depth: int
    heads: int
    grid: int = 37  # the checkpoints' position embedding is for 518 x 518 inputs: 37 x 37 patches

    def tensors(self) -> dict[str, tuple]:
        w, h = self.width, 4 * self.width
        out = {"cls_token": (1, 1, w), "pos_embed": (1, self.grid ** 2 + 1, w), "mask_token": (1, w),
               "patch_embed.proj.weight": (w, 3, self.patch, self.patch), "patch_embed.proj.bias": (w,),
               "norm.weight": (w,), "norm.bias": (w,)}
        for i in range(self.depth):
            for key, shape in {"norm1.weight": (w,), "norm1.bias": (w,), "attn.qkv.weight": (3 * w, w),
                               "attn.qkv.bias": (3 * w,), "attn.proj.weight": (w, w), "attn.proj.bias": (w,),
                               "ls1.gamma": (w,), "norm2.weight": (w,), "norm2.bias": (w,),
                               "mlp.fc1.weight": (h, w), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (w, h),
                               "mlp.fc2.bias": (w,), "ls2.gamma": (w,)}.items():
                out[f"blocks.{i}.{key}"] = shape
        return out

    def summary(self) -> str:
        return f"patch {self.patch}, width {self.width}, {self.depth} blocks, a {self.grid}x{self.grid} position grid"

    def check(self, state: dict[str, Tensor], path: Path, weights: WeightsFile) -> None:
        """Refuse a file that is not exactly this checkpoint, saying what it looks like instead."""
        want = self.tensors()
        have = {k: tuple(v.shape) for k, v in state.items()}
        if have == want:
            return
        dims = lambda s: "x".join(map(str, s))  # noqa: E731
        bad = next((f"{k} is missing" for k in want if k not in have), None) or next(
            (f"unexpected {k}" for k in have if k not in want), None) or next(
            f"{k} is {dims(have[k])}, not {dims(s)}" for k, s in want.items() if have[k] != s)
        raise GenlabError(f"{path} is not {self.label} weights: it looks like {looks_like(state)}, expected "
                          f"{self.summary()} ({bad}); download {weights.names[0]} from {weights.url}")


def looks_like(state: dict[str, Tensor]) -> str:
    """What a state dict appears to be, in words (for the refusal message)."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        return f"no DINOv2 ViT (its first tensors: {', '.join(list(state)[:4]) or 'none'})"
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    pos = state.get("pos_embed")
    grid = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.ndim == 3 else None
    extra = (f", a {grid}x{grid} position grid" if grid else ", no position embedding") + (
        ", with register tokens" if "register_tokens" in state else "")
    return f"a ViT with patch {proj.shape[-1]}, width {proj.shape[0]}, {len(blocks)} blocks{extra}"


def dinov2_pos_embed(pos: Tensor, grid: int) -> Tensor:
    """The checkpoint's position embedding (1, 1 + M*M, W) resampled to grid x grid patches exactly as
    DINOv2's interpolate_pos_encoding does at every forward (bicubic, no antialiasing, scale factor
    (grid + 0.1) / M, its "historical kludge"). Not timm's checkpoint filter: that one antialiases,
    which changes a 37 -> 16 resampling noticeably and so every feature."""
    m, w = math.isqrt(pos.shape[1] - 1), pos.shape[-1]
    if m == grid:
        return pos
    scale = (grid + 0.1) / m
    patch = pos[:, 1:].float().reshape(1, m, m, w).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic")
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, w).to(pos.dtype)], 1)


def build_vit(shape: ViTShape, resolution: int):
    """timm's VisionTransformer as `timm.create_model("vit_base_patch14_dinov2", img_size=resolution,
    num_classes=0)` builds it (tests check the two agree): CLS-token output after the final norm."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=resolution, patch_size=shape.patch, embed_dim=shape.width, depth=shape.depth,
                             num_heads=shape.heads, init_values=1e-5, num_classes=0)


class DinoV2Extractor(PretrainedExtractor):
    """DINOv2 CLS-token features (no classifier), the official checkpoint loaded into timm's ViT.

    torch-fidelity's own DINOv2 extractor needs torch.hub.load("facebookresearch/dinov2") (the GitHub
    repository, i.e. a network), so the architecture comes from timm; the checkpoint's keys are timm's
    own apart from mask_token (unused at inference, dropped as timm's _convert_dinov2 does). The input
    path is torch-fidelity's (TF1 bilinear to 224, ImageNet mean/std). Not checked here against
    published FD-DINOv2 numbers or the hub model's features: no weights are reachable offline."""

    resolution = 224
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, device: str | torch.device = "cpu", *, name: str, shape: ViTShape, weights: WeightsFile):
        super().__init__(device)
        self.name, self.weights = name, weights
        require(name, weights, "timm", "torch_fidelity")
        path = weights.locate()
        digest = sha256_file(path)
        state = load_tensors(path)
        shape.check(state, path, weights)
        state.pop("mask_token")
        state["pos_embed"] = dinov2_pos_embed(state["pos_embed"], self.resolution // shape.patch)
        net = build_vit(shape, self.resolution)
        net.load_state_dict(state)  # strict: every tensor was checked above
        self.net = net.requires_grad_(False).eval().to(self.device)
        self.path, self.fingerprint, self.dim, self.num_classes = path, digest[:FINGERPRINT_CHARS], shape.width, 0
        self.input_shape = (3, self.resolution, self.resolution)
        self.preprocessing = (f"[0,1] -> uint8 RGB (grey replicated), TF1-bilinear resize to {self.resolution}, "
                              f"ImageNet mean/std (torch-fidelity); {shape.label} CLS token")

    def _forward_rgb8(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._no_probs(self.net(_tf1_resize_and_normalise(x, self.resolution, self.mean, self.std)))


DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_B14 = ViTShape("DINOv2 ViT-B/14", 14, 768, 12, 12)
DINOV2_L14 = ViTShape("DINOv2 ViT-L/14", 14, 1024, 24, 16)
DINOV2_B14_FILE = WeightsFile("DINOv2 ViT-B/14", ("dinov2_vitb14_pretrain.pth",),
                              f"{DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth")
DINOV2_L14_FILE = WeightsFile("DINOv2 ViT-L/14", ("dinov2_vitl14_pretrain.pth",),
                              f"{DINOV2}/dinov2_vitl14/dinov2_vitl14_pretrain.pth")


# ----------------------------------------------------------------------------- CLIP
# torch_fidelity.feature_extractor_clip.MODEL_METADATA: OpenAI's URL carries the archive's full sha256.
CLIP_L14_SHA256 = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
CLIP_L14_FILE = WeightsFile("CLIP ViT-L/14", ("ViT-L-14.pt", f"clip-vit-l-14-{CLIP_L14_SHA256}.pt"),
                            f"https://openaipublic.azureedge.net/clip/models/{CLIP_L14_SHA256}/ViT-L-14.pt",
                            sha256=CLIP_L14_SHA256)


class ClipExtractor(PretrainedExtractor):
    """CLIP's image embedding (no classifier) from OpenAI's TorchScript archive, via torch-fidelity."""

    def __init__(self, device: str | torch.device = "cpu", *, name: str, weights: WeightsFile):
        super().__init__(device)
        if not weights.sha256:
            raise ValueError(f"{name}: a TorchScript archive is only loaded when its sha256 is known")
        self.name, self.weights = name, weights
        require(name, weights, "torch_fidelity")
        from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP

        path = weights.locate()
        digest = sha256_file(path)
        if digest != weights.sha256:  # before torch.jit.load: an archive can carry code
            raise GenlabError(f"{path} is not OpenAI's {weights.label} archive (sha256 {digest[:12]}..., "
                              f"published {weights.sha256[:12]}...); not loaded: download {weights.names[0]} "
                              f"again from {weights.url}")
        try:
            with warnings.catch_warnings():  # torch.jit's deprecation notice, on every load
                warnings.simplefilter("ignore", FutureWarning)
                # the name only selects torch-fidelity's download URL, unused with a path; the architecture
                # is read from the archive's tensor shapes (torch-fidelity's build_model)
                net = FeatureExtractorCLIP("clip-vit-l-14", ["clip"], feature_extractor_weights_path=str(path))
        except Exception as e:  # the hash matched, so e.g. an archive format this torch cannot read
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise GenlabError(f"{path}: cannot read the CLIP archive ({reason})") from None
        self.net = net.to(self.device)
        self.path, self.fingerprint, self.num_classes = path, digest[:FINGERPRINT_CHARS], 0
        self.dim, res = net.model.visual.output_dim, net.resolution
        self.input_shape = (3, res, res)
        self.preprocessing = (f"[0,1] -> uint8 RGB (grey replicated), TF1-bilinear resize to {res}, CLIP mean/std "
                              f"(torch-fidelity); {weights.label} image embedding")

    def _forward_rgb8(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._no_probs(self.net(x)[0])  # torch-fidelity's input path: TF1 bilinear, CLIP mean/std


# ----------------------------------------------------------------------------- registry
# Declared dim / num_classes / weights let `genlab list`, tests and help describe an extractor
# without its weights file.
registry.register("features", "inception", InceptionExtractor, dim=2048, num_classes=1008, weights=INCEPTION)
registry.register("features", "dinov2-vit-b-14", partial(DinoV2Extractor, name="dinov2-vit-b-14", shape=DINOV2_B14,
                                                         weights=DINOV2_B14_FILE),
                  dim=768, num_classes=0, weights=DINOV2_B14_FILE)
registry.register("features", "dinov2-vit-l-14", partial(DinoV2Extractor, name="dinov2-vit-l-14", shape=DINOV2_L14,
                                                         weights=DINOV2_L14_FILE),
                  dim=1024, num_classes=0, weights=DINOV2_L14_FILE)
registry.register("features", "clip-vit-l-14", partial(ClipExtractor, name="clip-vit-l-14", weights=CLIP_L14_FILE),
                  dim=768, num_classes=0, weights=CLIP_L14_FILE)
