"""DeepLabV3+ (Chen et al. 2018) on a dilated ResNet, plain torch.

* ``forward_features``: ResNet -> ASPP (1x1, three 3x3 atrous branches, image pooling; 256 ch) on the stride-8/16
  features; 1x1 projection of layer1 (48 ch); decoder = upsample ASPP to 1/4, concat, two 3x3 convs (256 ch).
* ``forward_head``: ``Dropout2d(p)`` -> 1x1 classifier (stride 4: ``forward_native``) -> bilinear upsampling
  (``align_corners=False``, ``output_upsample``) to the input size.

All stochastic layers live in the head (like mmseg's ``dropout_ratio`` before ``conv_seg``), so MC dropout runs the
expensive trunk+decoder once and resamples only the head. ``dropout`` defaults to 0.1 (mmseg's choice); Bayesian
SegNet-style MC dropout often uses 0.5 — pass ``dropout=0.5`` for that.
Atrous rates: (6, 12, 18) at output stride 16, doubled (12, 24, 36) at 8.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ClassifierBlock, register_model
from ._split import SplitForward
from .resnet import ResNet, load_backbone_weights


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = 0 if k == 1 else dilation
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1 / atrous 3x3 / image-pooling branches, then a 1x1 projection."""

    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, cout, 1)] + [_cbr(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _cbr(cin, cout, 1))
        self.project = _cbr(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))  # a 1x1 map: broadcast instead of interpolating
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(SplitForward, nn.Module):
    """DeepLabV3+ segmentation network.

    Parameters
    ----------
    backbone : {"resnet18", "resnet50", "resnet101"}
    num_classes : int, default=19
    output_stride : {8, 16}, default=8
    dropout : float, default=0.1
        ``Dropout2d`` before the classifier (the only stochastic layer).
    backbone_weights : str or Path, optional
        torchvision-layout ImageNet ResNet state_dict to initialize the trunk.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 19, output_stride: int = 8,
                 dropout: float = 0.1, backbone_weights=None):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNet(backbone, output_stride)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.out_channels, 256, rates)
        self.low_proj = _cbr(self.backbone.low_channels, 48, 1)
        self.decoder = nn.Sequential(_cbr(256 + 48, 256, 3), _cbr(256, 256, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic part: (N, 3, H, W) -> decoder features (N, 256, H/4, W/4)."""
        low, high = self.backbone(x)
        y = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([y, self.low_proj(low)], dim=1))

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample = {"mode": "bilinear", "align_corners": False}

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Stochastic part: dropout -> classifier -> logits (N, C, h, w) at stride 4."""
        return self.classifier(self.dropout(feats))


#: the decoder after the skip concat (two 3x3 conv+BN+ReLU) and the 1x1 classifier (WRN38's ``final`` block)
CLASSIFIER = ClassifierBlock(params=("decoder.*", "classifier.*"), convs=("classifier",))


def _create_deeplab(backbone: str, num_classes: int = 19, output_stride: int = 8, dropout: float = 0.1,
                    backbone_weights=None) -> DeepLabV3Plus:
    return DeepLabV3Plus(backbone, num_classes=num_classes, output_stride=output_stride, dropout=dropout,
                         backbone_weights=backbone_weights)


@register_model(classifier=CLASSIFIER)
def deeplabv3plus_resnet18(num_classes: int = 19, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-18; kwargs ``output_stride`` (8), ``dropout`` (0.1), ``backbone_weights``."""
    return _create_deeplab("resnet18", num_classes=num_classes, **kwargs)


@register_model(classifier=CLASSIFIER)
def deeplabv3plus_resnet50(num_classes: int = 19, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-50; kwargs ``output_stride`` (8), ``dropout`` (0.1), ``backbone_weights``."""
    return _create_deeplab("resnet50", num_classes=num_classes, **kwargs)


@register_model(classifier=CLASSIFIER)
def deeplabv3plus_resnet101(num_classes: int = 19, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-101; kwargs ``output_stride`` (8), ``dropout`` (0.1), ``backbone_weights``."""
    return _create_deeplab("resnet101", num_classes=num_classes, **kwargs)
