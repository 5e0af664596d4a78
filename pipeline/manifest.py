"""The JSONL manifest of the align job: one record per processed input, append-only, crash-safe.

A record is appended only after its outputs are in place. A kill can leave at most one partial
last line; readers ignore lines without their newline and :class:`ManifestWriter` truncates such a
tail before appending. A later record for the same input supersedes earlier ones;
:func:`compact_manifest` rewrites the file (atomically) with exactly one record per input.
A line is one :class:`pipeline.records.PhotoRecord` (:func:`iter_records`); :func:`iter_manifest`
gives the raw JSON objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from common.fsio import temp_path
from pipeline.records import STATUS_ERROR, PhotoRecord, RecordError

__all__ = ["ManifestWriter", "compact_manifest", "iter_manifest", "iter_records", "load_manifest", "outputs_complete"]


def outputs_complete(dst: str | os.PathLike, record: PhotoRecord | Mapping[str, Any]) -> bool:
    """True when every output the record lists exists as a non-empty file under ``dst``.

    An output ``FILE#MEMBER`` (a sample inside a shard, see :mod:`pipeline.writers`) needs ``FILE``."""
    outputs = record.outputs if isinstance(record, PhotoRecord) else record.get("outputs") or ()
    for rel in outputs:
        try:
            if os.stat(Path(dst, rel.partition("#")[0])).st_size <= 0:
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

    def append(self, record: PhotoRecord | Mapping[str, Any] | str) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[PhotoRecord | Mapping[str, Any] | str]) -> None:
        lines = []
        for record in records:
            if isinstance(record, PhotoRecord):
                line = record.to_json()
            else:
                line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
            if "\n" in line:
                raise ValueError("a manifest record must be a single line")
            lines.append(line + "\n")
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        view = memoryview(data)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while view:  # a regular-file write is complete unless interrupted; loop to be safe
                n = os.write(self._fd, view)
                view = view[n:]
            if self.durable:
                os.fsync(self._fd)
        except OSError:  # e.g. a full disk: leave no torn record behind
            os.ftruncate(self._fd, start)
            raise

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


def iter_records(path: str | os.PathLike) -> Iterator[PhotoRecord]:
    """Complete records in file order, typed. A line with a ``src`` but a field of the wrong type
    reads as an ``error`` record of that ``src`` (it still supersedes the earlier ones; the input
    is redone)."""
    for _offset, record in _iter_lines(Path(path)):
        try:
            yield PhotoRecord.from_dict(record)
        except RecordError as e:
            if record["src"]:
                yield PhotoRecord(src=record["src"], status=STATUS_ERROR,
                                  error=f"unreadable manifest record: {e}")


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
    tmp = temp_path(path)
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
