"""oodscore: anomaly scores (MSP, max-logit, entropy, SML, VDE, OODMC) and exact metrics from saved logits.

Never imports maxent_train: the only link between the two is the ``logits.h5`` format (docs/formats.md §3).
"""
from cocodag.errors import CocodagError  # the common base of every error of ours

__version__ = "0.1.0"


class OodscoreError(CocodagError):
    """A user-facing error of oodscore (bad input file, degenerate metric input, bad option...)."""


__all__ = ["OodscoreError", "__version__"]
