"""ResNet-50 trunk with torchvision's parameter names (``body.conv1``, ``body.layer1..4``), without
depending on torchvision; registered as ``"resnet50"`` with its presets (biubug6's ``resnet50`` and
the paper's five-level ``paper``) and its public checkpoint.

biubug6's ``Resnet50_Final.pth`` and torchvision's ImageNet weights load unchanged. The torch
classes are defined on first use (:func:`_classes`): registering needs no torch. OpenVINO bf16 keeps
the whole trunk in f32 (the registry's default; not measured further).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from detector.backbones import register_backbone
from detector.config import BIUBUG6_ANCHORS, AnchorConfig, ModelConfig
from detector.hub import KnownWeights

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["ResNet50", "build_resnet50", "fuse_resnet"]  # noqa: F822


@functools.cache
def _classes() -> SimpleNamespace:
    from torch import Tensor, nn

    from detector.layers import StagedBackbone

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

    for cls, name in ((_Bottleneck, "_Bottleneck"), (ResNet50, "ResNet50")):  # picklable by name
        cls.__module__, cls.__qualname__ = __name__, name
    return SimpleNamespace(Bottleneck=_Bottleneck, ResNet50=ResNet50)


def __getattr__(name: str) -> Any:
    if name in ("ResNet50", "_Bottleneck"):
        return getattr(_classes(), name.lstrip("_"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_resnet50(config: ModelConfig) -> nn.Module:
    return _classes().ResNet50(config.return_layers)


def fuse_resnet(body: nn.Module) -> None:
    """Fold the stem's ``conv1``/``bn1`` and each bottleneck's ``convK``/``bnK`` pairs, in place
    (the downsample ``Sequential(conv, bn)`` is left to the generic folding)."""
    from torch import nn

    from detector.layers import fold_conv_bn

    classes = _classes()
    for module in list(body.modules()):
        if isinstance(module, classes.Bottleneck):
            for k in (1, 2, 3):
                conv, bn = getattr(module, f"conv{k}"), getattr(module, f"bn{k}")
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{k}", fold_conv_bn(conv, bn))
                    setattr(module, f"bn{k}", nn.Identity())
        elif isinstance(module, classes.ResNet50) and isinstance(module.bn1, nn.BatchNorm2d):
            module.conv1 = fold_conv_bn(module.conv1, module.bn1)
            module.bn1 = nn.Identity()


def _paper_anchors() -> AnchorConfig:
    # RetinaFace paper, Sec. 4.2: P2..P6 (strides 4..64), three scales 2^(0, 1/3, 2/3) per level
    # starting at 16, 32, 64, 128, 256 px.
    base = (16.0, 32.0, 64.0, 128.0, 256.0)
    return AnchorConfig(
        min_sizes=tuple(tuple(b * 2.0 ** (i / 3.0) for i in range(3)) for b in base),
        steps=(4, 8, 16, 32, 64),
    )


register_backbone(
    "resnet50",
    build=build_resnet50,
    checkpoint_key_prefix="body.layer1.",
    fuse=fuse_resnet,
    presets=(
        # biubug6/Pytorch_Retinaface cfg_re50
        ModelConfig(name="resnet50", backbone="resnet50", return_layers=("layer2", "layer3", "layer4"),
                    in_channels=(512, 1024, 2048), out_channels=256, anchors=BIUBUG6_ANCHORS, train_image_size=840),
        # The paper's configuration: ResNet-50 C2..C5 plus P6, five levels, 3 anchors per location.
        ModelConfig(name="paper", backbone="resnet50", return_layers=("layer1", "layer2", "layer3", "layer4"),
                    in_channels=(256, 512, 1024, 2048), out_channels=256, extra_levels=1,
                    anchors=_paper_anchors(), train_image_size=640),
    ),
    weights=(
        KnownWeights(
            name="resnet50",
            preset="resnet50",
            filename="retinaface_resnet50_biubug6.pth",
            url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
            sha256=None,
        ),
    ),
)
