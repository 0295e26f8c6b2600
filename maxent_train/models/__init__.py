"""Segmentation models: a registry (``create_model``) plus checkpoint helpers.

Every model maps normalized RGB ``(N, 3, H, W)`` to logits ``(N, C, H, W)`` at input resolution, has
``num_classes``, and splits ``forward(x) == forward_head(forward_features(x), x.shape[-2:])`` with all dropout in the
head, so MC dropout can run the backbone once (``maxent_train.mc``).
"""
from ._helpers import LoadReport, clean_state_dict, load_checkpoint, read_state_dict
from ._registry import checkpoint_filter_for, create_model, is_model, list_models, register_model

# importing the model files registers their variants
from . import tiny  # noqa: E402,F401
from . import deeplabv3plus  # noqa: E402,F401
from . import wrn38  # noqa: E402,F401  - NVIDIA DeepWV3Plus (meta-ood, PEBAL, RPL, DenseHybrid, ATTA)
from . import sml_r101  # noqa: E402,F401  - SML's DeepR101V3PlusD_OS8
from . import vainf  # noqa: E402,F401  - VainF DeepLabV3Plus-Pytorch (ResNet-101, MobileNetV2)

__all__ = ["LoadReport", "checkpoint_filter_for", "clean_state_dict", "create_model", "is_model", "list_models", "load_checkpoint",
           "read_state_dict", "register_model"]
