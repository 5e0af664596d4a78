"""MobileNetV1 x0.25 as in biubug6/Pytorch_Retinaface (``body.stage1..3``), registered as
``"mobilenet0.25"``.

Parameter names are biubug6's, so ``mobilenet0.25_Final.pth`` and the ImageNet backbone
``mobilenetV1X0.25_pretrain.tar`` load unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from detector.backbones import register_backbone
from detector.layers import StagedBackbone, conv_bn

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import ModelConfig

__all__ = ["MobileNetV1", "build_mobilenet"]


def _conv_dw(inp: int, oup: int, *, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each followed by BatchNorm and LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(StagedBackbone):
    """MobileNetV1 x0.25 (LeakyReLU 0.1 throughout). Stage strides 8 / 16 / 32, channels 64 / 128 / 256."""

    def __init__(self, return_layers: tuple[str, ...] = ("stage1", "stage2", "stage3")) -> None:
        super().__init__(return_layers)
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, stride=2, leaky=0.1),
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


def build_mobilenet(config: ModelConfig) -> MobileNetV1:
    return MobileNetV1(config.return_layers)


# Every block is Sequential(conv, bn, act): fuse_conv_bn's generic folding covers it all.
register_backbone("mobilenet0.25", build=build_mobilenet, checkpoint_key_prefix="body.stage1.")
