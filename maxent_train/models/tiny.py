"""``tiny_segnet``: a small, fast encoder-decoder for the demo world and the tests (~0.49 M parameters).

Layout (input normalized RGB, output logits at input resolution):

* encoder: a stride-2 conv and two residual blocks at 1/2 (24 ch), a stride-2 conv and three residual blocks at 1/4
  (48 ch, the low-level features), a stride-2 conv to 1/8 (64 ch) and residual blocks with dilations 1, 2, 4 for
  context (enough for the street world's layout);
* decoder: 1/8 features upsampled to 1/4, fused with the projected low-level features by a 3x3 conv and a residual
  block (48 ch);
* head: ``Dropout2d(p)`` -> 1x1 classifier (logits at 1/4 of the input: ``forward_native``) -> bilinear upsampling
  (``align_corners=False``, ``output_upsample``) to the input size.

Everything up to the decoder is ``forward_features`` (deterministic); only the cheap head is stochastic, so MC
dropout runs the encoder/decoder once and resamples the head T times (``maxent_train.mc``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import ClassifierBlock, register_model
from ._split import SplitForward


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class TinySegNet(SplitForward, nn.Module):
    """Small encoder-decoder segmentation network; output stride 4, dropout in the head.

    Parameters
    ----------
    num_classes : int, default=19
    dropout : float, default=0.1
        Channel dropout (``Dropout2d``) before the classifier: the only stochastic layer (MC dropout).
    width : int, default=32
        Base width: 1/2 runs at ``width/2+8`` channels, 1/4 at ``1.5*width``, 1/8 at ``2*width``; 32 gives ~0.49 M
        parameters.
    """

    def __init__(self, num_classes: int = 19, dropout: float = 0.1, width: int = 32):
        super().__init__()
        self.num_classes = num_classes
        w = width  # 1/4 runs at 1.5*w channels, 1/8 at 2*w
        c4, c8 = 3 * w // 2, 2 * w
        # most of the compute sits at 1/4 (fine structures such as poles) and in the trunk, very little in the head:
        # that is what makes head-only MC dropout pay off, as it does for DeepLab trunks
        c2 = w // 2 + 8
        self.stem = nn.Sequential(_conv_bn(3, c2, stride=2), _Residual(c2), _Residual(c2), _conv_bn(c2, c4, stride=2),
                                  *[_Residual(c4) for _ in range(3)])
        self.stage8 = nn.Sequential(_conv_bn(c4, c8, stride=2), _Residual(c8, 1), _Residual(c8, 2), _Residual(c8, 4))
        self.low_proj = nn.Sequential(nn.Conv2d(c4, c4 // 2, 1, bias=False), nn.BatchNorm2d(c4 // 2),
                                      nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(_conv_bn(c8 + c4 // 2, c4), _Residual(c4))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c4, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic part: (N, 3, H, W) -> fused features (N, 1.5*width, H/4, W/4)."""
        low = self.stem(x)
        high = self.stage8(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, self.low_proj(low)], dim=1))

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample = {"mode": "bilinear", "align_corners": False}

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Stochastic part: dropout -> classifier -> logits (N, C, h, w) at 1/4 of the input."""
        return self.classifier(self.dropout(feats))


#: the fusion after the skip concat (conv+BN+ReLU, residual block) and the 1x1 classifier
CLASSIFIER = ClassifierBlock(params=("fuse.*", "classifier.*"), convs=("classifier",))


@register_model(classifier=CLASSIFIER)
def tiny_segnet(num_classes: int = 19, dropout: float = 0.1, width: int = 32) -> TinySegNet:
    """Small demo/test model: ~0.49 M parameters, output stride 4, ``Dropout2d(dropout)`` in the head."""
    return TinySegNet(num_classes=num_classes, dropout=dropout, width=width)
