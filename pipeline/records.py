"""The align job's record: what one line of ``dst/manifest.jsonl`` holds, the status values, and
the names of the files the job keeps in ``dst``.

A manifest line is one :class:`PhotoRecord` as JSON (keys in this order; the optional ones only
when set)::

    {"src": "a/1.jpg", "status": "ok", "error": "", "outputs": ["a/1.jpg"],
     "faces": [{"box": [x1, y1, x2, y2], "score": 0.99, "landmarks": [[x, y] * 5], "quality": {...}}],
     "selected": [0], "height": 480, "width": 640,
     "landmarks": "detected", "filtered": "...",
     "identity": "a", "identity_distance": 0.21, "identity_outlier": false, "embedding_row": 7}

``PhotoRecord.from_json(line).to_json() == line`` for every line the job writes, and older
manifests (without ``landmarks``, ``quality``, ``filtered`` or the identity fields) still read.
No torch, no numpy: the driver, the Ray write tasks and the report all import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.fsio import sha256_file

__all__ = [
    "CENTRES_NAME", "DONE_STATUSES", "EMBEDDINGS_INDEX_NAME", "EMBEDDINGS_NAME", "EMBEDDINGS_PARTS_DIR",
    "IDENTITIES_NAME", "JOB_NAME", "LOCK_NAME", "MANIFEST_NAME", "REPORT_FILES_NAME", "REPORT_NAME", "STATUSES",
    "STATUS_ERROR", "STATUS_FILTERED", "STATUS_NO_FACE", "STATUS_OK", "SUMMARY_NAME", "FaceRecord", "PhotoRecord",
    "RecordError", "sha256_file",
]

# ------------------------------------------------------------------------------ statuses

STATUS_OK = "ok"
"""At least one face was selected and cropped."""
STATUS_NO_FACE = "no_face"
"""No face was detected, or none was eligible (score, size)."""
STATUS_FILTERED = "filtered"
"""Faces were found, but every one failed the quality filter (the record's ``filtered`` says why)."""
STATUS_ERROR = "error"
"""The photo could not be read, detected or aligned (the record's ``error`` says why); retried by
the next run."""
STATUSES = (STATUS_OK, STATUS_NO_FACE, STATUS_FILTERED, STATUS_ERROR)
DONE_STATUSES = frozenset({STATUS_OK, STATUS_NO_FACE, STATUS_FILTERED})
"""Statuses a resumed run trusts (when every output the record lists exists)."""

# ------------------------------------------------------------------------------ files in dst

MANIFEST_NAME = "manifest.jsonl"
JOB_NAME = "job.json"
"""``{"settings": fingerprint}``: what decided the outputs (checked before a resume)."""
SUMMARY_NAME = "summary.json"
LOCK_NAME = ".align-job.lock"
IDENTITIES_NAME = "identities.tsv"
"""``recordio``: label, folder and image count per identity."""
REPORT_NAME = "report.html"
REPORT_FILES_NAME = "report_files"
EMBEDDINGS_PARTS_DIR = ".embeddings"
"""``--recognizer``: the committed parts of the embedding pass."""
EMBEDDINGS_NAME = "embeddings.npy"
EMBEDDINGS_INDEX_NAME = "embeddings_index.jsonl"
CENTRES_NAME = "identity_centres.json"


class RecordError(ValueError):
    """A manifest line or face that is not a record; the message names the field."""


# Exact type checks (what ``json.loads`` gives): a manifest holds millions of numbers, and abstract
# base class checks would cost more than the parsing itself.
_NUMBER_TYPES = (int, float)  # not bool: type(True) is bool
_LIST_TYPES = (list, tuple)


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES


def _numbers(value: Any, n: int, what: str) -> tuple[float, ...]:
    if type(value) not in _LIST_TYPES or len(value) != n or any(type(v) not in _NUMBER_TYPES for v in value):
        raise RecordError(f"{what} must be {n} numbers, got {value!r}")
    return tuple(value)  # the parsed numbers as they are: ints stay ints (the JSON round trip is exact)


@dataclass(frozen=True, kw_only=True)
class FaceRecord:
    """One face of a photo, in full-photo pixels.

    Attributes:
        box: ``(x1, y1, x2, y2)``, or ``None`` (hand-made manifests; the job always writes one).
        score: detector score, ``None`` for given landmarks.
        landmarks: five ``(x, y)``: left eye, right eye, nose, left and right mouth corners.
        quality: :func:`pipeline.curation.face_quality` of the face (``None``: not measured).
    """

    box: tuple[float, float, float, float] | None
    score: float | None
    landmarks: tuple[tuple[float, float], ...]
    quality: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The face as the manifest holds it (``quality`` only when measured)."""
        face: dict[str, Any] = {"box": None if self.box is None else list(self.box), "score": self.score,
                                "landmarks": [list(p) for p in self.landmarks]}
        if self.quality is not None:
            face["quality"] = self.quality
        return face

    @classmethod
    def from_json(cls, face: Any) -> FaceRecord:
        if type(face) is not dict and not isinstance(face, Mapping):
            raise RecordError(f"a face must be a JSON object, got {face!r}")
        box = face.get("box")
        score = face.get("score")
        if score is not None and not _is_number(score):
            raise RecordError(f"a face's score must be a number or null, got {score!r}")
        points = face.get("landmarks") or ()
        if type(points) not in _LIST_TYPES:
            raise RecordError(f"a face's landmarks must be a list of [x, y], got {points!r}")
        quality = face.get("quality")
        if quality is not None and type(quality) is not dict and not isinstance(quality, Mapping):
            raise RecordError(f"a face's quality must be a JSON object, got {quality!r}")
        if any(type(p) not in _LIST_TYPES or len(p) != 2 or type(p[0]) not in _NUMBER_TYPES
               or type(p[1]) not in _NUMBER_TYPES for p in points):
            bad = next(p for p in points if type(p) not in _LIST_TYPES or len(p) != 2
                       or type(p[0]) not in _NUMBER_TYPES or type(p[1]) not in _NUMBER_TYPES)
            raise RecordError(f"a landmark must be 2 numbers, got {bad!r}")
        return cls(box=None if box is None else _numbers(box, 4, "a face's box"), score=score,
                   landmarks=tuple([tuple(p) for p in points]),
                   quality=None if quality is None else dict(quality))

    @property
    def side(self) -> float | None:
        """The box's shorter side (``None`` without a box)."""
        if self.box is None:
            return None
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


_IDENTITY_KEYS = ("identity", "identity_distance", "identity_outlier", "embedding_row")


@dataclass(frozen=True, kw_only=True)
class PhotoRecord:
    """One input photo's outcome: one manifest line (see the module docstring for the layout).

    Attributes:
        src: the photo's POSIX path relative to ``src`` (lone surrogates for names that are not UTF-8).
        status: one of :data:`STATUSES`.
        error: why the photo failed (``""`` unless ``status == "error"``).
        outputs: what was written, relative to ``dst`` (``FILE`` or ``FILE#MEMBER`` inside a shard).
        faces: every face with score >= ``min_score`` (or the given one).
        selected: indices into ``faces`` of the cropped faces, one per output, in selection order.
        height, width: the photo's size (0 when it was never decoded).
        landmarks: ``"given"`` or ``"detected"`` (``""``: the photo never reached alignment).
        filtered: why every face failed the quality filter (``""`` unless ``status == "filtered"``).
        identity, identity_distance, identity_outlier, embedding_row: the identity pass
            (``--recognizer``): the folder, ``1 - cos`` of the first selected face to its centre
            (``None``: unknown), whether that is above the folder's threshold, and the face's row of
            ``dst/embeddings.npy``. ``identity_outlier is None``: the run had no identity pass (the
            four keys are then absent from the line).
    """

    src: str
    status: str
    error: str = ""
    outputs: tuple[str, ...] = ()
    faces: tuple[FaceRecord, ...] = ()
    selected: tuple[int, ...] = ()
    height: int = 0
    width: int = 0
    landmarks: str = ""
    filtered: str = ""
    identity: str | None = None
    identity_distance: float | None = None
    identity_outlier: bool | None = None
    embedding_row: int | None = None

    def __post_init__(self) -> None:
        if type(self.src) is not str or not self.src:
            raise RecordError(f"a record's src must be a non-empty string, got {self.src!r}")
        if not isinstance(self.status, str):
            raise RecordError(f"{self.src}: status must be a string, got {self.status!r}")
        for name in ("outputs", "faces", "selected"):  # any sequence in, a tuple kept
            if type(getattr(self, name)) is not tuple:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def done(self) -> bool:
        """The status is one a resumed run trusts (:data:`DONE_STATUSES`)."""
        return self.status in DONE_STATUSES

    @property
    def has_identity(self) -> bool:
        """The record comes from a run with an identity pass."""
        return self.identity_outlier is not None

    @property
    def selected_faces(self) -> tuple[FaceRecord, ...]:
        return tuple(self.faces[i] for i in self.selected if 0 <= i < len(self.faces))

    def to_dict(self) -> dict[str, Any]:
        """The record as the manifest's JSON object (optional keys only when set)."""
        out: dict[str, Any] = {"src": self.src, "status": self.status, "error": self.error,
                               "outputs": list(self.outputs), "faces": [f.to_json() for f in self.faces],
                               "selected": list(self.selected), "height": self.height, "width": self.width}
        if self.landmarks:
            out["landmarks"] = self.landmarks
        if self.filtered:
            out["filtered"] = self.filtered
        if self.has_identity:
            out.update((key, getattr(self, key)) for key in _IDENTITY_KEYS)
        return out

    def to_json(self) -> str:
        """One manifest line (no newline): UTF-8 text, or JSON escapes for a name that is not UTF-8."""
        record = self.to_dict()
        line = json.dumps(record, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates of a file name that is not UTF-8: keep them as escapes
            line = json.dumps(record)
        return line

    @classmethod
    def from_dict(cls, record: Any) -> PhotoRecord:
        """A record from a parsed manifest object; missing optional keys take their defaults.

        Raises:
            RecordError: not an object with a string ``src``, or a field of the wrong type."""
        if type(record) is not dict and not isinstance(record, Mapping):
            raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
        src = record.get("src")
        try:
            faces = record.get("faces") or ()
            outputs = record.get("outputs") or ()
            selected = record.get("selected") or ()
            if type(faces) not in _LIST_TYPES or type(outputs) not in _LIST_TYPES \
                    or type(selected) not in _LIST_TYPES:
                raise RecordError("faces, outputs and selected must be lists")
            if any(type(o) is not str for o in outputs):
                raise RecordError(f"outputs must be strings, got {outputs!r}")
            if any(type(i) is not int for i in selected):
                raise RecordError(f"selected must be integers, got {selected!r}")
            has_identity = "identity_outlier" in record or "identity" in record or "identity_distance" in record \
                or "embedding_row" in record
            if has_identity:
                identity, distance = record.get("identity"), record.get("identity_distance")
                if distance is not None and type(distance) not in _NUMBER_TYPES:
                    raise RecordError(f"identity_distance must be a number or null, got {distance!r}")
                extra = {"identity": identity if type(identity) is str else None, "identity_distance": distance,
                         "identity_outlier": record.get("identity_outlier") is True,
                         "embedding_row": _int(record, "embedding_row", None)}
            else:
                extra = {}
            return cls(
                src=src, status=record.get("status", STATUS_ERROR), error=_string(record, "error"),
                outputs=tuple(outputs), faces=tuple([FaceRecord.from_json(f) for f in faces]), selected=tuple(selected),
                height=_int(record, "height"), width=_int(record, "width"), landmarks=_string(record, "landmarks"),
                filtered=_string(record, "filtered"), **extra,
            )
        except TypeError as e:  # a list where a scalar belongs, ...
            raise RecordError(f"{src}: {e}") from e
        except RecordError as e:
            raise RecordError(f"{src}: {e}") from None

    @classmethod
    def from_json(cls, line: str | bytes) -> PhotoRecord:
        """A record from one manifest line (see :meth:`from_dict`); bad JSON is a :class:`RecordError`."""
        try:
            record = json.loads(line)
        except ValueError as e:
            raise RecordError(f"not a JSON line: {e}") from None
        return cls.from_dict(record)


def _string(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{key} must be a string, got {value!r}")
    return value


def _int(record: Mapping[str, Any], key: str, default: int | None = 0) -> int | None:
    value = record.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        raise RecordError(f"{key} must be an integer, got {value!r}")
    return value
