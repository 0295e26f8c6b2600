"""The block and chunk sizes of the exact metrics (read at call time, so that tests can shrink them).

They tune memory and cache use only, never the numbers, except ``BLOCK``: AP is summed by one ``np.sum`` per block
of ``BLOCK`` anomaly keys, so its last bits depend on ``BLOCK`` (and on nothing else: not on the path, the chunk
sizes or the threads).
"""
from __future__ import annotations

BLOCK = 1 << 22         # distinct anomaly keys per block of the AP sum (one np.sum each): the numbers depend on it only
CHUNK = 1 << 15         # entries per in-cache step of the passes over whole arrays (split, unique runs)
SEARCH_BLOCK = 1 << 12  # needles per searchsorted call: their haystack range then stays in cache
MOVE_BLOCK = 1 << 21    # entries per block of the in-place insertion (bounds its temporaries to ~10 MB)
U_EXACT = 1 << 63       # AUROC's pair count is summed exactly (int64) while 2 x anomaly x ID pixels stays below this
PARALLEL_MIN = 1 << 22  # pixels below which the one-shot functions use one thread (a pool costs ~0.1 ms)
