"""Given landmarks: a CSV of five points per photo, used instead of detection.

File format (``--landmarks FILE``), UTF-8, one photo per line::

    path,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4
    alice/001.jpg,38.3,51.7,73.5,51.5,56.0,71.7,41.5,92.4,70.7,92.2

* the header is exactly ``path,x0,y0,...,x4,y4``;
* ``path`` is relative to the job's ``--src`` (POSIX separators; ``./`` and repeated ``/`` are
  normalised; absolute paths and ``..`` are errors); a path may appear once;
* the points are in the project's order (left eye, right eye, nose, left mouth corner, right mouth
  corner; image left first), in pixels of the photo as the job decodes it (full size, EXIF
  orientation applied unless the job turns it off); finite numbers;
* blank lines are ignored; a field with a comma must be quoted (CSV rules).

Any other line is a :class:`LandmarksFileError` naming the file and the line. The points are kept
as float64 exactly as written, so that crops equal insightface's ``norm_crop`` of them.

A given face has no detection score and no detector box; the job records as its ``"box"`` the
square that its 112x112 ArcFace crop covers (:func:`box_from_landmarks`).
"""

from __future__ import annotations

import csv
import hashlib
import math
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.align import estimate_norm_batch, invert_affine, transform_points

__all__ = [
    "HEADER", "GivenLandmarks", "LandmarksFileError", "box_from_landmarks", "read_landmarks_csv", "unpack_points",
]

HEADER: tuple[str, ...] = ("path",) + tuple(f"{a}{i}" for i in range(5) for a in "xy")
"""The exact header of a landmarks CSV."""


class LandmarksFileError(ValueError):
    """A landmarks file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, eq=False)
class GivenLandmarks:
    """The five points of the photos a landmarks file lists.

    Attributes:
        source: the file read.
        paths: ``[N]`` relative paths, in file order.
        points: ``[N, 5, 2]`` float64 points (read-only).
        sha256: hex digest of the file's bytes (part of the job's resume fingerprint).
    """

    source: Path
    paths: tuple[str, ...]
    points: np.ndarray
    sha256: str
    _index: dict[str, int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, rel: object) -> bool:
        return rel in self._index

    def get(self, rel: str) -> np.ndarray | None:
        """``[5, 2]`` float64 points of ``rel``, or ``None`` when it is not listed."""
        i = self._index.get(rel)
        return None if i is None else self.points[i]

    def packed(self, rel: str) -> bytes:
        """The 80 bytes (10 float64, x0 y0 ... x4 y4) of ``rel``'s points, ``b""`` if not listed:
        how the job ships them along with the photo's name."""
        i = self._index.get(rel)
        return b"" if i is None else self.points[i].tobytes()

    def missing(self, listed: Iterable[str]) -> list[str]:
        """The paths of this file that are not in ``listed`` (sorted)."""
        present = set(listed)
        return sorted(p for p in self.paths if p not in present)


def unpack_points(data: bytes) -> np.ndarray | None:
    """Inverse of :meth:`GivenLandmarks.packed`: ``[5, 2]`` float64, or ``None`` for ``b""``."""
    if not data:
        return None
    if len(data) != 80:
        raise ValueError(f"packed landmarks must be 80 bytes, got {len(data)}")
    return np.frombuffer(data, np.float64).reshape(5, 2)


def _normalise(path: str) -> str | None:
    """``path`` as the job lists it, or ``None`` if it cannot name a file under ``src``."""
    if not path or path.startswith("/") or "\\" in path:
        return None
    norm = posixpath.normpath(path)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def read_landmarks_csv(path: str | Path) -> GivenLandmarks:
    """Read and validate a landmarks CSV (format: module docstring).

    Raises:
        LandmarksFileError: the file is unreadable, its header is not :data:`HEADER`, or a line
            has the wrong number of fields, an unusable path, a value that is not a finite
            number, or a path already listed; the message names the file and the line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LandmarksFileError(f"cannot read landmarks file {path}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig", errors="surrogateescape")  # names as os.fsdecode gives them
    except UnicodeDecodeError as e:  # pragma: no cover - surrogateescape accepts any bytes
        raise LandmarksFileError(f"{path}: not UTF-8 text ({e})") from e
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    paths: list[str] = []
    values: list[list[float]] = []
    index: dict[str, int] = {}

    def fail(line: int, why: str) -> LandmarksFileError:
        return LandmarksFileError(f"{path}, line {line}: {why}")

    header_seen = False
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if not header_seen:
                if tuple(f.strip() for f in fields) != HEADER:
                    raise fail(line, f"the header must be exactly {','.join(HEADER)!r}, got {','.join(fields)!r}")
                header_seen = True
                continue
            if len(fields) != len(HEADER):
                raise fail(line, f"expected {len(HEADER)} fields (path and 10 coordinates), got {len(fields)}")
            rel = _normalise(fields[0].strip())
            if rel is None:
                raise fail(line, f"path {fields[0]!r} is not a relative path inside --src")
            row = []
            for name, text_value in zip(HEADER[1:], fields[1:]):
                try:
                    v = float(text_value)
                except ValueError:
                    raise fail(line, f"{name} is not a number: {text_value.strip()!r}") from None
                if not math.isfinite(v):
                    raise fail(line, f"{name} is not finite: {text_value.strip()!r}")
                row.append(v)
            if rel in index:
                raise fail(line, f"{rel!r} is already listed (line {index[rel]})")
            index[rel] = line
            paths.append(rel)
            values.append(row)
    except csv.Error as e:
        raise fail(reader.line_num, f"not valid CSV ({e})") from None
    if not header_seen:
        raise LandmarksFileError(f"{path}: empty; expected the header {','.join(HEADER)!r}")
    points = np.asarray(values, dtype=np.float64).reshape(-1, 5, 2)
    points.setflags(write=False)
    return GivenLandmarks(source=path, paths=tuple(paths), points=points, sha256=hashlib.sha256(raw).hexdigest(),
                          _index={p: i for i, p in enumerate(paths)})


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The square, in photo pixels, that the 112x112 ArcFace crop of each face covers, axis-aligned
    (rotation ignored): centred on the photo point that lands on the crop's centre, with side
    ``112 / scale`` of the alignment similarity. What the job records as a given face's ``"box"``.

    Args:
        landmarks: ``[N, 5, 2]`` photo points.

    Returns:
        ``[N, 4]`` float64 x1 y1 x2 y2.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    m = estimate_norm_batch(lm, 112)
    centre = transform_points(np.array([[56.0, 56.0]]), invert_affine(m))[:, 0]   # [N, 2]
    half = 56.0 / np.hypot(m[:, 0, 0], m[:, 0, 1])
    return np.concatenate([centre - half[:, None], centre + half[:, None]], axis=1)
