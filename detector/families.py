"""The registry of detector families: a family module registers itself (:func:`register_family`).

A :class:`Family` names the runtimes it runs on, its default weights and its ``build`` (a resolved
:class:`~detector.spec.DetectorSpec` -> a :class:`~detector.api.FaceDetector`). :data:`FAMILIES`
imports the built-in family modules on its first look-up (RetinaFace: :mod:`detector.onnx_runtime`,
whose ``build`` imports the eager torch detector only for ``runtime="torch"``; SCRFD:
:mod:`detector.scrfd`); these modules import neither torch nor ``onnx``, so a process that runs
OpenVINO stays free of both. Adding a family: a module that calls :func:`register_family` when
imported, named in ``_BUILTIN_MODULES`` (or imported by the user before building specs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .registry import LazyDict

if TYPE_CHECKING:  # pragma: no cover
    from .api import FaceDetector
    from .spec import DetectorSpec

__all__ = ["FAMILIES", "Family", "register_family"]

# the modules that register the built-in families when imported
_BUILTIN_MODULES: tuple[str, ...] = ("detector.onnx_runtime", "detector.scrfd")


@dataclass(frozen=True, kw_only=True)
class Family:
    """A detector family: its name, the runtimes it runs on (the first is not a preference: see
    :meth:`detector.spec.DetectorSpec.resolved`), its default weights (a registry name or ``None``)
    and ``build(spec)``, called with a resolved spec of this family."""

    name: str
    runtimes: tuple[str, ...]
    build: Callable[[DetectorSpec], FaceDetector]
    default_weights: str | None = None


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family``; raises ``ValueError`` if its name is taken."""
    if family.name in _REGISTRY:
        raise ValueError(f"detector family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    dict.__setitem__(FAMILIES, family.name, family)  # visible even if FAMILIES was read before
    return family


def _load() -> dict[str, Family]:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


FAMILIES: dict[str, Family] = LazyDict(_load)
"""Every registered family by name (imports the built-in family modules on first use)."""
