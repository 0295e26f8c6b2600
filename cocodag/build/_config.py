"""What a build is asked for: :class:`BuildConfig` (every byte-determining option, checked), :class:`BuildResult`,
and the parsers of the command line's ``MIN:MAX`` and ``R0:R1:C0:C1`` options."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cityscapes import LabelSource
from ..errors import CocodagError
from ..formats.choices import COMPRESSIONS, LZF_REFUSED, Compression
from ..formats.shards import KINDS
from ..labels import COCO_BACKGROUNDS, CocoBackground

DEFAULT_COMPRESSION: Compression = "none"  # measured by bench/build.py (see README): fastest, gzip saves little
SEED_WINDOW = (250, 774, 250, 1798)        # the seed's paste window: rows 250..774, cols 250..1798 of 1024x2048
POLL_S = 0.2                               # worker watchdog period; wait period for tasks another range job holds


@dataclass
class BuildConfig:
    """Everything that determines the bytes of a build (``workers`` and ``shard_range`` do not)."""

    split: str = "train"
    coco_split: str = "train2017"
    crop: int = 480
    shard_size: int = 128                    # target crops per shard
    seed: int = 0
    object_scale: tuple[float, float] = (1.0, 1.0)
    min_object_area: float = 1000.0
    min_proxy_size: int | None = None        # None -> crop size (meta-ood: 480)
    dag_samples: int | None = None           # pasted frames; None -> one per Cityscapes frame
    cityscapes_crops_per_frame: int = 1
    coco_samples: int | None = None          # None -> every proxy image once
    streams: tuple[str, ...] = KINDS
    coco_background: CocoBackground = "ignore"   # ours; "road" reproduces meta-ood (background = trainId 0)
    compression: Compression = DEFAULT_COMPRESSION
    skip_bad: bool = False
    feather: float = 0.0                     # ours; 0 = hard paste (the seed's)
    paste_window: tuple[int, int, int, int] = SEED_WINDOW  # rows r0..r1, cols c0..c1 of a 1024x2048 frame
    label_source: LabelSource = "auto"
    flip: bool = True

    def validate(self) -> None:
        """Raise :class:`CocodagError` (one line naming the option) on a value no build can use."""
        if self.crop <= 0:
            raise CocodagError(f"--crop must be > 0, got {self.crop}")
        if self.shard_size <= 0:
            raise CocodagError(f"--shard-size must be > 0, got {self.shard_size}")
        lo, hi = self.object_scale
        if not (0 < lo <= hi):
            raise CocodagError(f"--object-scale: expected 0 < MIN <= MAX, got {lo}:{hi}")
        bad = [s for s in self.streams if s not in KINDS]
        if bad or not self.streams:
            raise CocodagError(f"--streams: expected a comma list of {', '.join(KINDS)}, got {','.join(self.streams)}")
        if self.coco_background not in COCO_BACKGROUNDS:
            raise CocodagError(f"--coco-background: expected ignore or road, got {self.coco_background!r}")
        compression: str = self.compression      # typed as the choices; a library caller may pass anything
        if compression == "lzf":
            raise CocodagError(f"--compression lzf: {LZF_REFUSED}")
        if compression not in COMPRESSIONS:
            raise CocodagError(f"--compression: expected one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        for name in ("dag_samples", "coco_samples", "min_proxy_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise CocodagError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.cityscapes_crops_per_frame < 0:
            raise CocodagError(f"--cityscapes-crops-per-frame must be >= 0, got {self.cityscapes_crops_per_frame}")
        if self.min_object_area < 0 or self.feather < 0:
            raise CocodagError("--min-object-area and --feather must be >= 0")
        r0, r1, c0, c1 = self.paste_window
        if not (0 <= r0 <= r1 <= 1024 and 0 <= c0 <= c1 <= 2048):
            raise CocodagError(f"--paste-window: expected R0:R1:C0:C1 within 1024x2048, got {self.paste_window}")


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any] | None          # None when only part of the tasks exist (shard range)
    manifest_path: Path
    built_tasks: int
    kept_tasks: int
    total_tasks: int
    counts: dict[str, int] = field(default_factory=dict)


def parse_range(text: str, name: str) -> tuple[float, float]:
    """``"A:B"`` -> (A, B); a single number means A = B."""
    try:
        parts = [float(p) for p in str(text).split(":")]
    except ValueError:
        raise CocodagError(f"{name}: expected MIN:MAX numbers, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise CocodagError(f"{name}: expected MIN:MAX, got {text!r}")
    return parts[0], parts[1]


def parse_window(text: str) -> tuple[int, int, int, int]:
    """``"R0:R1:C0:C1"`` -> the paste window (rows, then columns, on a 1024x2048 frame)."""
    try:
        window = tuple(int(float(v)) for v in str(text).split(":"))
    except ValueError:
        window = ()
    if len(window) != 4:
        raise CocodagError(f"--paste-window: expected R0:R1:C0:C1 numbers, got {text!r}")
    return window[0], window[1], window[2], window[3]
