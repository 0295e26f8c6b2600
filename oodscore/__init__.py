"""oodscore: anomaly scores (MSP, max-logit, entropy, SML, VDE, OODMC) and exact metrics from saved logits.

Never imports maxent_train: the only link between the two is the ``logits.h5`` format (DESIGN §4.3).
"""
import os as _os

# GNU OpenMP threads spin while waiting by default: when any other process holds a core, torch's parallel
# regions then run ~8x slower on a 2-core machine (measured: 60 training steps 89 s vs 11 s with PASSIVE).
# Effective only if set before torch is first imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from cocodag.errors import CocodagError  # noqa: E402 - the common base of every error of ours


class OodscoreError(CocodagError):
    """A user-facing error of oodscore (bad input file, degenerate metric input, bad option...)."""


__all__ = ["OodscoreError", "__version__"]
