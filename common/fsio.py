"""Crash-safe file writes: a file is only ever visible complete.

Everything the project writes for a user (crops, manifests, checkpoints, exported models, JSON
results) goes through here: the data is written under a temporary name in the destination's
folder and ``os.replace``-d onto its final name. A killed writer leaves at most a temporary file
(its name holds :data:`TEMP_MARKER`), which :func:`remove_temporaries` deletes on the next run.
``durable=True`` also ``fsync``-s data and folder, so the file survives a power loss.
:func:`sha256_file` is the project's one file hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_MARKER", "atomic_path", "atomic_write_bytes", "atomic_write_text", "remove_temporaries",
           "sha256_file", "temp_path"]

TEMP_MARKER = ".faceprep-tmp-"
"""Substring of every temporary file name this module creates (``.<name>.faceprep-tmp-<hex>``)."""


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (unique per call)."""
    path = Path(path)
    # the name is cut so that a final name near the 255-byte limit still has a temporary name
    return path.with_name(f".{path.name[:120]}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that writes files itself
    (``torch.save``, ``onnx.save``, a tar writer); on success it replaces ``path``, on any error
    it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """UTF-8; file names that are not UTF-8 (surrogate escapes) are written back as their bytes."""
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"), durable=durable)


def remove_temporaries(root: str | os.PathLike) -> int:
    """Delete temporary files left under ``root`` by killed writers; returns how many."""
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if TEMP_MARKER in name:
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read ``chunk`` bytes at a time (the one file hash of the
    project: weights, landmark files, recognisers). Raises ``OSError`` when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
