"""NVIDIA semantic-segmentation ``DeepWV3Plus`` (WiderResNet-38 A2 trunk, DeepLabV3+ head) as ``deeplabv3plus_wrn38``.

The Cityscapes network that meta-ood, PEBAL, RPL, DenseHybrid and ATTA start from (NVIDIA's ``cityscapes_best.pth``,
branch ``sdcnet`` of https://github.com/NVIDIA/semantic-segmentation). Written on plain torch, module for module, so
that the released state_dict loads strictly with its own key names (268 tensors for 19 classes: ``mod1.conv1.weight``,
``mod2.block1.bn1.0.weight``, ``mod2.block1.convs.conv1.weight``, ..., ``aspp.features.0.0.weight``,
``aspp.img_conv.0.weight``, ``bot_fine.weight``, ``bot_aspp.weight``, ``final.0.weight`` ... ``final.6.weight``).

Architecture (input ``(N, 3, H, W)``, ImageNet-normalized RGB):

* trunk: ``mod1`` (3x3 conv, 64 ch) -> ``pool2`` (max 3x3/2) -> ``mod2`` (3 blocks, 128 ch; stride 2) -> ``pool3``
  -> ``mod3`` (3 blocks, 256 ch; stride 4) -> ``mod4`` (6 blocks, 512 ch, first one strided; stride 8) -> ``mod5``
  (3 blocks, 1024 ch, dilation 2) -> ``mod6`` (1 bottleneck block 512/1024/2048, dilation 4, ``Dropout2d(0.3)``) ->
  ``mod7`` (1 bottleneck block 1024/2048/4096, dilation 4, ``Dropout2d(0.5)``). Blocks are pre-activation
  (identity-mapping) residual blocks: ``bn1`` = BN+ReLU applied to the input, a 1x1 ``proj_conv`` of that activation
  as shortcut where the width or stride changes, the raw input otherwise. Structure [3, 3, 6, 3, 1, 1]; output
  stride 8. The trunk's final ``bn_out`` and classifier are not part of ``DeepWV3Plus`` (mod7's raw residual sum goes
  straight into the ASPP).
* ASPP on the 4096-channel map: image pooling, 1x1, 3x3 at dilations 12/24/36 (each conv+BN+ReLU, 256 ch),
  concatenated in that order (1280 ch) -> ``bot_aspp`` (bare 1x1 conv, 256 ch).
* decoder at stride **2** (the skip is ``mod2``'s output, 128 ch -> ``bot_fine``, bare 1x1 conv, 48 ch): ASPP output
  bilinearly upsampled (``align_corners=True``), ``cat([fine, aspp])`` -> ``final``: 3x3 conv+BN+ReLU, 3x3
  conv+BN+ReLU, 1x1 classifier without bias (logits at stride 2: ``forward_native``) -> bilinear upsampling to the
  input size (``align_corners=True``, ``output_upsample``).

MC dropout: the only dropout layers sit inside the trunk (mod6, mod7), so no deterministic ``forward_features`` /
stochastic ``forward_head`` split exists. This model therefore does **not** define ``forward_features`` /
``forward_head`` (and sets ``mc_head_only = False``): MC dropout (``maxent_train.mc``) runs T full forward passes,
each resampling the trunk's dropout masks, exactly as the network was trained.

Checkpoints: ``checkpoint_filter`` strips the ``module.`` (DataParallel) and ``branch1.`` (PEBAL's ``Network``
wrapper) prefixes and drops training-only ``criterion.*`` entries (NVIDIA's trainer keeps the loss module, and with
it ``criterion.nll_loss.weight``, inside the network); no key is renamed.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import ClassifierBlock, register_model

#: Input convention and provenance of the released weights (timm's ``pretrained_cfg``).
PRETRAINED_CFG = {
    "architecture": "deeplabv3plus_wrn38",
    "upstream": "NVIDIA/semantic-segmentation network/deepv3.py:DeepWV3Plus (branch sdcnet)",
    "url": "https://github.com/NVIDIA/semantic-segmentation/tree/sdcnet",
    "upstream_commit": "2f548ab30ab0d56e91de66a4dea4757a0c64e7e4",
    "files": {
        "cityscapes_best.pth": "NVIDIA's released Cityscapes model (README of branch sdcnet; meta-ood's starting "
                               "point): {'state_dict' (module.*), 'optimizer', 'epoch', 'mean_iu', 'command'}",
    },
    "num_classes": 19,
    "input_space": "RGB",
    "input_range": (0.0, 1.0),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "align_corners": True,
    "output_stride": 8,
}

# widths of the six residual stages mod2..mod7 (two entries: basic block, three: bottleneck) and their block counts
_WIDTHS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
_DEPTHS_38 = (3, 3, 6, 3, 1, 1)
_DILATIONS = (1, 1, 1, 2, 4, 4)            # the "dilation=True" variant: output stride 8
_DROPOUT = (0.0, 0.0, 0.0, 0.0, 0.3, 0.5)  # Dropout2d inside the blocks of mod6 / mod7


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=False)


class PreActBlock(nn.Module):
    """Identity-mapping (pre-activation) residual block of the wider ResNets.

    ``y = convs(relu(bn1(x))) + shortcut`` with ``shortcut = proj_conv(relu(bn1(x)))`` when the stride or width
    changes, else ``x``. ``widths`` of length 2: 3x3 -> 3x3 (both dilated, the first one strided); length 3:
    bottleneck 1x1 (strided) -> 3x3 (dilated) -> 1x1. ``dropout > 0`` puts a ``Dropout2d`` before the last conv.
    """

    def __init__(self, cin: int, widths: tuple[int, ...], stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = _bn_relu(cin)
        layers: list[tuple[str, nn.Module]]
        if len(widths) == 2:
            layers = [("conv1", _conv(cin, widths[0], 3, stride, dilation)), ("bn2", _bn_relu(widths[0])),
                      ("conv2", _conv(widths[0], widths[1], 3, 1, dilation))]
        elif len(widths) == 3:
            layers = [("conv1", _conv(cin, widths[0], 1, stride)), ("bn2", _bn_relu(widths[0])),
                      ("conv2", _conv(widths[0], widths[1], 3, 1, dilation)), ("bn3", _bn_relu(widths[1])),
                      ("conv3", _conv(widths[1], widths[2], 1))]
        else:
            raise ValueError(f"widths must have 2 or 3 entries, got {widths}")
        if dropout > 0:
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.proj_conv = _conv(cin, widths[-1], 1, stride) if stride != 1 or cin != widths[-1] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(a)
        return self.convs(a) + shortcut


class ImagePoolASPP(nn.Module):
    """NVIDIA's ASPP: image pooling, 1x1 and three atrous 3x3 branches (conv+BN+ReLU each), concatenated in that
    order without a projection (``(len(rates) + 2) * cout`` channels; the projection is the model's ``bot_aspp``)."""

    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()

        def branch(k: int, d: int = 1) -> nn.Sequential:
            return nn.Sequential(_conv(cin, cout, k, 1, d), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.ModuleList([branch(1)] + [branch(3, r) for r in rates])
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = branch(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a 1x1 map upsampled with align_corners=True is a constant: broadcasting gives the same numbers
        pooled = self.img_conv(self.img_pooling(x)).expand(-1, -1, *x.shape[-2:])
        return torch.cat([pooled] + [f(x) for f in self.features], dim=1)


class DeepWV3Plus(nn.Module):
    """DeepLabV3+ on a dilated WiderResNet-38 A2 (output stride 8), NVIDIA's layout and key names.

    Parameters
    ----------
    num_classes : int, default=19

    Notes
    -----
    ``forward(x)`` -> logits ``(N, num_classes, H, W)``. Dropout (p=0.3 in mod6, 0.5 in mod7) is part of the trunk, as
    upstream: in train mode the output is stochastic end to end; no ``forward_features``/``forward_head`` split is
    offered (``mc_head_only = False``), so MC dropout runs full passes.
    """

    mc_head_only = False
    pretrained_cfg = PRETRAINED_CFG
    # the stages __init__ registers with add_module (declared for the type checker)
    pool2: nn.MaxPool2d
    pool3: nn.MaxPool2d
    mod2: nn.Sequential
    mod3: nn.Sequential
    mod4: nn.Sequential
    mod5: nn.Sequential
    mod6: nn.Sequential
    mod7: nn.Sequential

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.mod1 = nn.Sequential(OrderedDict([("conv1", _conv(3, 64, 3))]))
        cin = 64
        for i, (widths, depth, dil, p) in enumerate(zip(_WIDTHS, _DEPTHS_38, _DILATIONS, _DROPOUT)):
            blocks = []
            for b in range(depth):
                stride = 2 if (i == 2 and b == 0) else 1   # mod4 downsamples by a strided conv; mod2/3 by pooling
                blocks.append((f"block{b + 1}", PreActBlock(cin, widths, stride, dil, p)))
                cin = widths[-1]
            if i < 2:
                self.add_module(f"pool{i + 2}", nn.MaxPool2d(3, stride=2, padding=1))
            self.add_module(f"mod{i + 2}", nn.Sequential(OrderedDict(blocks)))
        self.aspp = ImagePoolASPP(cin, 256, rates=(12, 24, 36))
        self.bot_fine = nn.Conv2d(_WIDTHS[0][-1], 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(256 * 5, 256, 1, bias=False)
        self.final = nn.Sequential(
            _conv(256 + 48, 256, 3), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            _conv(256, 256, 3), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False))
        for m in self.final.modules():   # upstream's initialize_weights(self.final); the rest keeps torch defaults
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    #: the final upsampling of ``forward``: ``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **rule)``
    output_upsample: dict[str, Any] = {"mode": "bilinear", "align_corners": True}

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the network's output resolution (stride 2, the decoder's), before the final upsampling."""
        y = self.mod1(x)
        m2 = self.mod2(self.pool2(y))                      # stride 2, 128 ch: the decoder's skip
        y = self.mod3(self.pool3(m2))
        y = self.mod7(self.mod6(self.mod5(self.mod4(y))))  # stride 8, 4096 ch
        y = self.bot_aspp(self.aspp(y))
        y = F.interpolate(y, size=m2.shape[-2:], mode="bilinear", align_corners=True)
        return self.final(torch.cat([self.bot_fine(m2), y], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_native(x), size=x.shape[-2:], **self.output_upsample)


_PREFIXES = ("module.", "branch1.")


def checkpoint_filter(state_dict: dict, model: nn.Module | None = None) -> dict:
    """Released WRN38 files -> this model's keys: strip ``module.`` / ``branch1.`` (also nested, in any order) and
    drop the training-only ``criterion.*`` entries. Keys are otherwise the upstream names, unchanged."""
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        if k.startswith("criterion."):
            continue
        out[k] = v
    return out


#: the decoder after the skip concat (two 3x3 conv+BN+ReLU) and the 1x1 classifier: what PEBAL fine-tunes
#: (``module.branch1.final``) and grows by one output (``final.6``, ``load_model(extra_channel=True)``)
CLASSIFIER = ClassifierBlock(params=("final.*",), convs=("final.6",))


@register_model(checkpoint_filter=checkpoint_filter, classifier=CLASSIFIER)
def deeplabv3plus_wrn38(num_classes: int = 19) -> DeepWV3Plus:
    """NVIDIA's DeepWV3Plus (DeepLabV3+, WiderResNet-38 A2, output stride 8; 137 M parameters); no options besides
    ``num_classes``. Loads ``cityscapes_best.pth`` (meta-ood, PEBAL, RPL, DenseHybrid, ATTA) strictly."""
    return DeepWV3Plus(num_classes=num_classes)
