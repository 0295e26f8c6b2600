"""Plain-torch ResNet-18/50/101 backbones with dilation (output stride 8 or 16) — no torchvision.

Parameter names follow torchvision's layout (``conv1``, ``bn1``, ``layer1..4.<i>.conv1/bn1/...``,
``downsample.0/1``), so an ImageNet state_dict saved from torchvision loads by key (``load_backbone_weights``).
Stride sits on the 3x3 conv of a bottleneck ("ResNet v1.5"), as in torchvision.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .. import MaxentError
from ._helpers import read_state_dict


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk (no classifier) returning ``(low, high)``: layer1 (stride 4) and layer4 (stride ``output_stride``).

    Parameters
    ----------
    depth : {"resnet18", "resnet50", "resnet101"}
    output_stride : {8, 16}, default=8
        16 dilates layer4; 8 dilates layer3 and layer4 (DeepLab's atrous trunk).
    """

    def __init__(self, depth: str = "resnet50", output_stride: int = 8):
        super().__init__()
        if depth not in _SPECS:
            raise MaxentError(f"backbone must be one of {sorted(_SPECS)}, got {depth!r}")
        if output_stride not in (8, 16):
            raise MaxentError(f"output_stride must be 8 or 16, got {output_stride}")
        block, layers = _SPECS[depth]
        dilate = (False, False, True) if output_stride == 16 else (False, True, True)
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilate[2])
        self.low_channels = 64 * block.expansion
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, n: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        prev = self.dilation
        if dilate:  # keep resolution: the stride becomes dilation, from the second block on (as DeepLab does)
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, prev, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, self.dilation) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def load_backbone_weights(backbone: ResNet, path: str | Path) -> None:
    """Load an ImageNet ResNet state_dict in torchvision's key layout (``fc.*`` ignored), strictly.

    The file is a user-provided ``torch.save(state_dict)`` (e.g. of ``torchvision.models.resnet50(weights=...)``),
    read with ``weights_only=True``.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise MaxentError(f"{path}: not a matching torchvision ResNet state_dict "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {shapes[:3]})")
    backbone.load_state_dict(state, strict=False)
