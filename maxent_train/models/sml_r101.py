"""SML's ``DeepR101V3PlusD_OS8`` as ``deeplabv3plus_resnet101_sml``, plain torch.

The network of Standardized Max Logits (Jung et al., ICCV 2021; github.com/shjung13/Standardized-max-logits,
``network/deepv3.py`` + ``network/Resnet.py``), whose released Cityscapes checkpoint ``r101_os8_base_cty.pth`` loads
into this model strictly (701 tensors, same names and shapes; see ``checkpoint_filter``). It differs from our
``deeplabv3plus_resnet101`` in ways that change the output, so it is its own module:

* **trunk** ("ResNet3X3"): a deep stem of three 3x3 convs (3->64 stride 2, 64->64, 64->128, each BN+ReLU) and a 3x3
  max-pool, stored as ``layer0.{0,1,3,4,6,7}`` (the ReLUs and the pool are ``layer0.{2,5,8,9}``); layer1 therefore
  takes 128 channels. Bottlenecks carry the stride on the 3x3 conv. Output stride 8 ("variant D"): in layer3 *every*
  3x3 conv, the first block's included, has dilation 2, in layer4 dilation 4 (torchvision / our ``ResNet`` keep the
  first block of a dilated stage at the previous dilation), and the downsample 1x1 convs of both stages have
  stride 1.
* **ASPP** at OS8: image pooling + 1x1 + three 3x3 at rates 12/24/36, each conv -> BN -> ReLU, 256 channels,
  concatenated in the order ``[image pool, 1x1, r12, r24, r36]`` (1280 channels) and *not* projected inside the
  module: ``bot_aspp`` (1x1, 1280->256) does that.
* **decoder**: ``bot_fine`` (1x1, 256->48) on layer1; the ASPP output is upsampled to layer1's size and concatenated
  *after* it (``[fine, aspp]``); ``final1`` = two 3x3 conv-BN-ReLU (304->256->256); ``final2.0`` = 1x1 classifier
  with bias. Every upsampling is bilinear with ``align_corners=True``.
* **dsn**: an auxiliary head on layer3 (3x3 conv 1024->512 with bias, BN, ReLU, ``Dropout2d(0.1)``, 1x1 -> classes)
  used only by SML's training loss. Its weights are loaded (the checkpoint holds them) but it is **not on the output
  path**: ``forward`` never calls it (``aux_logits(x)`` does, for inspection).

MC dropout: the only dropout of this network sits in ``dsn``, so sampling the output with dropout "on" gives T
identical passes. ``mc_dropout_active = False`` says so, and ``final_classifier = "final2.0"`` names the last
``Conv2d`` on the output path (256 -> ``num_classes``, input of ``forward_head``) before which a test-time dropout
can be inserted (a deviation from the trained network, to be documented wherever it is used).

Split: ``forward_features`` = trunk + ASPP + decoder up to ``final1`` (N, 256, H/4, W/4); ``forward_head`` =
``final2`` + upsampling to the input size (``forward_native``: without that upsampling, ``output_upsample``:
bilinear, ``align_corners=True``). Input: RGB, /255, ImageNet mean/std (``PRETRAINED_CFG``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import ClassifierBlock, register_model
from ._split import SplitForward
from .resnet import Bottleneck

#: how SML's released network was trained / is fed; ``url`` is the README's download link of the checkpoint
PRETRAINED_CFG = {
    "source": "https://github.com/shjung13/Standardized-max-logits",
    "file": "r101_os8_base_cty.pth",
    "url": "https://drive.google.com/file/d/1Rqty9pRhGdfhkfqlWbFUFgdFp0DvfORN/view",
    "upstream_arch": "network.deepv3.DeepR101V3PlusD_OS8",
    "num_classes": 19,                      # Cityscapes trainIds
    "num_keys": 701,
    "input": "RGB",
    "mean": (0.485, 0.456, 0.406),          # ImageNet, on [0, 1] pixels
    "std": (0.229, 0.224, 0.225),
    "align_corners": True,
    "output_stride": 8,
}

#: state_dict entries of SML's training/eval wrapper that are not part of the network: its loss modules and its
#: boundary-suppression post-processing (fixed kernels, present only when that option was enabled)
_NOT_NETWORK = ("criterion.", "criterion_aux.", "multi_scale.")


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1, stride: int = 1, bias: bool = False) -> list[nn.Module]:
    pad = 0 if k == 1 else dilation
    return [nn.Conv2d(cin, cout, k, stride, padding=pad, dilation=dilation, bias=bias), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _stage(cin: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """Bottleneck stage; a dilated stage (``dilation > 1``) has stride 1 and that dilation in *all* its blocks."""
    stride = 1 if dilation > 1 else stride
    cout = planes * Bottleneck.expansion
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [Bottleneck(cin, planes, stride, dilation, down)]
    layers += [Bottleneck(cout, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class SMLASPP(nn.Module):
    """SML's ASPP: ``img_pooling``/``img_conv`` + ``features`` (1x1, three atrous 3x3), concatenated, no projection."""

    def __init__(self, cin: int = 2048, cout: int = 256, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()
        self.features = nn.ModuleList([nn.Sequential(*_cbr(cin, cout, 1))] +
                                      [nn.Sequential(*_cbr(cin, cout, 3, r)) for r in rates])
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(*_cbr(cin, cout, 1))   # registered after ``features``: upstream's key order
        self.out_channels = cout * (len(rates) + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.img_conv(self.img_pooling(x))
        # upstream upsamples the 1x1 map with align_corners=True: an exact copy, i.e. a broadcast
        outs = [pooled.expand(-1, -1, *x.shape[-2:])] + [f(x) for f in self.features]
        return torch.cat(outs, dim=1)


class SMLDeepLabV3PlusR101(SplitForward, nn.Module):
    """SML's DeepLabV3+ ResNet-101 at output stride 8 (module names = the released checkpoint's keys).

    Parameters
    ----------
    num_classes : int, default=19
    """

    #: attribute path of the last Conv2d on the output path (256 -> num_classes); test-time dropout goes before it
    final_classifier = "final2.0"
    #: no dropout layer acts on the output (the only one is in the unused ``dsn`` head)
    mc_dropout_active = False
    pretrained_cfg = PRETRAINED_CFG

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.layer0 = nn.Sequential(*_cbr(3, 64, 3, stride=2), *_cbr(64, 64, 3), *_cbr(64, 128, 3),
                                    nn.MaxPool2d(3, 2, 1))
        self.layer1 = _stage(128, 64, 3, 1, 1)
        self.layer2 = _stage(256, 128, 4, 2, 1)
        self.layer3 = _stage(512, 256, 23, 2, 2)
        self.layer4 = _stage(1024, 512, 3, 2, 4)
        self.aspp = SMLASPP(2048, 256, (12, 24, 36))
        self.bot_fine = nn.Sequential(*_cbr(256, 48, 1))
        self.bot_aspp = nn.Sequential(*_cbr(self.aspp.out_channels, 256, 1))
        self.final1 = nn.Sequential(*_cbr(48 + 256, 256, 3), *_cbr(256, 256, 3))
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, 1, bias=True))
        self.dsn = nn.Sequential(*_cbr(1024, 512, 3, bias=True), nn.Dropout2d(0.1),
                                 nn.Conv2d(512, num_classes, 1, bias=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic part: (N, 3, H, W) -> decoder features (N, 256, H/4, W/4) (``final1``'s output)."""
        low = self.layer1(self.layer0(x))
        high = self.layer4(self.layer3(self.layer2(low)))
        y = _up(self.bot_aspp(self.aspp(high)), low.shape[-2:])
        return self.final1(torch.cat([self.bot_fine(low), y], dim=1))

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample = {"mode": "bilinear", "align_corners": True}

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Classifier ``final2`` -> logits (N, C, h, w) at stride 4 (upsampled with ``align_corners=True`` by
        ``forward``); no dropout here."""
        return self.final2(feats)

    def aux_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary ``dsn`` head's logits on layer3 (stride 8); upstream uses them only in its training loss."""
        return self.dsn(self.layer3(self.layer2(self.layer1(self.layer0(x)))))


def checkpoint_filter(state_dict: dict, model: nn.Module | None = None) -> dict:
    """SML's saved state_dict -> this model's: strip ``module.`` (DDP), drop ``criterion*.`` / ``multi_scale.``.

    SML saves ``{'state_dict': net.state_dict(), 'optimizer', 'scheduler', 'epoch', 'mean_iu', 'command'}`` of a
    ``DistributedDataParallel`` model, so every key starts with ``module.``; the network keys themselves are this
    model's names unchanged (no renaming).
    """
    out = {}
    for k, v in state_dict.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(_NOT_NETWORK):
            continue
        out[k] = v
    return out


#: ``final1`` (two 3x3 conv+BN+ReLU after the skip concat) and ``final2`` (the 1x1 classifier): what PEBAL's
#: ``'module.branch1.final' in name`` trains of this network; PEBAL grows ``final2.0`` and the auxiliary ``dsn.4``
CLASSIFIER = ClassifierBlock(params=("final1.*", "final2.*"), convs=("final2.0", "dsn.4"))


@register_model(checkpoint_filter=checkpoint_filter, classifier=CLASSIFIER)
def deeplabv3plus_resnet101_sml(num_classes: int = 19, **kwargs) -> SMLDeepLabV3PlusR101:
    """SML's DeepLabV3+ ResNet-101 OS8 (``r101_os8_base_cty.pth``): deep stem, ``align_corners=True``, no dropout on
    the output path (``final_classifier = "final2.0"``)."""
    return SMLDeepLabV3PlusR101(num_classes=num_classes, **kwargs)
