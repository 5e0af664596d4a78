"""The registry of public RetinaFace checkpoints and the weights resolver (no torch needed).

:func:`resolve_weights` finds a file: an explicit path, ``$FACEPREP_WEIGHTS``, the cache
(``$FACEPREP_CACHE``, default ``~/.cache/faceprep``), else a download (progress bar, sha256
checked, atomic). Loading the file is :mod:`detector.weights`' job; this module stays light so
that command lines and job drivers can check for weights without importing torch.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.fsio import atomic_path

from .registry import LazyDict

__all__ = [
    "CACHE_ENV",
    "CheckpointError",
    "KNOWN_WEIGHTS",
    "KnownWeights",
    "WEIGHTS_ENV",
    "cache_dir",
    "download",
    "resolve_weights",
    "sha256sum",
]

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


def _registered_weights() -> dict[str, KnownWeights]:
    from .backbones import registered_weights

    return registered_weights()


KNOWN_WEIGHTS: dict[str, KnownWeights] = LazyDict(_registered_weights)
"""Public checkpoints by name, registered by the backbone modules (:mod:`detector.backbones`)."""


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
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
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
    return dest


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
