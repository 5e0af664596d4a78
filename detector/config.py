"""Named, frozen model presets (the timm idea: a small registry, constants stored with the weights).

A preset fully describes a RetinaFace: backbone, which backbone stages feed the FPN, channel widths,
anchors, box-coding variances and the input preprocessing (mean, channel order). It is built once and
never mutated; :func:`dataclasses.replace` derives variants.

:class:`ResizePolicy` (how an image is scaled before the network) lives here too: like the presets it
is plain configuration, importable without torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backbones import available_backbones
from .registry import LazyDict

__all__ = [
    "AnchorConfig",
    "BIUBUG6_ANCHORS",
    "ModelConfig",
    "PRESETS",
    "ResizePolicy",
    "available_presets",
    "get_preset",
]


@dataclass(frozen=True)
class AnchorConfig:
    """Square anchors, one set of sizes per pyramid level.

    Attributes:
        min_sizes: per level, the anchor side lengths in input pixels (``len(min_sizes[k])`` anchors
            at every location of level ``k``).
        steps: per level, the stride of the feature map in input pixels.
    """

    min_sizes: tuple[tuple[float, ...], ...]
    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.min_sizes) != len(self.steps):
            raise ValueError(
                f"AnchorConfig: {len(self.min_sizes)} min_sizes levels but {len(self.steps)} steps"
            )
        if any(len(s) == 0 for s in self.min_sizes):
            raise ValueError("AnchorConfig: every level needs at least one anchor size")

    @property
    def num_levels(self) -> int:
        return len(self.steps)

    @property
    def anchors_per_location(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.min_sizes)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a RetinaFace and feed it correctly.

    Attributes:
        name: preset name (informational; stored in checkpoints).
        backbone: a registered backbone name (:mod:`detector.backbones`): ``"mobilenet0.25"``,
            ``"resnet50"``.
        return_layers: backbone stages whose outputs feed the FPN, shallowest first.
        in_channels: channels of those stages.
        out_channels: FPN / SSH / head width.
        extra_levels: extra pyramid levels computed from the deepest stage by stride-2 3x3 convs
            (the paper's P6).
        anchors: anchor sizes and strides; one level per FPN output.
        variance: box-coding variances (centre, size), as in SSD / biubug6.
        mean_bgr: per-channel mean subtracted from the input, given in BGR order (an RGB network
            gets it reordered: :meth:`network_mean_std`).
        std: per-channel divisor after mean subtraction, BGR order too (1 for the biubug6 weights).
        channel_order: ``"BGR"`` or ``"RGB"``: the order the network expects.
        leaky: LeakyReLU slope in FPN/SSH (biubug6 uses 0.1 when out_channels <= 64, else ReLU).
        train_image_size: square training input size.
    """

    name: str
    backbone: str
    return_layers: tuple[str, ...]
    in_channels: tuple[int, ...]
    out_channels: int
    anchors: AnchorConfig
    extra_levels: int = 0
    variance: tuple[float, float] = (0.1, 0.2)
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "BGR"
    leaky: float = field(default=-1.0)
    train_image_size: int = 640

    def network_mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """``mean_bgr`` and ``std`` (given in BGR order) in the network's :attr:`channel_order`."""
        order = (0, 1, 2) if self.channel_order == "BGR" else (2, 1, 0)
        return (tuple(float(self.mean_bgr[i]) for i in order),  # type: ignore[return-value]
                tuple(float(self.std[i]) for i in order))

    def __post_init__(self) -> None:
        if self.backbone not in available_backbones():
            raise ValueError(
                f"unknown backbone {self.backbone!r}; registered: {', '.join(available_backbones())}"
            )
        if len(self.return_layers) != len(self.in_channels):
            raise ValueError("return_layers and in_channels must have the same length")
        levels = len(self.return_layers) + self.extra_levels
        if levels != self.anchors.num_levels:
            raise ValueError(
                f"{levels} pyramid levels but the anchor config has {self.anchors.num_levels}"
            )
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {self.channel_order!r}")
        if self.out_channels % 4:
            raise ValueError("out_channels must be a multiple of 4 (SSH splits it 2:1:1)")
        if self.leaky < 0:  # biubug6's rule
            object.__setattr__(self, "leaky", 0.1 if self.out_channels <= 64 else 0.0)

    @property
    def num_levels(self) -> int:
        return self.anchors.num_levels

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/pickle-safe dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        data = dict(data)
        anchors = data.pop("anchors")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields in checkpoint: {sorted(unknown)}")
        tuples = {
            k: tuple(v) for k, v in data.items()
            if k in ("return_layers", "in_channels", "variance", "mean_bgr", "std")
        }
        data.update(tuples)
        return cls(
            anchors=AnchorConfig(
                min_sizes=tuple(tuple(float(s) for s in level) for level in anchors["min_sizes"]),
                steps=tuple(int(s) for s in anchors["steps"]),
            ),
            **data,
        )


BIUBUG6_ANCHORS = AnchorConfig(min_sizes=((16.0, 32.0), (64.0, 128.0), (256.0, 512.0)), steps=(8, 16, 32))
"""biubug6's anchors: two sizes per level at strides 8, 16, 32 (the MobileNet-0.25 and ResNet-50 presets)."""


def _registered_presets() -> dict[str, ModelConfig]:
    from .backbones import registered_presets

    return registered_presets()


PRESETS: dict[str, ModelConfig] = LazyDict(_registered_presets)
"""Every model preset by name (registered by the backbone modules, :mod:`detector.backbones`)."""


def available_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(available_presets())}") from None


@dataclass(frozen=True)
class ResizePolicy:
    """How an image is scaled before the network (one factor for both axes).

    Modes:
        ``original``: no resize.
        ``long_side``: ``s = size / max(h, w)`` (up or down).
        ``cap``: ``s = min(1, size / max(h, w))``: only shrink images whose long side exceeds ``size``.
        ``short_side``: ``s = size / min(h, w)``, and if ``round(s * max(h, w)) > max_size`` then
            ``s = max_size / max(h, w)`` (biubug6's WIDER FACE rule is ``short_side(1600, 2150)``).
    """

    mode: str = "original"
    size: int | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("original", "long_side", "cap", "short_side"):
            raise ValueError(f"unknown resize mode {self.mode!r}")
        if self.mode != "original" and (self.size is None or self.size <= 0):
            raise ValueError(f"resize mode {self.mode!r} needs a positive size")

    @classmethod
    def original(cls) -> ResizePolicy:
        return cls("original")

    @classmethod
    def long_side(cls, size: int) -> ResizePolicy:
        return cls("long_side", int(size))

    @classmethod
    def cap(cls, size: int) -> ResizePolicy:
        return cls("cap", int(size))

    @classmethod
    def short_side(cls, size: int, max_size: int | None = None) -> ResizePolicy:
        return cls("short_side", int(size), None if max_size is None else int(max_size))

    @classmethod
    def widerface(cls) -> ResizePolicy:
        return cls.short_side(1600, 2150)

    @classmethod
    def parse(cls, spec: str | int | ResizePolicy | None) -> ResizePolicy:
        """``None``/``"original"``, an int or ``"long:640"`` (long side), ``"cap:1024"``,
        ``"short:1600"`` / ``"short:1600,2150"``, ``"widerface"``."""
        if spec is None:
            return cls.original()
        if isinstance(spec, ResizePolicy):
            return spec
        if isinstance(spec, (int, np.integer)):
            return cls.long_side(int(spec))
        text = str(spec).strip().lower()
        try:
            if text in ("original", "none", "1", ""):
                return cls.original()
            if text == "widerface":
                return cls.widerface()
            if text.isdigit():
                return cls.long_side(int(text))
            kind, _, arg = text.partition(":")
            if kind in ("long", "long_side"):
                return cls.long_side(int(arg))
            if kind == "cap":
                return cls.cap(int(arg))
            if kind in ("short", "short_side"):
                size, _, max_size = arg.partition(",")
                return cls.short_side(int(size), int(max_size) if max_size else None)
        except ValueError:
            pass
        raise ValueError(
            f"bad resize spec {spec!r}; use original, N, long:N, cap:N, short:N[,MAX] or widerface"
        )

    def to_string(self) -> str:
        """The :meth:`parse` form of this policy (``parse(p.to_string()) == p``)."""
        if self.mode == "original":
            return "original"
        kind = {"long_side": "long", "short_side": "short"}.get(self.mode, self.mode)
        return f"{kind}:{self.size}" + (f",{self.max_size}" if self.max_size is not None else "")

    def scale(self, height: int, width: int) -> float:
        if self.mode == "original":
            return 1.0
        long_, short = max(height, width), min(height, width)
        if self.mode == "long_side":
            return self.size / long_
        if self.mode == "cap":
            return min(1.0, self.size / long_)
        s = self.size / short
        if self.max_size is not None and np.round(s * long_) > self.max_size:
            s = self.max_size / long_
        return s
