"""cocodag: offline COCO-DAG dataset builder (COCO objects pasted into Cityscapes frames, split by centroid)."""
__version__ = "0.1.0"

from .errors import CocodagError  # noqa: E402
from .labels import IGNORE_ID, NUM_CLASSES, OOD_ID  # noqa: E402

__all__ = ["CocodagError", "IGNORE_ID", "NUM_CLASSES", "OOD_ID", "__version__"]
