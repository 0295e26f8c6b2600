"""VainF DeepLabV3Plus-Pytorch's Cityscapes models: ``deeplabv3plus_resnet101_vainf`` and
``deeplabv3plus_mobilenetv2_vainf``.

Re-implemented on plain torch (no torchvision) module for module, with the upstream parameter names, so the
``model_state`` of their released files (``best_deeplabv3plus_resnet101_cityscapes_os16.pth``,
``best_deeplabv3plus_mobilenet_cityscapes_os16.pth``) loads strictly and the forward computes what theirs computes.
How it differs from our own ``deeplabv3plus_*`` (the reason a rename of keys is not enough):

* decoder: the ASPP output is upsampled to the stride-4 features and concatenated **after** the 48-channel low-level
  projection (``[low, aspp]``), then **one** 3x3 conv (304 -> 256) + BN + ReLU and the 1x1 classifier
  (``classifier.classifier.3``); ours concatenates ``[aspp, low]`` and has two 3x3 convs.
* ASPP: the image-pooling branch is bilinearly upsampled; the 1x1 projection ends in ``nn.Dropout(0.1)`` (element-wise),
  the network's only dropout. It is on the output path, so MC dropout samples ASPP projection + decoder:
  ``forward_features`` = backbone (``(low, high)``), ``forward_head`` = ASPP + decoder + upsampling.
* upsampling everywhere: bilinear, ``align_corners=False``.
* ResNet-101: torchvision layout (stride on the 3x3 conv), output stride 16 dilates layer4, 8 dilates layer3 and layer4,
  ASPP rates (6, 12, 18) / (12, 24, 36). The backbone is our :class:`~maxent_train.models.resnet.ResNet`, whose key
  names already are torchvision's (``backbone.conv1``, ``backbone.layer1.0.conv1``, ...; no ``fc``).
* MobileNetV2 (their modified copy): the stem is a 3x3 stride-2 conv **without padding**; each inverted residual pads
  its *input* with zeros (``fixed_padding``) and then runs 1x1 expansion -> 3x3 depthwise -> 1x1 projection with no
  padding, so the border of the expanded map holds ReLU6(BN(0)), not zero. Strides past the output stride become
  dilation. ``features[0:4]`` are the low-level features (24 ch, stride 4), ``features[4:-1]`` the high-level ones
  (320 ch; upstream slices a Sequential, so their keys keep the numbers 4..17); the last 1x1 conv and the ImageNet
  classifier are dropped.

Input: RGB / 255, ImageNet mean/std (``PRETRAINED_CFG``), as everywhere in this package.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import MaxentError
from ._registry import ClassifierBlock, register_model
from ._split import SplitForward
from .resnet import ResNet

UPSTREAM = "https://github.com/VainF/DeepLabV3Plus-Pytorch"

#: What the released Cityscapes files expect (both trained and evaluated at output stride 16, 19 trainId classes).
PRETRAINED_CFG: dict[str, dict[str, Any]] = {
    "deeplabv3plus_resnet101_vainf": {
        "file": "best_deeplabv3plus_resnet101_cityscapes_os16.pth",
        "upstream_model": "deeplabv3plus_resnet101",
    },
    "deeplabv3plus_mobilenetv2_vainf": {
        "file": "best_deeplabv3plus_mobilenet_cityscapes_os16.pth",
        "upstream_model": "deeplabv3plus_mobilenet",
    },
}
for _cfg in PRETRAINED_CFG.values():
    _cfg.update(repository=UPSTREAM, wrapper="model_state", num_classes=19, output_stride=16, input="RGB",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), align_corners=False)


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU as ``.0`` / ``.1`` / ``.2`` (the upstream layout of every head block)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=0 if k == 1 else dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ImagePool(nn.Sequential):
    """ASPP image-level branch: global average -> 1x1 conv/BN/ReLU (keys ``.1`` / ``.2``) -> bilinear back to size."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class VainfASPP(nn.Module):
    """``convs``: 1x1, three atrous 3x3, image pooling (256 ch each); ``project``: 1x1 -> BN -> ReLU -> Dropout."""

    def __init__(self, cin: int, rates: tuple[int, int, int], dropout: float = 0.1, cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
                                   + [_ImagePool(cin, cout)])
        self.project = nn.Sequential(*_conv_bn_relu(5 * cout, cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class VainfHead(nn.Module):
    """DeepLabV3+ head (``classifier.*`` upstream): ASPP on the high-level map, 48-ch projection of the low-level
    map, concat ``[low, aspp]``, one 3x3 conv/BN/ReLU and the 1x1 classifier, at stride 4."""

    def __init__(self, high_channels: int, low_channels: int, num_classes: int, rates: tuple[int, int, int],
                 dropout: float = 0.1):
        super().__init__()
        self.project = _conv_bn_relu(low_channels, 48, 1)
        self.aspp = VainfASPP(high_channels, rates, dropout)
        self.classifier = nn.Sequential(*_conv_bn_relu(48 + 256, 256, 3), nn.Conv2d(256, num_classes, 1))
        for m in self.modules():  # upstream's init (matters only when training from scratch)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


# ---------------------------------------------------------------------------------------------------------------------
# MobileNetV2 with output stride by dilation (VainF's variant)

class _ConvBNReLU6(nn.Sequential):
    """Unpadded conv -> BN -> ReLU6 (padding, where any, is applied by the caller)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, 0, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Zero-pad the input for a (dilated) 3x3, then [1x1 expand ->] 3x3 depthwise -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_ConvBNReLU6(cin, hidden, 1)]
        layers += [_ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        span = 2 * dilation  # a dilated 3x3 needs 2*dilation extra pixels: floor half before, the rest after
        self.pad = (span // 2, span - span // 2) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, self.pad))
        return x + y if self.residual else y


# (expansion t, channels c, repeats n, stride s) of MobileNetV2
_MNV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


class MobileNetV2Trunk(nn.Module):
    """``low_level_features`` (stem + 3 blocks: 24 ch, stride 4) and ``high_level_features`` (14 blocks numbered 4..17:
    320 ch, stride ``output_stride``); once the running stride reaches ``output_stride``, later strides become dilation
    (the first block of a stage keeps the previous dilation)."""

    low_channels = 24
    out_channels = 320

    def __init__(self, output_stride: int = 16):
        super().__init__()
        blocks: list[nn.Module] = [_ConvBNReLU6(3, 32, 3, stride=2)]
        cin, stride_now, dilation = 32, 2, 1
        for t, c, n, s in _MNV2_SETTING:
            first_dilation = dilation
            if stride_now == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, stride_now = s, stride_now * s
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, stride if i == 0 else 1, first_dilation if i == 0 else dilation,
                                               t))
                cin = c
        self.low_level_features = nn.Sequential(*blocks[:4])
        # keeps the indices 4..17 of the full ``features`` list in its key names, as upstream's slice of a Sequential
        self.high_level_features = nn.Sequential(OrderedDict((str(i), b) for i, b in enumerate(blocks) if i >= 4))
        for m in self.modules():  # upstream's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_level_features(x)
        return low, self.high_level_features(low)


# ---------------------------------------------------------------------------------------------------------------------

class DeepLabV3PlusVainF(SplitForward, nn.Module):
    """VainF's DeepLabV3+ (``backbone`` + ``classifier`` head), logits upsampled bilinearly to the input size.

    Parameters
    ----------
    backbone : {"resnet101", "mobilenetv2"}
    num_classes : int, default=19
    output_stride : {16, 8}, default=16
        16 is what the released Cityscapes files were trained and evaluated with.
    dropout : float, default=0.1
        The ``nn.Dropout`` ending the ASPP projection (upstream: fixed 0.1).
    """

    #: the last Conv2d (logits at stride 4)
    final_classifier = "classifier.classifier.3"

    def __init__(self, backbone: str = "resnet101", num_classes: int = 19, output_stride: int = 16,
                 dropout: float = 0.1):
        super().__init__()
        if output_stride not in (8, 16):
            raise MaxentError(f"output_stride must be 8 or 16, got {output_stride}")
        self.backbone: ResNet | MobileNetV2Trunk
        if backbone == "resnet101":
            self.backbone = ResNet("resnet101", output_stride)
        elif backbone == "mobilenetv2":
            self.backbone = MobileNetV2Trunk(output_stride)
        else:
            raise MaxentError(f"backbone must be 'resnet101' or 'mobilenetv2', got {backbone!r}")
        self.num_classes = num_classes
        self.output_stride = output_stride
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.classifier = VainfHead(self.backbone.out_channels, self.backbone.low_channels, num_classes, rates,
                                    dropout)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic part: the backbone's ``(low, high)`` feature maps."""
        return self.backbone(x)

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample = {"mode": "bilinear", "align_corners": False}

    def head_logits(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Stochastic part (ASPP dropout): ASPP + decoder -> logits (N, C, h, w) at stride 4."""
        return self.classifier(*feats)


def vainf_checkpoint_filter(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Upstream ``model_state`` -> ours: the names are the same; strip a leftover ``module.`` (a DataParallel save)
    and refuse, in one line, the ``--separable_conv`` variant (no released file uses it)."""
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    separable = [k for k in out if ".body.0." in k and k.startswith("classifier.")]
    if separable:
        raise MaxentError(f"checkpoint of VainF's --separable_conv variant (e.g. {separable[0]}): not supported by "
                          f"{type(model).__name__}; the released Cityscapes files use plain convolutions")
    return out


#: the decoder after the skip concat (3x3 conv+BN+ReLU) and the 1x1 classifier (WRN38's ``final`` block)
CLASSIFIER = ClassifierBlock(params=("classifier.classifier.*",), convs=("classifier.classifier.3",))


@register_model(checkpoint_filter=vainf_checkpoint_filter, classifier=CLASSIFIER)
def deeplabv3plus_resnet101_vainf(num_classes: int = 19, **kwargs) -> DeepLabV3PlusVainF:
    """VainF ``deeplabv3plus_resnet101`` (``best_deeplabv3plus_resnet101_cityscapes_os16.pth``); kwargs
    ``output_stride`` (16; 8), ``dropout`` (0.1, the ASPP projection's)."""
    return DeepLabV3PlusVainF("resnet101", num_classes=num_classes, **kwargs)


@register_model(checkpoint_filter=vainf_checkpoint_filter, classifier=CLASSIFIER)
def deeplabv3plus_mobilenetv2_vainf(num_classes: int = 19, **kwargs) -> DeepLabV3PlusVainF:
    """VainF ``deeplabv3plus_mobilenet`` (``best_deeplabv3plus_mobilenet_cityscapes_os16.pth``); kwargs
    ``output_stride`` (16; 8), ``dropout`` (0.1, the ASPP projection's)."""
    return DeepLabV3PlusVainF("mobilenetv2", num_classes=num_classes, **kwargs)
