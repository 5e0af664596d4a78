"""The report's statistics (see :mod:`pipeline.report`): the measures of a face, fixed-bin streaming
histograms, seeded reservoir samples, and what kind of problem a record is. No HTML here."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.records import STATUS_ERROR, STATUS_FILTERED, STATUS_NO_FACE, FaceRecord, PhotoRecord
from pipeline.writers import identity_of

__all__ = [
    "MEASURES", "NO_FOLDER", "OUTLIER", "PROBLEM_KINDS", "Histogram", "MeasureSpec", "Reservoir", "face_measures",
    "identity_name", "number", "problem_kinds", "problem_reason",
]

OUTLIER = "identity_outlier"
PROBLEM_KINDS = (STATUS_NO_FACE, STATUS_ERROR, STATUS_FILTERED, OUTLIER)
"""The kinds of problem photo, in display order: three statuses and the identity outliers."""
NO_FOLDER = "(top level)"
"""Contact-sheet name of the photos directly in ``src`` (no identity folder)."""




@dataclass(frozen=True)
class MeasureSpec:
    """One histogram: ``edges`` are fixed (streaming), values outside go to the end bins."""

    key: str
    title: str
    edges: tuple[float, ...]
    log_scale: bool = False
    per_face: bool = True


def _linear(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step))
    return tuple(round(lo + i * step, 6) for i in range(n + 1))


def _geometric(lo: float, hi: float, per_octave: int = 2) -> tuple[float, ...]:
    n = int(round(math.log2(hi / lo) * per_octave))
    return tuple(round(lo * 2 ** (i / per_octave), 3) for i in range(n + 1))


MEASURES: tuple[MeasureSpec, ...] = (
    MeasureSpec("score", "detector score", _linear(0.0, 1.0, 0.05)),
    MeasureSpec("box_size", "box size (px, sqrt of area)", _geometric(4, 4096), log_scale=True),
    MeasureSpec("eye_distance", "eye distance (px)", _geometric(1, 1024), log_scale=True),
    MeasureSpec("yaw", "yaw (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("pitch", "pitch (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("roll", "roll (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("sharpness", "sharpness of the crop", _geometric(1, 65536), log_scale=True),
    MeasureSpec("brightness", "brightness of the crop (0-255)", _linear(0, 256, 8)),
    MeasureSpec("faces", "faces per photo", _linear(0, 11, 1), per_face=False),
    MeasureSpec("identity_distance", "cosine distance to the identity centre", _linear(0.0, 2.0, 0.05),
                per_face=False),
)
"""The histograms, in display order (``per_face``: one value per candidate face, else per photo)."""




def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def face_measures(face: FaceRecord | Mapping[str, Any]) -> dict[str, float]:
    """The per-face measures of one manifest face: ``score`` (absent for given landmarks), every
    numeric field of ``quality``, and, when ``quality`` lacks them, ``box_size`` (sqrt of the box
    area) from ``box`` and ``eye_distance`` (pixels between the two eyes) from ``landmarks``.
    A mapping is read as :meth:`pipeline.records.FaceRecord.from_json`."""
    if not isinstance(face, FaceRecord):
        face = FaceRecord.from_json(face)
    out: dict[str, float] = {}
    score = number(face.score)
    if score is not None:
        out["score"] = score
    for key, value in (face.quality or {}).items():
        if (v := number(value)) is not None:
            out[key] = v
    if "box_size" not in out and face.box is not None:
        w, h = face.box[2] - face.box[0], face.box[3] - face.box[1]
        out["box_size"] = math.sqrt(max(w, 0.0) * max(h, 0.0))
    lm = face.landmarks
    if "eye_distance" not in out and len(lm) >= 2:
        out["eye_distance"] = math.hypot(lm[1][0] - lm[0][0], lm[1][1] - lm[0][1])
    return out


class Histogram:
    """Streaming counts over fixed bins: every value (``all``) and the selected faces' (``selected``)."""

    def __init__(self, spec: MeasureSpec) -> None:
        self.spec = spec
        bins = len(spec.edges) - 1
        self.all = [0] * bins
        self.selected = [0] * bins
        self.n = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def bin_of(self, value: float) -> int:
        """Index of the bin ``[edges[i], edges[i+1])`` holding ``value``, clamped to the end bins."""
        i = bisect.bisect_right(self.spec.edges, value) - 1
        return 0 if i < 0 else i if i < len(self.all) else len(self.all) - 1

    def add(self, value: float, *, selected: bool = False) -> None:
        i = self.bin_of(value)
        self.all[i] += 1
        if selected:
            self.selected[i] += 1
        self.n += 1
        self.total += value
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan


class Reservoir:
    """A uniform random sample of at most ``k`` items of a stream (Vitter's algorithm R), seeded."""

    def __init__(self, k: int, *, seed: str) -> None:
        self.k = k
        self.items: list[Any] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
        elif self.k:
            j = self._rng.randrange(self.seen)
            if j < self.k:
                self.items[j] = item




# ------------------------------------------------------------------------------ a record's problems


def identity_name(record: PhotoRecord) -> str:
    """The record's identity (the identity pass's, else its top-level folder), or :data:`NO_FOLDER`."""
    if record.identity:
        return record.identity
    return identity_of(record.src) or NO_FOLDER


def problem_kinds(record: PhotoRecord) -> list[str]:
    """The :data:`PROBLEM_KINDS` the record belongs to (its status, and/or an identity outlier)."""
    kinds = [record.status] if record.status in (STATUS_NO_FACE, STATUS_ERROR, STATUS_FILTERED) else []
    if record.identity_outlier is True:
        kinds.append(OUTLIER)
    return kinds


def problem_reason(record: PhotoRecord, kind: str) -> str:
    """One line: why the record is a problem of ``kind``."""
    if kind == STATUS_ERROR:
        return record.error or "error"
    if kind == STATUS_FILTERED:
        return record.filtered or "filtered"
    if kind == STATUS_NO_FACE:
        n = len(record.faces)
        return "no face detected" if not n else f"no face selected ({n} detection{'s' if n > 1 else ''})"
    d = number(record.identity_distance)
    return f"distance {d:.3f} to the centre of {identity_name(record)}" if d is not None else "identity outlier"
