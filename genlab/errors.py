"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class GenlabError(Exception):
    """Base class for errors caused by the user's input (config, data, checkpoints, runs)."""


class ConfigError(GenlabError, ValueError):
    """A bad config key or value, or parts that do not fit together; one line meant for the user."""


class CheckpointError(GenlabError):
    """A checkpoint is missing, corrupt, foreign, or belongs to another model."""


class RunError(GenlabError):
    """A run directory cannot be used as asked (finished, missing, another model...)."""


class TrainingDiverged(GenlabError):
    """A loss became NaN/Inf; the last good checkpoint is left untouched."""
