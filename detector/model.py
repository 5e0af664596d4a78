"""RetinaFace (Deng et al., CVPR 2020): backbone, FPN, SSH context modules and the three heads.

Module and parameter names follow biubug6/Pytorch_Retinaface so that its public checkpoints load
unchanged (``body.*``, ``fpn.output{k}``, ``fpn.merge{k}``, ``ssh{k}``, ``ClassHead.{k}``,
``BboxHead.{k}``, ``LandmarkHead.{k}``). The backbones (``body``) live in :mod:`detector.backbones`,
one module each, looked up by ``ModelConfig.backbone``.

``forward`` always returns raw outputs (logits and deltas); decoding and NMS live in
:mod:`detector.inference`, target encoding in :mod:`detector.training`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import get_backbone
from .config import ModelConfig
from .layers import conv_bn, fold_conv_bn

__all__ = ["RetinaFace", "RetinaFaceOutput", "build_backbone", "fuse_conv_bn"]


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


def build_backbone(config: ModelConfig) -> nn.Module:
    """The trunk registered as ``config.backbone`` (:mod:`detector.backbones`)."""
    return get_backbone(config.backbone).build(config)


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
            setattr(self, f"output{i}", conv_bn(c, out_channels, kernel=1, leaky=leaky))
        for i in range(1, len(in_channels)):
            setattr(self, f"merge{i}", conv_bn(out_channels, out_channels, leaky=leaky))
        for i in range(1, extra_levels + 1):
            src = in_channels[-1] if i == 1 else out_channels
            setattr(self, f"extra{i}", conv_bn(src, out_channels, stride=2, leaky=leaky))

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
        self.conv3X3 = conv_bn(in_channels, out_channels // 2, leaky=None)
        self.conv5X5_1 = conv_bn(in_channels, q, leaky=leaky)
        self.conv5X5_2 = conv_bn(q, q, leaky=None)
        self.conv7X7_2 = conv_bn(q, q, leaky=leaky)
        self.conv7x7_3 = conv_bn(q, q, leaky=None)

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


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` (in eval mode) with every Conv2d -> BatchNorm2d pair folded.

    Covers the ``Sequential(conv, bn, ...)`` blocks anywhere in ``model`` and, in each
    :class:`RetinaFace` it holds, the pairs its backbone's registered ``fuse`` hook knows (e.g. the
    ResNet bottleneck's ``convK``/``bnK``). Numerically equivalent in eval mode (float rounding
    aside); not for training.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (n1, m1), (n2, m2) in zip(children, children[1:]):
                if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                    setattr(module, n1, fold_conv_bn(m1, m2))
                    setattr(module, n2, nn.Identity())
    for module in [m for m in model.modules() if isinstance(m, RetinaFace)]:
        fuse = get_backbone(module.config.backbone).fuse
        if fuse is not None:
            fuse(module.body)
    return model
