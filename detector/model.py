"""RetinaFace (Deng et al., CVPR 2020): backbone, FPN, SSH context modules and the three heads.

Module and parameter names follow biubug6/Pytorch_Retinaface so that its public checkpoints load
unchanged (``body.*``, ``fpn.output{k}``, ``fpn.merge{k}``, ``ssh{k}``, ``ClassHead.{k}``,
``BboxHead.{k}``, ``LandmarkHead.{k}``). The ResNet-50 is written here with torchvision's parameter
names (so ``Resnet50_Final.pth`` loads) without depending on torchvision.

``forward`` always returns raw outputs (logits and deltas); decoding and NMS live in
:mod:`detector.inference`, target encoding in :mod:`detector.training`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

__all__ = ["RetinaFace", "RetinaFaceOutput", "MobileNetV1", "ResNet50", "build_backbone", "fuse_conv_bn"]


class RetinaFaceOutput(NamedTuple):
    """Raw network outputs for ``A`` anchors (anchor order of :class:`detector.anchors.AnchorGenerator`).

    Attributes:
        cls_logits: ``Tensor[B, A, 2]`` background / face logits.
        bbox_deltas: ``Tensor[B, A, 4]`` encoded box offsets.
        landmark_deltas: ``Tensor[B, A, 10]`` encoded landmark offsets (x, y for 5 points).
    """

    cls_logits: Tensor
    bbox_deltas: Tensor
    landmark_deltas: Tensor


# --------------------------------------------------------------------------------------------------
# building blocks (biubug6 naming: Sequential(conv, bn[, act]))


def _conv_bn(inp: int, oup: int, *, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3,
             groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True) if leaky > 0 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, oup: int, *, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class _Backbone(nn.Module):
    """Runs children in order and returns the outputs of ``return_layers``."""

    def __init__(self, return_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.return_layers = tuple(return_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        wanted = set(self.return_layers)
        feats: dict[str, Tensor] = {}
        for name, module in self.named_children():
            x = module(x)
            if name in wanted:
                feats[name] = x
                if len(feats) == len(wanted):
                    break
        return [feats[name] for name in self.return_layers]


class MobileNetV1(_Backbone):
    """MobileNetV1 x0.25 as in biubug6 (LeakyReLU 0.1 throughout). Output strides 8/16/32."""

    def __init__(self, return_layers: tuple[str, ...] = ("stage1", "stage2", "stage3")) -> None:
        super().__init__(return_layers)
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, stride=2, leaky=0.1),
            _conv_dw(8, 16, stride=1),
            _conv_dw(16, 32, stride=2),
            _conv_dw(32, 32, stride=1),
            _conv_dw(32, 64, stride=2),
            _conv_dw(64, 64, stride=1),
        )
        self.stage2 = nn.Sequential(
            _conv_dw(64, 128, stride=2),
            *[_conv_dw(128, 128, stride=1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(
            _conv_dw(128, 256, stride=2),
            _conv_dw(256, 256, stride=1),
        )


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


class ResNet50(_Backbone):
    """ResNet-50 trunk (no avgpool / fc). Stage strides: layer1 4, layer2 8, layer3 16, layer4 32."""

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


def build_backbone(config: ModelConfig) -> _Backbone:
    if config.backbone == "mobilenet0.25":
        return MobileNetV1(config.return_layers)
    if config.backbone == "resnet50":
        return ResNet50(config.return_layers)
    raise ValueError(f"unknown backbone {config.backbone!r}")


class FPN(nn.Module):
    """Top-down feature pyramid with 1x1 laterals and 3x3 merges (biubug6 layout).

    Extra levels (the paper's P6) are stride-2 3x3 convs on the deepest backbone output.
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, *, leaky: float,
                 extra_levels: int = 0) -> None:
        super().__init__()
        self.num_inputs = len(in_channels)
        self.extra_levels = extra_levels
        for i, c in enumerate(in_channels, 1):
            setattr(self, f"output{i}", _conv_bn(c, out_channels, kernel=1, leaky=leaky))
        for i in range(1, len(in_channels)):
            setattr(self, f"merge{i}", _conv_bn(out_channels, out_channels, leaky=leaky))
        for i in range(1, extra_levels + 1):
            src = in_channels[-1] if i == 1 else out_channels
            setattr(self, f"extra{i}", _conv_bn(src, out_channels, stride=2, leaky=leaky))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        n = self.num_inputs
        outs: list[Tensor] = [None] * n  # type: ignore[list-item]
        outs[n - 1] = getattr(self, f"output{n}")(feats[n - 1])
        for i in range(n - 2, -1, -1):
            lateral = getattr(self, f"output{i + 1}")(feats[i])
            up = F.interpolate(outs[i + 1], size=lateral.shape[-2:], mode="nearest")
            outs[i] = getattr(self, f"merge{i + 1}")(lateral + up)
        x = feats[-1]
        for i in range(1, self.extra_levels + 1):
            x = getattr(self, f"extra{i}")(x)
            outs.append(x)
        return outs


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self, in_channels: int, out_channels: int, *, leaky: float) -> None:
        super().__init__()
        q = out_channels // 4
        self.conv3X3 = _conv_bn(in_channels, out_channels // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(in_channels, q, leaky=leaky)
        self.conv5X5_2 = _conv_bn(q, q, leaky=None)
        self.conv7X7_2 = _conv_bn(q, q, leaky=leaky)
        self.conv7x7_3 = _conv_bn(q, q, leaky=None)

    def forward(self, x: Tensor) -> Tensor:
        c3 = self.conv3X3(x)
        c5_1 = self.conv5X5_1(x)
        c5 = self.conv5X5_2(c5_1)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([c3, c5, c7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting ``values`` numbers per anchor; output ``[B, H*W*anchors, values]``."""

    def __init__(self, in_channels: int, num_anchors: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * values, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """RetinaFace with the backbone, FPN, per-level SSH and shared-structure heads of ``config``.

    Input: ``Tensor[B, 3, H, W]`` float, channel order and mean subtraction as in ``config``.
    Output: :class:`RetinaFaceOutput` of raw logits / deltas for every anchor.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.body = build_backbone(config)
        self.fpn = FPN(config.in_channels, config.out_channels, leaky=config.leaky,
                       extra_levels=config.extra_levels)
        for i in range(1, config.num_levels + 1):
            setattr(self, f"ssh{i}", SSH(config.out_channels, config.out_channels, leaky=config.leaky))
        per_loc = config.anchors.anchors_per_location
        self.ClassHead = nn.ModuleList(_Head(config.out_channels, n, 2) for n in per_loc)
        self.BboxHead = nn.ModuleList(_Head(config.out_channels, n, 4) for n in per_loc)
        self.LandmarkHead = nn.ModuleList(_Head(config.out_channels, n, 10) for n in per_loc)

    @property
    def backbone(self) -> nn.Module:
        return self.body

    def forward(self, x: Tensor) -> RetinaFaceOutput:
        pyramid = self.fpn(self.body(x))
        feats = [getattr(self, f"ssh{i + 1}")(p) for i, p in enumerate(pyramid)]
        return RetinaFaceOutput(
            cls_logits=torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1),
            bbox_deltas=torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1),
            landmark_deltas=torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1),
        )


# --------------------------------------------------------------------------------------------------
# inference-time folding


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` (in eval mode) with every Conv2d -> BatchNorm2d pair folded.

    Covers the ``Sequential(conv, bn, ...)`` blocks and the ResNet bottleneck's ``convK``/``bnK``
    pairs. Numerically equivalent in eval mode (float rounding aside); not for training.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (n1, m1), (n2, m2) in zip(children, children[1:]):
                if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                    setattr(module, n1, _fold(m1, m2))
                    setattr(module, n2, nn.Identity())
        elif isinstance(module, _Bottleneck):
            for k in (1, 2, 3):
                conv, bn = getattr(module, f"conv{k}"), getattr(module, f"bn{k}")
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{k}", _fold(conv, bn))
                    setattr(module, f"bn{k}", nn.Identity())
        elif isinstance(module, ResNet50) and isinstance(module.bn1, nn.BatchNorm2d):
            module.conv1 = _fold(module.conv1, module.bn1)
            module.bn1 = nn.Identity()
    return model
