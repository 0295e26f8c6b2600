"""Label constants and the official Cityscapes labelId -> trainId table (defined once, used everywhere)."""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np

NUM_CLASSES = 19
OOD_ID = 254       # pasted / proxy object pixels in shards
IGNORE_ID = 255    # void in shards and in evaluation masks
ROAD_ID = 0

# The label of a COCO proxy crop's background pixels (`cocodag build --coco-background`): ignore (IGNORE_ID, ours)
# or road (ROAD_ID, as meta-ood trains).
CocoBackground = Literal["ignore", "road"]
COCO_BACKGROUNDS: tuple[str, ...] = get_args(CocoBackground)
COCO_BACKGROUND_IDS = {"ignore": IGNORE_ID, "road": ROAD_ID}

TRAIN_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# labelId -> trainId, from the official cityscapesScripts `labels.py` table (ids 0..33; -1 license plate -> 255).
_ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_ID, dtype=np.uint8)
for _k, _v in _ID_TO_TRAIN.items():
    LABEL_ID_TO_TRAIN_ID[_k] = _v

# Cityscapes labelIds by name (used by the demo world to draw real-format label PNGs).
LABEL_IDS = {
    "unlabeled": 0, "ego vehicle": 1, "out of roi": 3, "static": 4, "ground": 6, "road": 7, "sidewalk": 8,
    "parking": 9, "building": 11, "wall": 12, "fence": 13, "pole": 17, "traffic light": 19, "traffic sign": 20,
    "vegetation": 21, "terrain": 22, "sky": 23, "person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28,
    "train": 31, "motorcycle": 32, "bicycle": 33,
}

# Official Cityscapes colours per trainId (for previews / contact sheets).
TRAIN_ID_COLORS = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 Cityscapes labelIds array to trainIds (0..18, 255 elsewhere)."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]
