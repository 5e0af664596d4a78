"""Storage of the identity pass (see :mod:`pipeline.job.identity`): :class:`EmbeddingStore` (the
committed parts under ``dst/.embeddings`` and their concatenation into ``dst/embeddings.npy`` +
``dst/embeddings_index.jsonl``) and :class:`IdentityTable` (which photo owns which rows)."""

from __future__ import annotations

import json
import os
import re
import shutil
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_path, atomic_write_text
from pipeline.job.config import JobConfigError
from pipeline.records import CENTRES_NAME, EMBEDDINGS_INDEX_NAME, EMBEDDINGS_NAME, EMBEDDINGS_PARTS_DIR
from pipeline.writers import identity_of

__all__ = ["PARTS_DIR", "EmbeddingStore", "IdentityTable"]

PARTS_DIR = EMBEDDINGS_PARTS_DIR
_STATE_NAME = "consolidated.json"
_PART_RE = re.compile(r"^part-(\d{6,})\.(npy|jsonl)$")


class EmbeddingStore:
    """The committed parts of the embedding pass under ``dst/.embeddings`` (see the module
    docstring), and their concatenation into ``dst/embeddings.npy`` / ``embeddings_index.jsonl``."""

    def __init__(self, dst: Path, *, durable: bool = False) -> None:
        self.dst = Path(dst)
        self.folder = self.dst / PARTS_DIR
        self.durable = durable

    def reset(self) -> None:
        """Forget every part and the concatenated files (``--overwrite``)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for name in (EMBEDDINGS_NAME, EMBEDDINGS_INDEX_NAME, CENTRES_NAME):
            (self.dst / name).unlink(missing_ok=True)

    def _numbers(self) -> tuple[list[int], int]:
        """Committed part numbers (sorted) and the next free number; drops uncommitted ``.npy``."""
        if not self.folder.is_dir():
            return [], 0
        found: dict[int, set[str]] = {}
        for name in os.listdir(self.folder):
            m = _PART_RE.match(name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
        committed = sorted(n for n, kinds in found.items() if kinds == {"npy", "jsonl"})
        for n, kinds in found.items():
            if kinds == {"npy"}:  # killed between the two writes: never committed
                self._path(n, "npy").unlink(missing_ok=True)
        return committed, max(found, default=-1) + 1

    def _path(self, number: int, kind: str) -> Path:
        return self.folder / f"part-{number:06d}.{kind}"

    def parts(self) -> list[int]:
        return self._numbers()[0]

    def iter_photos(self, number: int) -> Iterable[dict[str, Any]]:
        with open(self._path(number, "jsonl"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def done_sources(self) -> set[str]:
        return {photo["src"] for n in self.parts() for photo in self.iter_photos(n)}

    def write_part(self, photos: list[dict[str, Any]], embeddings: np.ndarray) -> int:
        """Commit one part: ``photos`` (``src``, ``faces``) and their ``[rows, D]`` embeddings."""
        rows = sum(len(p["faces"]) for p in photos)
        if embeddings.shape[0] != rows:
            raise ValueError(f"{rows} faces listed but {embeddings.shape[0]} embeddings")
        self.folder.mkdir(parents=True, exist_ok=True)
        number = self._numbers()[1]
        with atomic_path(self._path(number, "npy"), durable=self.durable) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, np.float32))
        text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in photos)
        atomic_write_text(self._path(number, "jsonl"), text, durable=self.durable)
        return number

    def load(self, number: int) -> np.ndarray:
        return np.load(self._path(number, "npy"), mmap_mode="r")

    def concatenate(self) -> IdentityTable:
        """Read every committed part's index (not its embeddings) and bring ``dst/embeddings.npy``
        and ``dst/embeddings_index.jsonl`` up to date (rewritten only when parts were added)."""
        numbers = self.parts()
        table = IdentityTable(self)
        dims = set()
        for n in numbers:
            array = self.load(n)
            if array.shape[0]:
                dims.add(int(array.shape[1]))
            for photo in self.iter_photos(n):
                table.add(photo["src"], photo["faces"])
            table.part_rows.append((n, int(array.shape[0])))
        if len(dims) > 1:
            raise JobConfigError(f"{self.folder} holds embeddings of several sizes {sorted(dims)}; rerun with "
                                 "--overwrite")
        table.dim = dims.pop() if dims else 0
        state = {"parts": numbers, "rows": table.rows, "dim": table.dim}
        state_path = self.folder / _STATE_NAME
        try:
            current = json.loads(state_path.read_text(encoding="utf-8")) == state
        except (OSError, ValueError):
            current = False
        if not (current and (self.dst / EMBEDDINGS_NAME).is_file() and (self.dst / EMBEDDINGS_INDEX_NAME).is_file()):
            self._write_concatenation(table)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(state_path, json.dumps(state) + "\n", durable=self.durable)
        return table

    def _write_concatenation(self, table: IdentityTable) -> None:
        with atomic_path(self.dst / EMBEDDINGS_NAME, durable=self.durable) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(table.rows, table.dim))
            start = 0
            for n, rows in table.part_rows:
                if rows:
                    out[start:start + rows] = self.load(n)
                start += rows
            out.flush()
            del out
        with atomic_path(self.dst / EMBEDDINGS_INDEX_NAME, durable=self.durable) as tmp, \
                open(tmp, "w", encoding="utf-8") as f:
            starts, counts, faces = table.photo_start, table.photo_count, table.row_face
            for p, src in enumerate(table.sources):
                first, identity = int(starts[p]), identity_of(src)
                for row in range(first, first + int(counts[p])):
                    f.write(json.dumps({"row": row, "src": src, "face": int(faces[row]), "identity": identity},
                                       ensure_ascii=False) + "\n")


class IdentityTable:
    """Every embedded photo of the store: its rows in ``dst/embeddings.npy``, face indices and
    boxes (``O(photos + faces)`` small numbers in the driver, never the embeddings)."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self.sources: list[str] = []
        self._start = array("q")  # per photo: its first row
        self._count = array("i")  # per photo: its faces
        self._faces = array("i")  # per row: the face's index in the photo's detections
        self._boxes = array("f")  # per row: x1 y1 x2 y2
        self.part_rows: list[tuple[int, int]] = []
        self.dim = 0
        self.info: dict[str, str] = {}
        self.centres: dict[str, dict[str, Any]] = {}

    def add(self, src: str, faces: list[list[float]]) -> None:
        self.sources.append(src)
        self._start.append(len(self._faces))
        self._count.append(len(faces))
        for face in faces:
            self._faces.append(int(face[0]))
            self._boxes.extend(float(v) for v in face[1:5])

    @property
    def rows(self) -> int:
        return len(self._faces)

    @property
    def photo_start(self) -> np.ndarray:
        """``[photos]`` int64: each photo's first row."""
        return np.array(self._start, dtype=np.int64)

    @property
    def photo_count(self) -> np.ndarray:
        """``[photos]`` int64: each photo's faces (rows)."""
        return np.array(self._count, dtype=np.int64)

    @property
    def row_face(self) -> np.ndarray:
        """``[rows]`` int64: each row's face index in its photo's detections."""
        return np.array(self._faces, dtype=np.int64)

    def photo_of_row(self, row: int) -> int:
        """The photo (index into :attr:`sources`) that owns ``row``."""
        return int(np.searchsorted(self.photo_start, row, side="right") - 1)

    def row_box(self, row: int) -> tuple[float, float, float, float]:
        """``row``'s face box ``x1 y1 x2 y2`` (float32 values)."""
        return tuple(self._boxes[4 * row:4 * row + 4])

    def face_of_row(self, row: int) -> int:
        """``row``'s face index in its photo's detections."""
        return int(self._faces[row])
