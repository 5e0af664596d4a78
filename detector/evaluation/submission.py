"""WIDER FACE validation data: the ground truth (the official ``.mat`` files) and submission folders.

Submission layout: ``<root>/<event>/<image>.txt`` holding the image name, the number of faces,
then one ``x y w h score`` line per face (:func:`read_prediction_file`, :func:`write_submission`).
Scoring lives in :mod:`detector.evaluation.widerface`, running a detector over the images in
:mod:`detector.evaluation.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from tqdm import tqdm

__all__ = [
    "SETTINGS",
    "PredictionFormatError",
    "WiderFaceGroundTruth",
    "load_ground_truth",
    "read_prediction_file",
    "read_submission",
    "write_prediction_file",
    "write_submission",
]

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
_GT_FILES = {"face": "wider_face_val.mat", "easy": "wider_easy_val.mat",
             "medium": "wider_medium_val.mat", "hard": "wider_hard_val.mat"}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class PredictionFormatError(ValueError):
    """A malformed prediction file. The message starts with ``<path>:<line>:``."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        super().__init__(f"{self.path}:{line}: {message}")


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WiderFaceGroundTruth:
    """WIDER FACE ground truth in flat arrays (``I`` images, ``F`` faces in image-major order).

    Attributes:
        events: ``[I]`` event folder of each image (``"0--Parade"``).
        names: ``[I]`` image name without extension (``"0_Parade_marchingband_1_465"``).
        boxes: ``float64 [F, 4]`` every face as ``x y w h`` (the .mat values, unchanged).
        offsets: ``int64 [I + 1]``; the faces of image ``i`` are ``boxes[offsets[i]:offsets[i+1]]``.
        keep: setting name -> ``bool [F]``, True for faces in that setting's keep list.
    """

    events: tuple[str, ...]
    names: tuple[str, ...]
    boxes: np.ndarray
    offsets: np.ndarray
    keep: Mapping[str, np.ndarray]
    _index: Mapping[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.events) != len(self.names) or self.offsets.shape != (len(self.names) + 1,):
            raise ValueError("events, names and offsets disagree on the number of images")
        if self.boxes.shape != (int(self.offsets[-1]), 4):
            raise ValueError(f"boxes must be [{int(self.offsets[-1])}, 4], got {self.boxes.shape}")
        for name, mask in self.keep.items():
            if mask.shape != (len(self.boxes),) or mask.dtype != np.bool_:
                raise ValueError(f"keep[{name!r}] must be bool [{len(self.boxes)}]")
        index = {name: i for i, name in enumerate(self.names)}
        if len(index) != len(self.names):
            raise ValueError("image names are not unique")
        object.__setattr__(self, "_index", MappingProxyType(index))
        object.__setattr__(self, "keep", MappingProxyType(dict(self.keep)))

    @classmethod
    def from_mat_dir(cls, gt_dir: str | os.PathLike[str]) -> WiderFaceGroundTruth:
        """Read the four official ``.mat`` files from ``gt_dir``."""
        from scipy.io import loadmat  # the only scipy use; keep the import local

        gt_dir = Path(gt_dir)
        paths = {k: gt_dir / v for k, v in _GT_FILES.items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"WIDER FACE ground truth files not found: {', '.join(missing)}")
        face = loadmat(paths["face"], variable_names=["face_bbx_list", "event_list", "file_list"])
        event_cells, file_cells, box_cells = face["event_list"], face["file_list"], face["face_bbx_list"]

        events: list[str] = []
        names: list[str] = []
        boxes: list[np.ndarray] = []
        for e in range(event_cells.shape[0]):
            event = str(event_cells[e][0][0])
            files, ev_boxes = file_cells[e][0], box_cells[e][0]
            for j in range(files.shape[0]):
                events.append(event)
                names.append(str(files[j][0][0]))
                boxes.append(np.asarray(ev_boxes[j][0], dtype=np.float64).reshape(-1, 4))
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        flat = np.concatenate(boxes) if boxes else np.zeros((0, 4))

        keep: dict[str, np.ndarray] = {}
        for setting in SETTINGS:
            cells = loadmat(paths[setting], variable_names=["gt_list"])["gt_list"]
            mask = np.zeros(len(flat), dtype=bool)
            i = 0
            for e in range(cells.shape[0]):
                ev = cells[e][0]
                for j in range(ev.shape[0]):
                    idx = np.asarray(ev[j][0], dtype=np.int64).ravel()
                    if idx.size and (idx.min() < 1 or idx.max() > counts[i]):
                        raise ValueError(f"{paths[setting]}: keep index out of range for image {names[i]}")
                    mask[offsets[i] + idx - 1] = True
                    i += 1
            if i != len(names):
                raise ValueError(f"{paths[setting]} lists {i} images, {paths['face']} {len(names)}")
            keep[setting] = mask
        return cls(events=tuple(events), names=tuple(names), boxes=flat, offsets=offsets, keep=keep)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def num_faces(self, image: int) -> int:
        return int(self.offsets[image + 1] - self.offsets[image])

    def image_boxes(self, image: int) -> np.ndarray:
        """``float64 [G, 4]`` ``x y w h`` faces of image ``image``."""
        return self.boxes[self.offsets[image]:self.offsets[image + 1]]

    def key(self, image: int) -> str:
        """``"<event>/<name>"`` of image ``image``."""
        return f"{self.events[image]}/{self.names[image]}"

    def index(self, image_key: str) -> int:
        """Image index from ``"name"``, ``"name.jpg"``, ``"event/name"`` or ``"event/name.jpg"``.

        Raises ``KeyError`` for images not in the ground truth or under the wrong event.
        """
        event, _, name = image_key.replace("\\", "/").rpartition("/")
        name = _strip_image_extension(name)
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"{image_key!r} is not a WIDER FACE validation image")
        if event and event.rsplit("/", 1)[-1] != self.events[i]:
            raise KeyError(f"{image_key!r}: image {name!r} belongs to event {self.events[i]!r}")
        return i


def load_ground_truth(gt_dir: str | os.PathLike[str]) -> WiderFaceGroundTruth:
    """Alias of :meth:`WiderFaceGroundTruth.from_mat_dir`."""
    return WiderFaceGroundTruth.from_mat_dir(gt_dir)


def _strip_image_extension(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in _IMAGE_EXTENSIONS else name


# --------------------------------------------------------------------------------------------
# Submission files
# --------------------------------------------------------------------------------------------


def read_prediction_file(path: str | os.PathLike[str]) -> tuple[str, np.ndarray]:
    """Read one ``<image>.txt`` prediction file.

    Layout: line 1 the image name (a path or an extension is allowed; only the base name without
    image extension is kept), line 2 the number of faces, then one ``x y w h score`` line per face
    (blank lines are skipped, trailing spaces allowed).

    Returns:
        ``(image_name, predictions)`` with ``predictions`` ``float64 [N, 5]`` (x, y, w, h, score)
        in file order.

    Raises:
        PredictionFormatError: naming the file and the 1-based line, when the image name or count
            is missing or wrong, a line does not hold five numbers, a value is NaN / infinite, or
            a width / height is negative.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as exc:
            raise PredictionFormatError(path, 1, f"not a UTF-8 text file ({exc.reason})") from None
    if not lines or not lines[0].strip():
        raise PredictionFormatError(path, 1, "missing image name (expected on the first line)")
    name = _strip_image_extension(lines[0].strip().replace("\\", "/").rsplit("/", 1)[-1])
    if name != path.stem:
        raise PredictionFormatError(
            path, 1, f"image name {lines[0].strip()!r} does not match the file name {path.name!r}")
    if len(lines) < 2 or not lines[1].strip():
        raise PredictionFormatError(path, 2, "missing face count (expected on the second line)")
    count_text = lines[1].strip()
    if not (count_text.isascii() and count_text.isdigit()):
        raise PredictionFormatError(path, 2, f"face count must be a non-negative integer, got {count_text!r}")
    count = int(count_text)

    body = [(no, ln) for no, ln in enumerate(lines[2:], start=3) if ln.strip()]
    rows = [ln.split() for _, ln in body]
    if len(rows) != count:
        raise PredictionFormatError(
            path, body[count][0] if len(rows) > count else 2,
            f"the file declares {count} faces but holds {len(rows)} box lines")
    for (no, ln), row in zip(body, rows, strict=True):
        if len(row) != 5:
            raise PredictionFormatError(path, no, f"expected 5 values 'x y w h score', got {len(row)}: {ln.strip()!r}")
    try:
        values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        for (no, ln), row in zip(body, rows, strict=True):
            for token in row:
                try:
                    float(token)
                except ValueError:
                    raise PredictionFormatError(path, no, f"{token!r} is not a number in {ln.strip()!r}") from None
        raise  # pragma: no cover - np.array and float() accept the same tokens
    _check_values(values, lambda r, msg: PredictionFormatError(path, body[r][0], msg))
    return name, values


def _check_values(values: np.ndarray, error: Any) -> None:
    """Raise ``error(row, message)`` for the first non-finite value or negative size in ``[N, 5]``."""
    if values.size == 0:
        return
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "score" if c == 4 else "xywh"[c]
        raise error(int(r), f"{what} is {float(values[r, c])!r} (must be finite)")
    neg = values[:, 2:4] < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise error(int(r), f"negative box {'wh'[c]} {float(values[r, 2 + c])!r}")


def read_submission(pred_dir: str | os.PathLike[str], *, progress: bool = True) -> dict[str, np.ndarray]:
    """Read a ``<pred_dir>/<event>/<image>.txt`` folder.

    Returns:
        ``"<event>/<image name>"`` -> ``float64 [N, 5]`` (x, y, w, h, score), file order.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    files: list[tuple[str, str]] = []
    with os.scandir(pred_dir) as events:
        for ev in events:
            if ev.name.startswith("."):
                continue
            if not ev.is_dir():
                if ev.name.endswith(".txt"):
                    raise PredictionFormatError(
                        ev.path, 1, "prediction files must lie in event folders (<event>/<image>.txt)")
                continue
            with os.scandir(ev.path) as entries:
                files.extend((ev.name, e.path) for e in entries
                             if e.name.endswith(".txt") and not e.name.startswith(".") and e.is_file())
    files.sort()
    out: dict[str, np.ndarray] = {}
    for event, path in tqdm(files, desc="reading predictions", unit="file", disable=not progress,
                            mininterval=0.5):
        name, values = read_prediction_file(path)
        key = f"{event}/{name}"
        if key in out:
            raise PredictionFormatError(path, 1, f"second prediction file for image {key!r}")
        out[key] = values
    return out


def _format_rows(values: np.ndarray, *, int_boxes: bool = False) -> str:
    if int_boxes:
        return "".join(f"{int(x)} {int(y)} {int(w)} {int(h)} {s!r}\n" for x, y, w, h, s in values.tolist())
    return "".join(" ".join(map(repr, row)) + "\n" for row in values.tolist())


def write_prediction_file(path: str | os.PathLike[str], image_name: str, predictions: np.ndarray, *,
                          int_boxes: bool = False) -> Path:
    """Write one prediction file; values are written with ``repr`` so that reading them back is exact.

    Args:
        path: the ``.txt`` file to write (parent folders are created).
        image_name: the image name for the first line (written without extension).
        predictions: ``[N, 5]`` (x, y, w, h, score).
        int_boxes: write ``x y w h`` as integers (``12`` rather than ``12.0``, as biubug6's
            ``test_widerface.py`` does); they must be integral already.
    """
    path = Path(path)
    values = np.asarray(predictions, dtype=np.float64).reshape(-1, 5)
    _check_values(values, lambda r, msg: ValueError(f"{image_name}: row {r}: {msg}"))
    if int_boxes and not np.array_equal(values[:, :4], np.trunc(values[:, :4])):
        raise ValueError(f"{image_name}: int_boxes needs integral x y w h")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{_strip_image_extension(image_name)}\n{len(values)}\n")
        f.write(_format_rows(values, int_boxes=int_boxes))
    return path


def write_submission(out_dir: str | os.PathLike[str], predictions: Mapping[str, np.ndarray]) -> list[Path]:
    """Write ``"<event>/<image>"`` -> ``[N, 5]`` (x, y, w, h, score) as a submission folder."""
    out_dir = Path(out_dir)
    written = []
    for key, values in predictions.items():
        event, sep, name = key.replace("\\", "/").rpartition("/")
        if not sep or not event or not name:
            raise ValueError(f"prediction keys must be '<event>/<image>', got {key!r}")
        name = _strip_image_extension(name)
        written.append(write_prediction_file(out_dir / event / f"{name}.txt", name, values))
    return written


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
