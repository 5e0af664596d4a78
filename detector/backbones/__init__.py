"""The backbone registry: one module per backbone, the one place a backbone is declared.

A backbone module calls :func:`register_backbone` when imported, giving:

* ``build(config) -> nn.Module``: the trunk for a :class:`detector.config.ModelConfig`;
  ``forward(x: Tensor[B, 3, H, W])`` returns one feature map per ``config.return_layers`` entry,
  shallowest first, with ``config.in_channels`` channels. :class:`detector.model.RetinaFace` keeps
  it as ``body``, so its parameter names are the checkpoints' ``body.*`` keys (biubug6's names for
  the built-in backbones: change them and the public checkpoints no longer load).
* ``checkpoint_key_prefix``: a state_dict key prefix only RetinaFace checkpoints with this backbone
  have; how a bare biubug6 ``.pth`` (no stored config) tells its architecture.
* ``fuse(body)`` (optional): folds, in place, the Conv2d -> BatchNorm2d pairs of the trunk that are
  not ``Sequential(conv, bn, ...)`` blocks (:func:`detector.model.fuse_conv_bn` folds those).
* ``presets``: the :class:`~detector.config.ModelConfig` presets built on it (served by
  :func:`detector.config.get_preset`; a preset named like the backbone is what a bare checkpoint
  loads as).
* ``weights``: its public checkpoints (:class:`detector.hub.KnownWeights`, served by
  :data:`detector.hub.KNOWN_WEIGHTS`).
* ``bf16_keep_f32``: the ONNX node-name patterns OpenVINO bf16 keeps in f32
  (:func:`bf16_keep_f32`; default: the whole trunk, ``^/body/``).

Backbone modules import torch only to build: registering (names, presets, weights, bf16 split)
needs no torch, so :mod:`detector.config`, :mod:`detector.hub` and the ONNX runtimes read the
registry in a torch-free process. The built-in modules are imported on the first look-up. Adding a
backbone: one module here that calls :func:`register_backbone`, and its name in
``_BUILTIN_MODULES``; code outside the package may instead call :func:`register_backbone` itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from detector.config import ModelConfig
    from detector.hub import KnownWeights

__all__ = [
    "BF16_KEEP_F32_DEFAULT",
    "Backbone",
    "available_backbones",
    "backbone_of_checkpoint",
    "bf16_keep_f32",
    "get_backbone",
    "register_backbone",
    "registered_presets",
    "registered_weights",
]

# Built-in backbones: name -> the module that registers it on import.
_BUILTIN_MODULES: dict[str, str] = {
    "mobilenet0.25": "detector.backbones.mobilenet",
    "resnet50": "detector.backbones.resnet",
}

BF16_KEEP_F32_DEFAULT: tuple[str, ...] = (r"^/body/",)
"""A backbone that does not say: OpenVINO bf16 runs its whole trunk in f32 (not measured further)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backbone:
    """A registered backbone (see the module docstring for the contract of each field)."""

    name: str
    build: Callable[[ModelConfig], nn.Module]
    checkpoint_key_prefix: str
    fuse: Callable[[nn.Module], None] | None = None
    presets: tuple[ModelConfig, ...] = ()
    weights: tuple[KnownWeights, ...] = ()
    bf16_keep_f32: tuple[str, ...] = BF16_KEEP_F32_DEFAULT


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(
    name: str,
    *,
    build: Callable[[ModelConfig], nn.Module],
    checkpoint_key_prefix: str,
    fuse: Callable[[nn.Module], None] | None = None,
    presets: Iterable[ModelConfig] = (),
    weights: Iterable[KnownWeights] = (),
    bf16_keep_f32: Iterable[str] = BF16_KEEP_F32_DEFAULT,
) -> Backbone:
    """Register a backbone under ``name``; raises ``ValueError`` if the name is taken."""
    if not name:
        raise ValueError("a backbone needs a name")
    if not checkpoint_key_prefix:
        raise ValueError(f"backbone {name!r}: checkpoint_key_prefix must not be empty")
    if name in _BUILTIN_MODULES and name not in _REGISTRY:
        # A built-in name registers its own module first (a no-op when that module is the caller,
        # being imported), so that no other builder can take the name.
        importlib.import_module(_BUILTIN_MODULES[name])
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    presets, weights = tuple(presets), tuple(weights)
    for preset in presets:
        if preset.backbone != name:
            raise ValueError(f"backbone {name!r}: preset {preset.name!r} is built on {preset.backbone!r}")
    taken = {p.name for b in _REGISTRY.values() for p in b.presets} & {p.name for p in presets}
    taken |= {w.name for b in _REGISTRY.values() for w in b.weights} & {w.name for w in weights}
    if taken:
        raise ValueError(f"backbone {name!r}: preset / weights names already registered: {sorted(taken)}")
    backbone = Backbone(name=name, build=build, checkpoint_key_prefix=checkpoint_key_prefix, fuse=fuse,
                        presets=presets, weights=weights, bf16_keep_f32=tuple(bf16_keep_f32))
    _REGISTRY[name] = backbone
    return backbone


def _load_builtins() -> None:
    for name, module in _BUILTIN_MODULES.items():
        if name not in _REGISTRY:
            importlib.import_module(module)


def available_backbones() -> list[str]:
    """Names of the built-in and registered backbones (imports no backbone module)."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def get_backbone(name: str) -> Backbone:
    """The backbone registered as ``name``, importing its built-in module on first use."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}") from None


def registered_presets() -> dict[str, Any]:
    """Every registered preset by name (imports the built-in backbone modules; no torch)."""
    _load_builtins()
    return {p.name: p for b in _REGISTRY.values() for p in b.presets}


def registered_weights() -> dict[str, Any]:
    """Every registered public checkpoint by name (imports the built-in backbone modules; no torch)."""
    _load_builtins()
    return {w.name: w for b in _REGISTRY.values() for w in b.weights}


def bf16_keep_f32(name: str) -> tuple[str, ...]:
    """The ONNX node-name patterns OpenVINO bf16 keeps in f32 for backbone ``name``."""
    return get_backbone(name).bf16_keep_f32


def backbone_of_checkpoint(keys: Iterable[str]) -> str | None:
    """The backbone whose ``checkpoint_key_prefix`` starts one of the state_dict ``keys``
    (``None``: no backbone recognised). Imports every built-in backbone module."""
    keys = list(keys)
    for name in available_backbones():
        prefix = get_backbone(name).checkpoint_key_prefix
        if any(key.startswith(prefix) for key in keys):
            return name
    return None
