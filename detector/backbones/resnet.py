"""ResNet-50 trunk with torchvision's parameter names (``body.conv1``, ``body.layer1..4``), without
depending on torchvision; registered as ``"resnet50"``.

biubug6's ``Resnet50_Final.pth`` and torchvision's ImageNet weights load unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from detector.backbones import register_backbone
from detector.layers import StagedBackbone, fold_conv_bn

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import ModelConfig

__all__ = ["ResNet50", "build_resnet50", "fuse_resnet"]


class _Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), same parameter names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(StagedBackbone):
    """ResNet-50 trunk (no avgpool / fc). Stage strides: layer1 4, layer2 8, layer3 16, layer4 32;
    channels 256 / 512 / 1024 / 2048."""

    def __init__(self, return_layers: tuple[str, ...] = ("layer2", "layer3", "layer4")) -> None:
        super().__init__(return_layers)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for idx, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = [_Bottleneck(inplanes, planes, stride=stride)]
            inplanes = planes * _Bottleneck.expansion
            layers += [_Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx}", nn.Sequential(*layers))


def build_resnet50(config: ModelConfig) -> ResNet50:
    return ResNet50(config.return_layers)


def fuse_resnet(body: nn.Module) -> None:
    """Fold the stem's ``conv1``/``bn1`` and each bottleneck's ``convK``/``bnK`` pairs, in place
    (the downsample ``Sequential(conv, bn)`` is left to the generic folding)."""
    for module in list(body.modules()):
        if isinstance(module, _Bottleneck):
            for k in (1, 2, 3):
                conv, bn = getattr(module, f"conv{k}"), getattr(module, f"bn{k}")
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{k}", fold_conv_bn(conv, bn))
                    setattr(module, f"bn{k}", nn.Identity())
        elif isinstance(module, ResNet50) and isinstance(module.bn1, nn.BatchNorm2d):
            module.conv1 = fold_conv_bn(module.conv1, module.bn1)
            module.bn1 = nn.Identity()


register_backbone("resnet50", build=build_resnet50, checkpoint_key_prefix="body.layer1.", fuse=fuse_resnet)
