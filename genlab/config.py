"""Every default lives in the dataclasses below; configs/<model>.yaml holds only differences.

Resolution order (later wins): dataclass defaults -> configs/<model>.yaml -> --config FILE ->
CLI flags (--steps, --dataset, ...) -> --set a.b=c. Each layer is validated against the
dataclasses: an unknown key is an error naming the valid keys, and values are type-checked.

The family's own options (losses, nets, optimizers, ...) are a dataclass registered with the
family (`Family.Options`) and appear in the config under the family's name, e.g. `gan.n_critic`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import registry
from .errors import ConfigError  # re-exported: callers import it from here
from .fields import apply_aliases, check, option




@dataclass
class OptimConfig:
    lr: float = option(2e-4, gt=0)
    betas: tuple[float, float] = option((0.5, 0.999), ge=0, lt=1)
    weight_decay: float = option(0.0, ge=0)
    eps: float = option(1e-8, gt=0)  # Adam's epsilon


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = ""  # where torchvision datasets live; "" -> $GENLAB_DATA or ~/.cache/genlab
    resolution: int = option(0, ge=0, zero="the dataset's native size")  # folder: defaults to 64
    channels: int = option(0, choices=(0, 1, 3))  # folder: 1 or 3 (0 -> 3)
    binarize: bool = False  # dynamic binarisation: each batch re-sampled as Bernoulli(pixel)
    streaming: bool = False  # folder: decode per batch instead of holding all images in memory
    n_points: int = option(100_000, ge=1)  # toy 2-D mixtures: size of the training pool
    seed: int = option(0, ge=0)  # seeds anything random about the data itself (toy points, stacking)


@dataclass
class TrainConfig:
    steps: int = option(5000, ge=1)
    batch_size: int = option(64, ge=1)  # the GLOBAL batch: under torchrun each rank takes batch_size / world_size rows
    log_every: int = option(50, ge=1)
    sample_every: int = option(500, ge=0, zero="a grid at the last step only")
    checkpoint_every: int = option(1000, ge=0, zero="a checkpoint at the last step only")
    keep_checkpoints: int = option(3, ge=0)  # periodic step-N.pt files kept; last.pt is always kept
    grid_size: int = option(64, ge=1, le=4096)  # samples in each periodic grid (fixed noise)
    ema_decay: float = option(0.0, ge=0, lt=1, zero="no EMA")  # e.g. 0.999 keeps an EMA of the sampling weights
    # mixed precision of the training step: auto (the family's measured default, see genlab/speed.py)
    # | off | bf16 | fp16 (with a GradScaler). bf16 runs on CUDA and on CPUs with native bf16 (AVX512-BF16
    # / AMX), else float32; `false` / `true` from older configs mean off / bf16
    amp: str = option("auto", choices=("auto", "off", "bf16", "fp16"), aliases=((False, "off"), (True, "bf16")))
    compile: bool = False  # torch.compile the nets a training step calls (inductor; CPU needs a C compiler)
    # conv nets and image batches in channels_last memory format: auto (the family's measured default) | on | off
    channels_last: str = option("auto", choices=("auto", "on", "off"), aliases=((True, "on"), (False, "off")))
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    threads: int = option(0, ge=0, zero="all cores")  # torch intra-op threads on CPU


@dataclass
class EvalConfig:
    every: int = option(0, ge=0, zero="never")  # evaluate during training every N steps; keeps best.pt by FID
    n: int = option(2000, ge=2)  # generated samples for periodic evaluation (cheap, FID is biased by n)
    metrics: str = "fid"
    features: str = "auto"
    ref: str = option("test", choices=("train", "test"))
    batch_size: int = option(500, ge=1)


@dataclass
class DiagnoseConfig:
    every: int = option(0, ge=0, zero="never")  # run the cheap mode-collapse diagnostics every N steps
    n: int = option(2500, ge=2)
    final: bool = True  # 2-D data: also at the last step when `every` is 0 (the mixture figures)


@dataclass
class RunConfig:
    model: str = ""
    family: str = "gan"
    description: str = ""
    seed: int = option(0, ge=0, lt=2**63)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str = "runs"
    name: str = ""  # run directory name; "" -> <model>-<dataset>-<timestamp>
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    options: Any = None  # the family's Options dataclass; serialised under the family's name
    # written by genlab, not read: what the run computed with (precision, channels_last, device)
    resolved: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d[self.family] = d.pop("options")
        return d


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------- building


def family_options_class(family: str) -> type:
    return registry.get("family", family).Options


def build(layers: list[dict]) -> RunConfig:
    """Merge validated dict layers over the defaults and build a typed RunConfig."""
    family = "gan"
    for layer in layers:
        family = layer.get("family", family)
    opts_cls = family_options_class(family)
    merged = RunConfig(options=opts_cls()).to_dict()
    for layer in layers:
        _merge(merged, layer, schema=_schema(RunConfig, family, opts_cls), path="")
    opts = _build_dataclass(opts_cls, merged.pop(family), family)
    cfg = _build_dataclass(RunConfig, merged, "")
    cfg.options = opts
    return cfg


def _schema(cls: type, family: str | None = None, opts_cls: type | None = None) -> dict:
    """{key: (type, dataclasses.Field | None)} of a config section."""
    hints = typing.get_type_hints(cls)
    out = {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.name != "options"}
    if family is not None:
        out[family] = (opts_cls, None)
    return out


def _merge(base: dict, layer: dict, schema: dict, path: str) -> None:
    if not isinstance(layer, dict):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: expected a mapping, got {layer!r}")
    for key, value in layer.items():
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ConfigError(f"unknown config key '{path}{key}' (valid keys here: {valid})")
        typ, f = schema[key]
        if f is not None:
            value = apply_aliases(f, value)
        if dataclasses.is_dataclass(typ):
            _merge(base.setdefault(key, {}), value, _schema(typ), f"{path}{key}.")
        elif isinstance(base.get(key), dict) and isinstance(value, dict):
            # free-form mappings (e.g. gan.loss_args) merge key by key, so `--set gan.loss_args.c=0`
            # keeps the model file's other arguments instead of dropping them
            base[key] = {**base[key], **_coerce(value, typ, f"{path}{key}")}
        else:
            base[key] = _coerce(value, typ, f"{path}{key}")


def _build_dataclass(cls: type, values: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        typ, v = hints[f.name], values[f.name]
        sub = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build_dataclass(typ, v, sub)
        else:
            kwargs[f.name] = _coerce(apply_aliases(f, v), typ, sub)
            check(f, kwargs[f.name], sub)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, path: str) -> Any:
    """Check `value` against the annotation `typ`; allow int -> float and list -> tuple."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None) and value is None:
                return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a, path)
                except ConfigError:
                    pass
        raise ConfigError(f"{path}: {value!r} is not a valid {typ}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ in (str, bool):
        if type(value) is typ:
            return value
    elif origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    elif origin is dict or typ is dict:
        if isinstance(value, dict):
            return dict(value)
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{path}: expected {name}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------------------- sources


def configs_dir() -> Path:
    """configs/ beside the package in a checkout, else the copy installed as genlab.configs."""
    here = Path(__file__).resolve().parent.parent / "configs"
    if here.is_dir():
        return here
    return Path(str(resources.files("genlab.configs")))


def model_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def model_layer(model: str) -> dict:
    path = configs_dir() / f"{model}.yaml"
    if not path.is_file():
        registry.get("model", model)  # raises with a did-you-mean
    layer = read_yaml(path)
    layer.setdefault("model", model)
    return layer


def parse_set(items: list[str]) -> dict:
    """['a.b=3', 'c=x'] -> {'a': {'b': 3}, 'c': 'x'}; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set")
        node[parts[-1]] = value
    return out


def resolve(model: str, config_file: str | None = None, overrides: dict | None = None,
            sets: list[str] | None = None) -> RunConfig:
    base = model_layer(model)
    # A model file may hold per-dataset deltas (`datasets: {ring8: {...}}`): published settings for
    # toy data differ from image settings. They apply right after the model file, for the dataset
    # the later layers finally select.
    per_dataset = base.pop("datasets", {}) or {}
    later = ([read_yaml(config_file)] if config_file else []) + ([overrides] if overrides else []) \
        + ([parse_set(sets)] if sets else [])
    dataset = DataConfig().name
    for layer in [base, *later]:
        data = layer.get("data")
        if isinstance(data, dict) and "name" in data:
            dataset = data["name"]
    if not isinstance(per_dataset, dict):
        raise ConfigError(f"{model}.yaml: 'datasets' must map dataset names to config deltas")
    extra = [per_dataset[dataset]] if dataset in per_dataset else []
    return build([base, *extra, *later])


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# Keys that older genlab versions wrote into run configs and no longer accept. Saved configs (a run's
# config.yaml, a checkpoint's config) drop them so old runs still load; user-written configs that
# use them still get the unknown-key error.
RETIRED_KEYS: set[tuple[str, str]] = set()


def saved_layer(config: dict) -> dict:
    """A config saved by an earlier genlab, minus RETIRED_KEYS (copied; the input is left alone)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for section, key in RETIRED_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a genlab run directory (no config.yaml)")
    return build([saved_layer(read_yaml(path))])


def register_models() -> None:
    """Registry loader for kind 'model': one entry per configs/<name>.yaml."""
    for name in model_names():
        registry.register("model", name, configs_dir() / f"{name}.yaml")

