"""The project's file contracts, each defined in one module (docs/formats.md):

* :mod:`.shards` — cocodag shards + ``manifest.json`` (written by ``cocodag build``, read by ``maxent_train``);
* :mod:`.evalsets` — anomaly evaluation sets (presets of the real benchmarks -> 0/1/255 masks);
* :mod:`.logits` — ``logits.h5`` (written by ``maxent-train export``, read by ``oodscore``);
* :mod:`.sml_stats` — the SML statistics accumulator and its JSON (written by export or ``oodscore fit-sml``).

Submodules are imported on use (``from cocodag.formats.logits import LogitsFile``) so that reading shards does not
import torch.
"""
