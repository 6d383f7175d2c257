"""Adversarial losses and regularizers: small objects with fixed signatures, chosen by name.

    loss.d_loss(d_real, d_fake) -> Tensor      loss.g_loss(d_fake) -> Tensor
    regularizer(D, real, fake) -> Tensor       (already multiplied by its weight)

`d_real` / `d_fake` are whatever the discriminator returns (scores for most losses)."""
from . import adversarial, regularizers  # noqa: F401  (registration side effects)
from .regularizers import build_regularizers  # noqa: F401


def build_loss(name: str, args: dict):
    """A registered adversarial loss built from its config args, with config-level errors."""
    from ..config import ConfigError
    from ..registry import RegistryError, get

    try:
        return get("loss", name)(**args)
    except RegistryError as e:
        raise ConfigError(str(e)) from None
    except TypeError as e:
        raise ConfigError(f"loss {name!r}: {e}") from None
