"""Loading and saving RetinaFace weights (the registry and the resolver live in :mod:`detector.hub`).

Two file formats are understood:

* biubug6/Pytorch_Retinaface checkpoints: a bare ``state_dict`` (legacy or zip torch format,
  optionally ``module.``-prefixed from DataParallel, optionally wrapped in ``{"state_dict": ...}``).
  The architecture is inferred from the keys.
* our own checkpoints (:func:`save_checkpoint`): ``{"format": FORMAT, "config": ModelConfig dict,
  "state_dict": ..., ...}``, so the preprocessing constants travel with the weights.

Everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.fsio import atomic_path

from .backbones import backbone_of_checkpoint
from .config import ModelConfig, get_preset
from .hub import (  # re-exported (__all__): the resolver lives in the torch-free hub module
    CACHE_ENV,
    KNOWN_WEIGHTS,
    WEIGHTS_ENV,
    CheckpointError,
    KnownWeights,
    cache_dir,
    download,
    resolve_weights,
    sha256sum,
)
from .model import RetinaFace

__all__ = [
    "FORMAT",
    "CheckpointError",
    "KnownWeights",
    "KNOWN_WEIGHTS",
    "WEIGHTS_ENV",
    "CACHE_ENV",
    "cache_dir",
    "resolve_weights",
    "download",
    "read_checkpoint",
    "load_model",
    "save_checkpoint",
    "load_backbone_weights",
    "sha256sum",
]

FORMAT = "faceprep.retinaface/1"


# --------------------------------------------------------------------------------------------------
# reading


def _torch_load(path: Path) -> Any:
    from .onnx_models import _looks_like_torch  # no torch: the file's format markers

    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if not _looks_like_torch(path):  # not a torch file at all: say so, not what the unpickler guesses
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({path.stat().st_size} bytes; neither "
                              "torch's zip nor its legacy format)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:  # the unpickler raises anything from KeyError to UnpicklingError on junk
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({size} bytes; possibly truncated or not a "
            f"checkpoint): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_checkpoint(path: str | Path) -> tuple[ModelConfig | None, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file -> ``(config or None, state_dict, the rest of the file's dict)``."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict or checkpoint dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        config = ModelConfig.from_dict(obj["config"])
        extra = {k: v for k, v in obj.items() if k not in ("format", "config", "state_dict")}
        return config, dict(obj["state_dict"]), extra
    state = obj.get("state_dict", obj) if "state_dict" in obj else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found (keys: {list(obj)[:8]})")
    return None, _strip_prefix(state, "module."), {}


def _check_keys(model: nn.Module, state: Mapping[str, Any], path: Path, config: ModelConfig) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    looks = backbone_of_checkpoint(state)
    hint = f"the file looks like a {looks} RetinaFace" if looks else "the file does not look like a RetinaFace"
    if looks is not None and looks != config.backbone:  # the usual mistake: the wrong --preset
        hint += f": pass --preset {looks} or leave the preset unset"

    def _list(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")

    parts = [f"{path}: weights do not fit the {config.name!r} model ({config.backbone} backbone); {hint}."]
    if missing:
        parts.append(f"missing keys: {_list(missing)}.")
    if unexpected:
        parts.append(f"unexpected keys: {_list(unexpected)}.")
    if mismatched:
        parts.append(f"shape mismatches: {_list(mismatched)}.")
    raise CheckpointError(" ".join(parts))


def load_model(weights: str | Path | None = None, *, preset: str | ModelConfig | None = None,
               device: str | torch.device = "cpu") -> RetinaFace:
    """Build a :class:`RetinaFace` and load ``weights`` strictly, in eval mode.

    The architecture comes from, in order: ``preset`` if given; the config stored in our own
    checkpoints; the backbone recognised from biubug6 keys.
    """
    path = resolve_weights(weights)
    stored, state, _ = read_checkpoint(path)
    if isinstance(preset, ModelConfig):
        config = preset
    elif preset is not None:
        config = get_preset(preset)
    elif stored is not None:
        config = stored
    else:
        guess = backbone_of_checkpoint(state)  # a bare checkpoint loads as the preset named like its backbone
        if guess is None:
            raise CheckpointError(
                f"{path}: cannot tell the architecture from its keys (first: {list(state)[:3]}); pass preset="
            )
        config = get_preset(guess)
    model = RetinaFace(config)
    _check_keys(model, state, path, config)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def save_checkpoint(path: str | Path, model: RetinaFace, **extra: Any) -> Path:
    """Write ``model`` with its config (and ``extra`` entries, e.g. training state) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model
    payload = {
        "format": FORMAT,
        "config": module.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_backbone_weights(model: RetinaFace, path: str | Path) -> list[str]:
    """Initialise ``model.body`` from an ImageNet backbone checkpoint (e.g. biubug6's
    ``mobilenetV1X0.25_pretrain.tar``: ``{"state_dict": {"module.stage1...": ...}}``).

    Classifier keys (``fc.*``) are ignored. Returns the ignored keys; raises if a backbone
    parameter is missing or misshapen.
    """
    path = Path(path)
    _, state, _ = read_checkpoint(path)
    state = _strip_prefix(state, "body.")
    body = model.body.state_dict()
    missing = [k for k in body if k not in state]
    bad = [k for k in body if k in state and state[k].shape != body[k].shape]
    if missing or bad:
        raise CheckpointError(
            f"{path}: not a {model.config.backbone} backbone checkpoint; missing {missing[:5]} "
            f"({len(missing)}), shape mismatches {bad[:5]} ({len(bad)})"
        )
    model.body.load_state_dict({k: state[k] for k in body}, strict=True)
    return [k for k in state if k not in body]

