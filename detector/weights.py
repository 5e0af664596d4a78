"""Loading and saving RetinaFace weights; a registry of public checkpoints and a resolver.

Two file formats are understood:

* biubug6/Pytorch_Retinaface checkpoints: a bare ``state_dict`` (legacy or zip torch format,
  optionally ``module.``-prefixed from DataParallel, optionally wrapped in ``{"state_dict": ...}``).
  The architecture is inferred from the keys.
* our own checkpoints (:func:`save_checkpoint`): ``{"format": FORMAT, "config": ModelConfig dict,
  "state_dict": ..., ...}``, so the preprocessing constants travel with the weights.

Everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import ModelConfig, get_preset
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
WEIGHTS_ENV = "FACEPREP_WEIGHTS"  # a file, or a folder holding known checkpoint files
CACHE_ENV = "FACEPREP_CACHE"


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


@dataclass(frozen=True)
class KnownWeights:
    name: str
    preset: str
    filename: str
    url: str
    sha256: str | None  # None: no published hash; the download is not verified


KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    w.name: w
    for w in (
        KnownWeights(
            name="mobilenet0.25",
            preset="mobilenet0.25",
            filename="retinaface_mobilenet0.25_biubug6.pth",
            url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
            sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        ),
        KnownWeights(
            name="resnet50",
            preset="resnet50",
            filename="retinaface_resnet50_biubug6.pth",
            url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
            sha256=None,
        ),
    )
}


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "faceprep"


def sha256sum(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None, progress: bool = True,
             timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file, hash check, rename)."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            h = hashlib.sha256()
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                      disable=not progress) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if sha256 is not None and h.hexdigest() != sha256:
            raise CheckpointError(
                f"sha256 mismatch for {url}: got {h.hexdigest()}, expected {sha256}; file discarded"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _where_to_put(known: KnownWeights) -> str:
    return (
        f"put {known.filename} (from {known.url}) in {cache_dir()}, or set {WEIGHTS_ENV} to the file "
        f"or to a folder holding it, or pass the path explicitly"
    )


def resolve_weights(name_or_path: str | Path | None = None, *, allow_download: bool = True,
                    progress: bool = True) -> Path:
    """Find a weights file: explicit path > ``$FACEPREP_WEIGHTS`` > local cache > download.

    ``name_or_path`` is a file path or a registry name (``"mobilenet0.25"``, ``"resnet50"``);
    ``None`` means the default ``"mobilenet0.25"``.
    """
    if name_or_path is not None and (Path(name_or_path).exists() or str(name_or_path) not in KNOWN_WEIGHTS):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            looks_like_path = path.suffix or os.sep in str(name_or_path)
            if looks_like_path:
                raise CheckpointError(f"weights file not found: {path}")
            raise CheckpointError(
                f"{str(name_or_path)!r} is neither a file nor a known checkpoint; known: "
                f"{', '.join(sorted(KNOWN_WEIGHTS))}"
            )
        return path
    known = KNOWN_WEIGHTS[str(name_or_path or "mobilenet0.25")]
    name = known.name
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        if (p / known.filename).is_file():
            return p / known.filename
    cached = cache_dir() / known.filename
    if cached.is_file():
        return cached
    if not allow_download:
        raise CheckpointError(f"weights {name!r} not found locally; {_where_to_put(known)}")
    try:
        return download(known.url, cached, sha256=known.sha256, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise CheckpointError(f"could not download weights {name!r} ({exc}); {_where_to_put(known)}") from exc


# --------------------------------------------------------------------------------------------------
# reading


def _torch_load(path: Path) -> Any:
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


def _guess_backbone(state: Mapping[str, Any]) -> str | None:
    if any(k.startswith("body.stage1.") for k in state):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1.") for k in state):
        return "resnet50"
    return None


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
    looks = _guess_backbone(state)
    hint = f"the file looks like a {looks} RetinaFace" if looks else "the file does not look like a RetinaFace"

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
        guess = _guess_backbone(state)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
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

