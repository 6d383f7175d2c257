"""Adversarial losses and regularizers: small objects with fixed signatures, chosen by name.

    loss.d_loss(d_real, d_fake) -> Tensor      loss.g_loss(d_fake) -> Tensor
    regularizer(D, real, fake, scale=None) -> Tensor       (already multiplied by its weight)

`d_real` / `d_fake` are whatever the discriminator returns. Each loss and regularizer declares the
discriminator outputs it `accepts` ("score": a tensor of scores; "energy": EBGAN's Energy), and
each discriminator net declares its `output`, so a family refuses a pair that cannot work at build
time (`check_accepts`), naming both parts and what would fit."""
from . import adversarial, regularizers  # noqa: F401  (registration side effects)
from ..errors import ConfigError
from ..registry import available, get


def check_accepts(kind: str, name: str, d_name: str, d_output: str) -> None:
    """ConfigError unless the registered `kind` `name` accepts discriminator outputs `d_output`."""
    accepts = get(kind, name).accepts
    if d_output not in accepts:
        fits = ", ".join(n for n in available(kind) if d_output in get(kind, n).accepts) or "none"
        plural = "losses" if kind == "loss" else f"{kind}s"
        raise ConfigError(f"{kind} {name!r} takes discriminator outputs {', '.join(map(repr, accepts))}, but "
                          f"discriminator {d_name!r} returns {d_output!r} ({plural} that take {d_output!r}: {fits})")


def build_loss(name: str, args: dict, d_name: str = "", d_output: str = "score"):
    """A registered adversarial loss built from its config args, checked against the discriminator."""
    cls = get("loss", name)
    if d_name:
        check_accepts("loss", name, d_name, d_output)
    try:
        return cls(**args)
    except TypeError as e:
        raise ConfigError(f"loss {name!r}: {e}") from None


def build_regularizers(specs: list[dict], d_name: str = "", d_output: str = "score") -> list:
    """[{name: gradient_penalty, weight: 10}] -> [GradientPenalty(weight=10)], with clear errors."""
    out = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError(f"regularizer entry {spec!r} needs a 'name'")
        cls = get("regularizer", name)
        if d_name:
            check_accepts("regularizer", name, d_name, d_output)
        try:
            out.append(cls(**spec))
        except TypeError as e:
            raise ConfigError(f"regularizer {name!r}: {e}") from None
    return out
