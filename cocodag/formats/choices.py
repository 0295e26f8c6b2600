"""The writers' choices (shards, ``logits.h5``), each a ``Literal`` type and its tuple, defined once; and why lzf
is not a compression choice.

A module of its own, without h5py, so that every command line (``cocodag build``, ``maxent-train export``) can offer
exactly these choices without importing the writers.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

# What is written; files compressed with lzf (earlier versions) still read.
Compression = Literal["none", "gzip"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)

# h5py's bundled LZF encoder keeps its hash table on the stack and never clears it (liblzf's INIT_HTAB 0): entries
# left by earlier chunks can point into the next chunk's buffer, so the same data compresses to different, valid
# bytes depending on what the thread compressed before (measured: 10 lzf builds, 7 different byte sets; gzip and
# none: always one). Builds and exports must not depend on the worker count, so lzf is refused, with this reason.
LZF_REFUSED = ("lzf is no longer written: h5py's LZF encoder never clears its hash table, so the same data can "
               "compress to different bytes (run to run and worker count to worker count); use gzip (level 1: "
               "deterministic, and smaller) or none; files written with lzf still read")

#: ``logits.h5``: logits stored at the network's output resolution (upsampled by the reader) or at the label size
LogitsResolution = Literal["native", "label"]
RESOLUTIONS: tuple[str, ...] = get_args(LogitsResolution)
#: ``logits.h5``: the stored logits' dtype
LogitsDtype = Literal["float16", "float32"]
LOGITS_DTYPES: tuple[str, ...] = get_args(LogitsDtype)
#: ``logits.h5``: the recorded logits -> label-size rule
UpsampleMode = Literal["bilinear", "bicubic"]
UPSAMPLE_MODES: tuple[str, ...] = get_args(UpsampleMode)

#: the ``create_dataset`` keywords of ``"gzip"`` (level 1: the measured size / speed choice)
GZIP_LEVEL1: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}
