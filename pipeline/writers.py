"""Crash-safe outputs: atomic file writes, the output-tree layout, and the JSONL manifest.

The invariants the align job relies on:

* An output file is only ever visible complete: it is written under a temporary name in the
  same folder and ``os.replace``-d onto its final name. A killed writer leaves at most a
  temporary file, which :func:`remove_temporaries` deletes on the next run.
* The manifest is append-only JSONL, one record per processed input, appended only after the
  record's outputs are in place. A kill can leave at most one partial last line; readers ignore
  lines without their newline and :class:`ManifestWriter` truncates such a tail before appending.
  A later record for the same input supersedes earlier ones; :func:`compact_manifest` rewrites
  the file (atomically) with exactly one record per input.

``os.replace`` is atomic against process death. Pass ``durable=True`` to also ``fsync`` data and
folder so outputs survive a power loss (slower on most file systems).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "TEMP_MARKER",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_temporaries",
    "OutputLayout",
    "ManifestWriter",
    "iter_manifest",
    "load_manifest",
    "compact_manifest",
    "outputs_complete",
]

TEMP_MARKER = ".faceprep-tmp-"
"""Substring of every temporary file name this module creates (``.<name>.faceprep-tmp-<hex>``)."""


def _temp_path(path: Path) -> Path:
    # the name is cut so that a final name near the 255-byte limit still has a temporary name
    return path.with_name(f".{path.name[:120]}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
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


@dataclass(frozen=True)
class OutputLayout:
    """Maps a source file's relative path to its output path(s) under ``dst``.

    ``a/b.png`` -> stem ``a/b`` -> ``a/b.jpg`` (one face) or ``a/b_0.jpg``, ``a/b_1.jpg``...
    (``per_face``). Inputs whose stems would collide (``a/b.png`` and ``a/b.jpg``, found by
    :meth:`colliding`) keep their extension in the stem (``stem_of(rel, keep_suffix=True)``):
    ``a/b.png.jpg`` and ``a/b.jpg.jpg``.
    """

    ext: str = "jpg"
    per_face: bool = False

    def __post_init__(self) -> None:
        if not self.ext or "/" in self.ext or self.ext.startswith("."):
            raise ValueError(f"ext must be a bare extension like 'jpg', got {self.ext!r}")

    @staticmethod
    def stem_of(rel: str, *, keep_suffix: bool = False) -> str:
        p = PurePosixPath(rel)
        return str(p) if keep_suffix else str(p.with_suffix(""))

    @staticmethod
    def colliding(rels: Iterable[str]) -> set[str]:
        """The relative paths whose suffix-less stems collide with another input's."""
        by_stem: dict[str, list[str]] = {}
        for rel in rels:
            by_stem.setdefault(OutputLayout.stem_of(rel), []).append(rel)
        return {r for group in by_stem.values() if len(group) > 1 for r in group}

    def outputs(self, stem: str, num_crops: int) -> list[str]:
        """Relative output paths for ``num_crops`` crops of the input with output stem ``stem``."""
        if self.per_face:
            return [f"{stem}_{i}.{self.ext}" for i in range(num_crops)]
        if num_crops > 1:
            raise ValueError("one output per input unless per_face")
        return [f"{stem}.{self.ext}"] * num_crops


def outputs_complete(dst: str | os.PathLike, record: Mapping[str, Any]) -> bool:
    """True when every output the record lists exists as a non-empty file under ``dst``."""
    for rel in record.get("outputs") or ():
        try:
            if os.stat(Path(dst, rel)).st_size <= 0:
                return False
        except OSError:
            return False
    return True


class ManifestWriter:
    """Append-only JSONL writer; each record is written with one ``write`` call and flushed."""

    def __init__(self, path: str | os.PathLike, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._drop_partial_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _drop_partial_tail(self) -> None:
        """Cut an unterminated last line (a writer killed mid-line) so appends start clean."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size
            step = 1 << 16
            while pos > 0:  # find the last newline, scanning backwards
                start = max(0, pos - step)
                f.seek(start)
                chunk = f.read(pos - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                pos = start
            f.truncate(0)

    def append(self, record: Mapping[str, Any] | str) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[Mapping[str, Any] | str]) -> None:
        lines = []
        for record in records:
            line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
            if "\n" in line:
                raise ValueError("a manifest record must be a single line")
            lines.append(line + "\n")
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        view = memoryview(data)
        while view:  # a regular-file write is complete unless interrupted; loop to be safe
            n = os.write(self._fd, view)
            view = view[n:]
        if self.durable:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) of complete, parseable lines; a torn last line or garbage is skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        offset = 0
        for raw in f:
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                break  # torn tail of a killed writer
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("src"), str):
                yield start, record


def iter_manifest(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Complete records in file order (later records for the same ``src`` supersede earlier)."""
    for _offset, record in _iter_lines(Path(path)):
        yield record


def load_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The last record of each input (keyed by ``src``). Holds every record: for big manifests
    prefer :func:`iter_manifest`."""
    return {record["src"]: record for record in iter_manifest(path)}


def compact_manifest(path: str | os.PathLike, *, keep: Iterable[str] | None = None) -> int:
    """Rewrite the manifest with one record per input (the latest), sorted by ``src``.

    ``keep`` restricts the result to those inputs (e.g. the files that still exist). Memory is one
    offset per input, not the records. Atomic: a kill during compaction leaves the previous file.
    Returns the number of records written.
    """
    path = Path(path)
    last: dict[str, int] = {}
    for offset, record in _iter_lines(path):
        last[record["src"]] = offset
    if keep is not None:
        wanted = set(keep)
        last = {src: off for src, off in last.items() if src in wanted}
    tmp = _temp_path(path)
    try:
        with open(path, "rb") as src_file, open(tmp, "wb") as out:
            for src in sorted(last):
                src_file.seek(last[src])
                out.write(src_file.readline())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(last)
