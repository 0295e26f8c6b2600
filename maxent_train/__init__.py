"""maxent_train: lean entropy-maximization (MaxEnt) fine-tuning on cocodag shards, plus logit / MC-dropout export."""
from cocodag.errors import CocodagError  # the common base of every error of ours

__version__ = "0.1.0"


class MaxentError(CocodagError):
    """A user-facing error of maxent_train (bad data dir, checkpoint, option...)."""


__all__ = ["MaxentError", "__version__"]
