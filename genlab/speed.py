"""How a run computes: precision and memory format, resolved from the config, the family's measured
defaults and the hardware -- once, where the family is built -- and recorded with the run.

`train.amp: auto` and `train.channels_last: auto` take the family's declared `speed` defaults for the
data kind (chosen with bench/bench_train.py on this project's 2-core AVX512-BF16 CPU, quality checked
against fp32 runs of two seeds; see the README's performance section). bf16 -- asked for or chosen --
runs where the hardware has it natively: CUDA, or a CPU with AVX512-BF16 / AMX; elsewhere the step
falls back to float32 and says so. What was used lands in `cfg.resolved` (config.yaml's `resolved:`
section) and in every evaluation record.

Sampling has its own precision (`genlab sample / eval --precision auto | float32 | bf16`, and the
samples of periodic evaluation and grids during training): `auto` takes the family's declared
`speed[kind]["sample"]` where bf16 is native, else float32. The GAN and flow-matching families
declare bf16 (generators ~4x, Heun-20 ~2.3x faster on an AMX CPU; one trained checkpoint's FID moved
by at most a 25th of what the sampling seed moves it, README "Performance"); the others, ddpm among
them (+0.25 FID), sample in float32. Feature extraction and likelihood passes always run in float32,
so reference features and NLL / bits/dim never depend on the machine.

Inference forwards (sampling, feature extraction, likelihood passes) run in chunks of
`inference_chunk(device)` rows: the passes hand out batches of 500 (their seeding unit), but on the
CPU a net's activations for 500 images fall out of the cache (README "Performance").
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import ConfigError


def bf16_in_cpuinfo(text: str) -> bool:
    """Whether /proc/cpuinfo text names a native bf16 unit: x86 AVX512-BF16 or AMX-BF16 ("flags"),
    Arm BF16 ("Features")."""
    words = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU, from /proc/cpuinfo's flags; oneDNN's own check only where that
    file is missing (not Linux). oneDNN's check alone is not enough: it also says yes on AVX512 CPUs
    without AVX512-BF16, where it emulates bf16 -- measured on such an Intel Xeon: bf16 matmul 55
    GFLOP/s against 210 for float32 (bench/bench_train.py prints both)."""
    try:
        return bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Rows per inference forward on the CPU, measured on 2 cores (fp32, 64 against 500 rows per forward):
# gated-pixelcnn's likelihood 4.5x faster per image, pixelcnn's 3.3x, realnvp's 2x, the GAN generator
# 1.5x, the DDPM UNet 1.45x, genlab-mnist features 1.6x; glow, VQ-VAE and VAE sampling flat.
CPU_INFERENCE_CHUNK = 64


def inference_chunk(device) -> int | None:
    """Rows per inference forward on `device`: CPU_INFERENCE_CHUNK on the CPU; None (the whole batch)
    on accelerators, which are fastest on big batches."""
    return CPU_INFERENCE_CHUNK if torch.device(device).type == "cpu" else None


def native(amp: str, device: torch.device) -> bool:
    if amp == "off" or device.type == "cuda":
        return True
    return amp == "bf16" and cpu_has_bf16()  # fp16 on CPU runs, but emulated (slow): allowed when asked


def autocast(device: torch.device, amp: str):
    """The mixed-precision context of amp "off" | "bf16" | "fp16" (train.amp, resolved)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


SAMPLE_PRECISIONS = ("auto", "float32", "bf16")


def sampling_amp(family_cls, kind: str, device, asked: str = "auto") -> tuple[str, str]:
    """(amp, label) a family of `family_cls` on `device` samples `kind` data with for --precision `asked`:
    amp "off" | "bf16" for `autocast`, label the record's words ("float32", "bf16 autocast", or float32
    and why)."""
    if asked not in SAMPLE_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(SAMPLE_PRECISIONS)}, got {asked!r}")
    want = family_cls.speed.get(kind, {}).get("sample", "float32") if asked == "auto" else asked
    if want == "bf16" and not native("bf16", torch.device(device)):
        why = " (bf16 asked, but this CPU has no native bf16)" if asked == "bf16" else ""
        return "off", "float32" + why
    return ("bf16", "bf16 autocast") if want == "bf16" else ("off", "float32")


def draw(family, amp: str, n: int, generator=None, **options) -> torch.Tensor:
    """family.sample in the sampling precision `amp` (from sampling_amp); float32 out, whatever ran."""
    with autocast(torch.device(family.device), amp):
        return family.sample(n, generator, **options).float()


def resolve(cfg, family_cls, info, device: torch.device) -> None:
    """Make cfg.train.amp / channels_last concrete for this family, data and device (in place), and
    record what the run computes with in cfg.resolved."""
    t = cfg.train
    defaults = family_cls.speed.get(info.kind, {})
    asked_amp = t.amp
    amp = defaults.get("amp", "off") if t.amp == "auto" else t.amp
    note = ""
    if amp == "bf16" and not native(amp, torch.device(device)):
        note = " (bf16 asked, but this CPU has no native bf16: float32 instead)" if asked_amp == "bf16" else ""
        amp = "off"
    cl = t.channels_last
    channels_last = bool(defaults.get("channels_last", False)) if cl == "auto" else cl == "on"
    t.amp, t.channels_last = amp, "on" if channels_last else "off"
    precision = {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler"}[amp]
    cfg.resolved = {"precision": precision + note, "channels_last": channels_last,
                    "sampling": sampling_amp(family_cls, info.kind, device)[1],
                    "device": str(device), "source": _source(asked_amp, cl)}


def _source(amp: str, channels_last: str) -> str:
    parts = [f"amp {'the family default' if amp == 'auto' else 'as configured'}",
             f"channels_last {'the family default' if channels_last == 'auto' else 'as configured'}"]
    return ", ".join(parts)


def uses_channels_last(train_cfg) -> bool:
    return train_cfg.channels_last in ("on", True)
