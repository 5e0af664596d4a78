"""MobileNetV1 x0.25 as in biubug6/Pytorch_Retinaface (``body.stage1..3``), registered as
``"mobilenet0.25"`` with its preset, its public checkpoint and its OpenVINO bf16 split.

Parameter names are biubug6's, so ``mobilenet0.25_Final.pth`` and the ImageNet backbone
``mobilenetV1X0.25_pretrain.tar`` load unchanged. The torch classes are defined on first use
(:func:`_classes`): registering needs no torch.

OpenVINO bf16 keeps the stem and the depthwise convolutions in f32. On the golden photos, plain
bf16 moves the boxes of two 16-pixel faces (of 378 at score >= 0.5) to IoU 0.67-0.68 with their
fp32 boxes. The depthwise convolutions have few multiply-adds and are memory-bound, so bf16 saves
little there; with them in f32 every face is found (landmarks median 0.2 %, p95 0.6 % of the box
width) at about 1.15x the plain-bf16 time (0.6x fp32); the pointwise convolutions, FPN, SSH and
heads run in bf16.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from detector.backbones import register_backbone
from detector.config import BIUBUG6_ANCHORS, ModelConfig
from detector.hub import KnownWeights

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["MobileNetV1", "build_mobilenet"]  # noqa: F822


@functools.cache
def _classes() -> SimpleNamespace:
    from torch import nn

    from detector.layers import StagedBackbone, conv_bn

    def conv_dw(inp: int, oup: int, *, stride: int, leaky: float = 0.1) -> nn.Sequential:
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
                conv_dw(8, 16, stride=1),
                conv_dw(16, 32, stride=2),
                conv_dw(32, 32, stride=1),
                conv_dw(32, 64, stride=2),
                conv_dw(64, 64, stride=1),
            )
            self.stage2 = nn.Sequential(
                conv_dw(64, 128, stride=2),
                *[conv_dw(128, 128, stride=1) for _ in range(5)],
            )
            self.stage3 = nn.Sequential(
                conv_dw(128, 256, stride=2),
                conv_dw(256, 256, stride=1),
            )

    MobileNetV1.__module__, MobileNetV1.__qualname__ = __name__, "MobileNetV1"  # picklable by name
    return SimpleNamespace(MobileNetV1=MobileNetV1)


def __getattr__(name: str) -> Any:
    if name == "MobileNetV1":
        return _classes().MobileNetV1
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_mobilenet(config: ModelConfig) -> nn.Module:
    return _classes().MobileNetV1(config.return_layers)


# Every block is Sequential(conv, bn, act): fuse_conv_bn's generic folding covers it all.
register_backbone(
    "mobilenet0.25",
    build=build_mobilenet,
    checkpoint_key_prefix="body.stage1.",
    presets=(
        # biubug6/Pytorch_Retinaface cfg_mnet
        ModelConfig(name="mobilenet0.25", backbone="mobilenet0.25", return_layers=("stage1", "stage2", "stage3"),
                    in_channels=(64, 128, 256), out_channels=64, anchors=BIUBUG6_ANCHORS, train_image_size=640),
    ),
    weights=(
        KnownWeights(
            name="mobilenet0.25",
            preset="mobilenet0.25",
            filename="retinaface_mobilenet0.25_biubug6.pth",
            url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
            sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        ),
    ),
    bf16_keep_f32=(r"^/body/stage\d/stage\d\.\d+/stage\d\.\d+\.0/",),  # stem + depthwise convs
)
