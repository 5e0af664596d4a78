"""The backbone registry: one module per backbone, looked up by ``ModelConfig.backbone``.

A registered :class:`Backbone` gives:

* ``build(config) -> nn.Module``: the trunk for a :class:`detector.config.ModelConfig`;
  ``forward(x: Tensor[B, 3, H, W])`` returns one feature map per ``config.return_layers`` entry,
  shallowest first, with ``config.in_channels`` channels. :class:`detector.model.RetinaFace` keeps
  it as ``body``, so its parameter names are the checkpoints' ``body.*`` keys (biubug6's names for
  the built-in backbones: change them and the public checkpoints no longer load).
* ``checkpoint_key_prefix``: a state_dict key prefix only RetinaFace checkpoints with this backbone
  have; how a bare biubug6 ``.pth`` (no stored config) tells its architecture.
* ``fuse(body)`` (optional): folds, in place, the Conv2d -> BatchNorm2d pairs of the trunk that are
  not ``Sequential(conv, bn, ...)`` blocks (:func:`detector.model.fuse_conv_bn` folds those).

This module does not import torch: the built-in backbones are listed by name and their modules are
imported by the first :func:`get_backbone`, so :mod:`detector.config` validates names without
torch. Adding a backbone: a module here that calls :func:`register_backbone` when imported, its name
in ``_BUILTIN_MODULES``, and a model preset in :mod:`detector.config` (named like the backbone if
bare checkpoints should load without ``preset=``). Code outside the package may instead call
:func:`register_backbone` itself before building configs that name the backbone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from detector.config import ModelConfig

__all__ = [
    "Backbone",
    "available_backbones",
    "backbone_of_checkpoint",
    "get_backbone",
    "register_backbone",
]

# Built-in backbones: name -> the module that registers it on import.
_BUILTIN_MODULES: dict[str, str] = {
    "mobilenet0.25": "detector.backbones.mobilenet",
    "resnet50": "detector.backbones.resnet",
}

@dataclass(frozen=True, slots=True, kw_only=True)
class Backbone:
    """A registered backbone (see the module docstring for the contract of each field)."""

    name: str
    build: Callable[[ModelConfig], nn.Module]
    checkpoint_key_prefix: str
    fuse: Callable[[nn.Module], None] | None = None


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(
    name: str,
    *,
    build: Callable[[ModelConfig], nn.Module],
    checkpoint_key_prefix: str,
    fuse: Callable[[nn.Module], None] | None = None,
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
    backbone = Backbone(name=name, build=build, checkpoint_key_prefix=checkpoint_key_prefix, fuse=fuse)
    _REGISTRY[name] = backbone
    return backbone


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


def backbone_of_checkpoint(keys: Iterable[str]) -> str | None:
    """The backbone whose ``checkpoint_key_prefix`` starts one of the state_dict ``keys``
    (``None``: no backbone recognised). Imports every built-in backbone module."""
    keys = list(keys)
    for name in available_backbones():
        prefix = get_backbone(name).checkpoint_key_prefix
        if any(key.startswith(prefix) for key in keys):
            return name
    return None
