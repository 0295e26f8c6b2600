"""Segmentation models: a registry (``create_model``) plus checkpoint helpers.

Every model maps normalized RGB ``(N, 3, H, W)`` to logits ``(N, C, H, W)`` at input resolution and has
``num_classes``. Where the architecture allows, it splits ``forward(x) == forward_head(forward_features(x),
x.shape[-2:])`` with all dropout in the head, so MC dropout can run the backbone once (``maxent_train.mc``); each
exposes its logits before the final upsampling (``forward_native``, ``output_upsample``: export stores those); the
MC-dropout protocol (``final_classifier``, ``insert_mc_dropout``) is documented in ``maxent_train.models._registry``.
Checkpoint reading (released files as they are, ``checkpoint_filter``, strict loads): ``_helpers``. Every family
declares its final classifier block (``ClassifierBlock``: the parameters an outlier-exposure objective fine-tunes, the
convolutions that gain an abstention channel: ``grow_classifier``).
"""
# importing a model file registers its variants: deeplabv3plus (ours, ResNet-18/50/101), sml_r101 (SML's
# DeepR101V3PlusD_OS8), tiny (tiny_segnet), vainf (VainF DeepLabV3Plus-Pytorch: ResNet-101, MobileNetV2), wrn38 (NVIDIA
# DeepWV3Plus: meta-ood, PEBAL, RPL, DenseHybrid, ATTA)
from . import deeplabv3plus, sml_r101, tiny, vainf, wrn38  # noqa: F401
from ._classifier import grow_classifier
from ._helpers import (
    LoadReport,
    clean_state_dict,
    filtered_state,
    guess_family,
    load_checkpoint,
    load_state,
    read_checkpoint,
    read_state_dict,
)
from ._registry import (
    ClassifierBlock,
    checkpoint_filter_for,
    classifier_block_for,
    create_model,
    is_model,
    list_models,
    native_output_rule,
    parse_kwargs,
    parse_model_kwargs,
    register_model,
)

__all__ = ["ClassifierBlock", "LoadReport", "checkpoint_filter_for", "classifier_block_for", "clean_state_dict",
           "create_model", "filtered_state", "grow_classifier", "guess_family", "is_model", "list_models",
           "load_checkpoint", "load_state", "native_output_rule", "parse_kwargs", "parse_model_kwargs",
           "read_checkpoint", "read_state_dict", "register_model"]
