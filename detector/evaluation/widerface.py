"""WIDER FACE validation evaluation (easy / medium / hard AP), vectorised.

Follows the official protocol as the widely used Python port implements it
(``widerface_evaluate/evaluation.py`` shipped with biubug6/Pytorch_Retinaface), reproducing its
numbers to the last bit on complete prediction sets:

* Ground truth: ``wider_face_val.mat`` (``face_bbx_list``, ``event_list``, ``file_list``) and
  ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: 1-based indices of the faces a setting keeps).
  Faces outside a setting's keep list are *ignored*: a prediction matching one is neither a true
  nor a false positive.
* Scores are min-max normalised over the whole prediction set, with the port's initial values
  (``min = min(1, lowest score)``, ``max = max(0, highest score)``).
* Per image, predictions are visited **in the order given** (file order; not re-sorted). Each is
  assigned to the ground-truth box of highest IoU (first one on ties); IoU uses the +1 pixel
  convention of ``bbox_overlaps`` on boxes ``x2 = x + w``. With IoU >= 0.5 it either matches a kept
  face (the first such prediction recalls it) or an ignored face (the prediction stops being a
  proposal).
* For 1000 thresholds ``1 - (t + 1) / 1000`` an image contributes, up to the *last* prediction
  whose normalised score reaches the threshold, the number of proposals and of recalled faces.
  Precision is their ratio over the dataset, recall divides by the number of kept faces; AP is
  the VOC (all-point, precision-envelope) area.
* Images without ground-truth boxes or without predictions contribute nothing but their kept-face
  count (always zero / the faces they miss).

Vectorisation: with ``M_p`` the suffix maximum of the scores of image ``p``'s file from ``p`` on,
the port's per-threshold prefix (up to the last score >= threshold) is exactly the set of
predictions with ``M_p >= threshold``; the counts are then sums over all predictions of
per-prediction indicators (``proposal``, ``first recall of a kept face``), computed for all
thresholds at once with one sort and ``searchsorted``. All sums are integer counts, so the result
is bit-identical to the port's float accumulation.

Partial prediction sets (only some images present) are evaluated over the images present: both
the normalisation and the face counts use only those images. The port itself would fail on them.

Submission layout: ``<root>/<event>/<image>.txt`` holding the image name, the number of faces,
then one ``x y w h score`` line per face.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

__all__ = [
    "SETTINGS",
    "PredictionFormatError",
    "WiderFaceGroundTruth",
    "WiderFaceEvalConfig",
    "SettingResult",
    "WiderFaceResult",
    "WiderFaceEvaluator",
    "load_ground_truth",
    "read_prediction_file",
    "read_submission",
    "write_prediction_file",
    "write_submission",
    "evaluate_folder",
    "bbox_overlaps_plus_one",
    "voc_ap",
    "plot_pr_curves",
    "iter_image_files",
    "write_detections",
    "predict_submission",
]

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
_GT_FILES = {"face": "wider_face_val.mat", "easy": "wider_easy_val.mat",
             "medium": "wider_medium_val.mat", "hard": "wider_hard_val.mat"}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

BoxFormat = Literal["xywh", "xyxy"]


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


def _format_rows(values: np.ndarray) -> str:
    return "".join(" ".join(map(repr, row)) + "\n" for row in values.tolist())


def write_prediction_file(path: str | os.PathLike[str], image_name: str, predictions: np.ndarray) -> Path:
    """Write one prediction file; values are written with ``repr`` so that reading them back is exact.

    Args:
        path: the ``.txt`` file to write (parent folders are created).
        image_name: the image name for the first line (written without extension).
        predictions: ``[N, 5]`` (x, y, w, h, score).
    """
    path = Path(path)
    values = np.asarray(predictions, dtype=np.float64).reshape(-1, 5)
    _check_values(values, lambda r, msg: ValueError(f"{image_name}: row {r}: {msg}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{_strip_image_extension(image_name)}\n{len(values)}\n")
        f.write(_format_rows(values))
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WiderFaceEvalConfig:
    """Protocol constants (the official values are the defaults)."""

    iou_threshold: float = 0.5
    num_thresholds: int = 1000
    settings: tuple[str, ...] = SETTINGS

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {self.num_thresholds}")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown or not self.settings:
            raise ValueError(f"settings must be a non-empty subset of {SETTINGS}, got {self.settings}")

    def thresholds(self) -> np.ndarray:
        """``float64 [T]``: ``1 - (t + 1) / T`` for ``t = 0 .. T-1`` (descending, last is 0)."""
        t = self.num_thresholds
        return 1.0 - np.arange(1, t + 1, dtype=np.float64) / t


@dataclass(frozen=True, eq=False)
class SettingResult:
    """One setting. ``precision`` / ``recall`` are ``float64 [T]`` over the config's thresholds
    (precision is NaN where no prediction is counted yet, as in the port)."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    num_faces: int


@dataclass(frozen=True, eq=False)
class WiderFaceResult:
    """AP per setting plus the PR curves and bookkeeping."""

    settings: Mapping[str, SettingResult]
    thresholds: np.ndarray
    images_evaluated: int
    images_total: int
    num_predictions: int
    score_min: float
    score_max: float
    iou_threshold: float

    def __getitem__(self, setting: str) -> float:
        return self.settings[setting].ap

    @property
    def complete(self) -> bool:
        return self.images_evaluated == self.images_total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``{"easy": ap, "medium": ap, "hard": ap, "images_evaluated": N, ...}``."""
        out: dict[str, Any] = {name: float(r.ap) for name, r in self.settings.items()}
        out.update(
            images_evaluated=self.images_evaluated,
            images_total=self.images_total,
            complete=self.complete,
            num_predictions=self.num_predictions,
            faces={name: r.num_faces for name, r in self.settings.items()},
            score_range=[self.score_min, self.score_max],
            iou_threshold=self.iou_threshold,
            num_thresholds=len(self.thresholds),
        )
        return out

    def summary(self) -> str:
        aps = "  ".join(f"{name} {r.ap:.4f}" for name, r in self.settings.items())
        scope = "" if self.complete else f" (partial: {self.images_evaluated} of {self.images_total} images)"
        return f"WIDER FACE val AP: {aps}  [{self.images_evaluated} images, {self.num_predictions} predictions]{scope}"


def bbox_overlaps_plus_one(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """IoU with the +1 pixel convention, exactly as the Cython ``bbox_overlaps`` of the port.

    Args:
        boxes: ``float64 [N, 4]`` x1 y1 x2 y2.
        query_boxes: ``float64 [K, 4]`` x1 y1 x2 y2.

    Returns:
        ``float64 [N, K]``; 0 where the boxes do not overlap (``iw <= 0`` or ``ih <= 0``).
    """
    b = np.asarray(boxes, dtype=np.float64)
    q = np.asarray(query_boxes, dtype=np.float64)
    q_area = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    b_area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (b_area[:, None] + q_area[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point VOC AP: area under the precision envelope (NaN propagates as in the port).

    Args:
        recall, precision: ``float64 [T]``.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


class WiderFaceEvaluator:
    """Accumulates per-image predictions and scores them (detectron2 evaluator style).

    Example::

        ev = WiderFaceEvaluator(ground_truth=load_ground_truth(gt_dir))
        for key, det in results:               # key "0--Parade/0_Parade_marchingband_1_465"
            ev.process(key, det.boxes, det.scores, box_format="xyxy")
        print(ev.evaluate())                   # {"easy": ..., "medium": ..., "hard": ..., ...}
    """

    def __init__(self, *, ground_truth: WiderFaceGroundTruth,
                 config: WiderFaceEvalConfig = WiderFaceEvalConfig(), progress: bool = False) -> None:
        self.ground_truth = ground_truth
        self.config = config
        self.progress = progress
        self._predictions: dict[int, np.ndarray] = {}

    @classmethod
    def from_mat_dir(cls, gt_dir: str | os.PathLike[str], *,
                     config: WiderFaceEvalConfig = WiderFaceEvalConfig(),
                     progress: bool = False) -> WiderFaceEvaluator:
        return cls(ground_truth=load_ground_truth(gt_dir), config=config, progress=progress)

    def reset(self) -> None:
        self._predictions = {}

    def __len__(self) -> int:
        """Number of images processed so far."""
        return len(self._predictions)

    def process(self, image_key: str, boxes: Any, scores: Any, *, box_format: BoxFormat = "xywh") -> None:
        """Add the predictions of one image.

        Args:
            image_key: ``"<event>/<name>"`` or ``"<name>"`` (an image extension is allowed).
            boxes: ``[N, 4]`` numpy array or tensor, ``x y w h`` or ``x1 y1 x2 y2`` (``box_format``)
                in original-image pixels.
            scores: ``[N]``. Order matters as in the protocol (a submission file's order); pass
                them sorted by score, descending, as detectors return them.

        Raises:
            KeyError: unknown image or wrong event. ValueError: duplicate image, bad shapes,
            non-finite values, negative sizes.
        """
        index = self.ground_truth.index(image_key)
        if index in self._predictions:
            raise ValueError(f"image {image_key!r} was already processed")
        b = _to_numpy(boxes)
        b = b.reshape(-1, 4) if b.size else np.zeros((0, 4))
        s = _to_numpy(scores).reshape(-1)
        if len(b) != len(s):
            raise ValueError(f"{image_key}: {len(b)} boxes but {len(s)} scores")
        if box_format == "xyxy":
            b = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        elif box_format != "xywh":
            raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
        values = np.concatenate([b, s[:, None]], axis=1)
        _check_values(values, lambda r, msg: ValueError(f"{image_key}: prediction {r}: {msg}"))
        self._predictions[index] = values

    def process_submission(self, predictions: Mapping[str, np.ndarray]) -> None:
        """Add a :func:`read_submission` result (``key -> [N, 5]`` x, y, w, h, score)."""
        for key, values in predictions.items():
            self.process(key, values[:, :4], values[:, 4], box_format="xywh")

    def missing_images(self) -> list[str]:
        """``"<event>/<name>"`` of the ground-truth images not processed."""
        return [self.ground_truth.key(i) for i in range(self.ground_truth.num_images)
                if i not in self._predictions]

    def compute(self) -> WiderFaceResult:
        """Score what was processed (the images present; see the module docstring)."""
        return _evaluate(self.ground_truth, self._predictions, self.config, progress=self.progress)

    def evaluate(self) -> dict[str, Any]:
        """``compute().to_dict()``: ``{"easy": ap, "medium": ap, "hard": ap, "images_evaluated": N, ...}``."""
        return self.compute().to_dict()


def _evaluate(gt: WiderFaceGroundTruth, predictions: Mapping[int, np.ndarray],
              config: WiderFaceEvalConfig, *, progress: bool) -> WiderFaceResult:
    images = sorted(predictions)
    if not images:
        raise ValueError("no predictions to evaluate (no image was processed)")
    # Min-max normalisation over the whole set, with the port's initial min 1 / max 0.
    nonempty = [predictions[i][:, 4] for i in images if len(predictions[i])]
    all_scores = np.concatenate(nonempty) if nonempty else np.zeros(0)
    lo = min(1.0, float(all_scores.min())) if all_scores.size else 1.0
    hi = max(0.0, float(all_scores.max())) if all_scores.size else 0.0
    diff = hi - lo
    if all_scores.size and diff == 0.0:
        raise ValueError(f"all {all_scores.size} prediction scores equal {lo!r}: the protocol's "
                         "min-max score normalisation is undefined (the reference port divides by zero)")

    suffix_max: list[np.ndarray] = []
    matched: list[np.ndarray] = []
    face_index: list[np.ndarray] = []
    iou_thr = config.iou_threshold
    for i in tqdm(images, desc="matching", unit="img", disable=not progress, mininterval=0.5):
        pred = predictions[i]
        start, stop = int(gt.offsets[i]), int(gt.offsets[i + 1])
        if stop == start or len(pred) == 0:
            continue
        g = gt.boxes[start:stop]
        g_xyxy = np.concatenate([g[:, :2], g[:, 2:] + g[:, :2]], axis=1)
        p_xyxy = np.concatenate([pred[:, :2], pred[:, 2:4] + pred[:, :2]], axis=1)
        iou = bbox_overlaps_plus_one(p_xyxy, g_xyxy)
        best = iou.argmax(axis=1)
        matched.append(iou[np.arange(len(pred)), best] >= iou_thr)
        face_index.append(best + start)
        score = (pred[:, 4] - lo) / diff
        suffix_max.append(np.maximum.accumulate(score[::-1])[::-1])

    thresholds = config.thresholds()
    if suffix_max:
        m = np.concatenate(suffix_max)
        hit = np.concatenate(matched)
        face = np.concatenate(face_index)
    else:
        m, hit, face = np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64)
    order = np.argsort(m, kind="stable")
    # Number of predictions with suffix max >= each threshold lie at sorted positions [pos, n).
    pos = np.searchsorted(m[order], thresholds, side="left")

    def count_at_thresholds(indicator: np.ndarray) -> np.ndarray:
        csum = np.concatenate(([0], np.cumsum(indicator[order], dtype=np.int64)))
        return (csum[-1] - csum[pos]).astype(np.float64)

    present = np.zeros(gt.num_images, dtype=bool)
    present[images] = True
    face_present = np.repeat(present, np.diff(gt.offsets))

    results: dict[str, SettingResult] = {}
    for setting in config.settings:
        keep = gt.keep[setting]
        kept_hit = hit & keep[face]
        proposal = ~(hit & ~keep[face])
        first = np.zeros(len(m), dtype=bool)
        hits = np.flatnonzero(kept_hit)
        _, first_pos = np.unique(face[hits], return_index=True)
        first[hits[first_pos]] = True
        n_proposals = count_at_thresholds(proposal)
        n_recalled = count_at_thresholds(first)
        num_faces = int(np.count_nonzero(keep & face_present))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = n_recalled / n_proposals
            recall = n_recalled / num_faces
        results[setting] = SettingResult(ap=voc_ap(recall, precision), precision=precision,
                                         recall=recall, num_faces=num_faces)
    return WiderFaceResult(
        settings=MappingProxyType(results), thresholds=thresholds, images_evaluated=len(images),
        images_total=gt.num_images, num_predictions=int(all_scores.size),
        score_min=lo, score_max=hi, iou_threshold=iou_thr)


def evaluate_folder(pred_dir: str | os.PathLike[str], *, ground_truth: WiderFaceGroundTruth | None = None,
                    gt_dir: str | os.PathLike[str] | None = None,
                    config: WiderFaceEvalConfig = WiderFaceEvalConfig(), require_all: bool = False,
                    progress: bool = True) -> WiderFaceResult:
    """Score a submission folder against the ground truth (given loaded, or as the .mat folder).

    Args:
        require_all: raise ``ValueError`` unless every validation image has a prediction file;
            otherwise the images present are evaluated (see ``WiderFaceResult.images_evaluated``).
    """
    if (ground_truth is None) == (gt_dir is None):
        raise ValueError("pass exactly one of ground_truth and gt_dir")
    if ground_truth is None:
        ground_truth = load_ground_truth(gt_dir)  # type: ignore[arg-type]
    predictions = read_submission(pred_dir, progress=progress)
    if not predictions:
        raise FileNotFoundError(f"no prediction files under {pred_dir}/<event>/<image>.txt")
    evaluator = WiderFaceEvaluator(ground_truth=ground_truth, config=config, progress=progress)
    for key, values in predictions.items():
        try:
            evaluator.process(key, values[:, :4], values[:, 4], box_format="xywh")
        except KeyError as exc:
            raise PredictionFormatError(Path(pred_dir) / f"{key}.txt", 1, exc.args[0]) from None
    if require_all and len(evaluator) != ground_truth.num_images:
        missing = evaluator.missing_images()
        raise ValueError(f"{pred_dir}: {len(missing)} of {ground_truth.num_images} validation images have no "
                         f"prediction file, e.g. {', '.join(missing[:3])}")
    return evaluator.compute()


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------


def plot_pr_curves(result: WiderFaceResult, out_dir: str | os.PathLike[str], *, label: str = "ours",
                   prefix: str = "pr_curve", dpi: int = 100) -> list[Path]:
    """Write one precision-recall PNG per setting (``<out_dir>/<prefix>_<setting>.png``).

    Uses matplotlib's object API with the Agg canvas (no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for setting, r in result.settings.items():
        fig = Figure(figsize=(5, 4.5), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ok = np.isfinite(r.precision)
        ax.plot(r.recall[ok], r.precision[ok], lw=2, label=f"{label} (AP {r.ap:.4f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
               title=f"WIDER FACE val {setting}"
                     + ("" if result.complete else f" ({result.images_evaluated}/{result.images_total} images)"))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        path = out_dir / f"{prefix}_{setting}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def write_detections(out_dir: str | os.PathLike[str], image_key: str, boxes_xyxy: Any, scores: Any) -> Path:
    """Write one image's detections (``[N, 4]`` x1 y1 x2 y2, ``[N]``; arrays or tensors) as
    ``<out_dir>/<event>/<name>.txt`` with ``x y w h = x1, y1, x2 - x1, y2 - y1``."""
    event, sep, name = image_key.replace("\\", "/").rpartition("/")
    if not sep or not event:
        raise ValueError(f"image keys must be '<event>/<image>', got {image_key!r}")
    b = _to_numpy(boxes_xyxy).reshape(-1, 4)
    s = _to_numpy(scores).reshape(-1, 1)
    values = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s], axis=1)
    name = _strip_image_extension(name)
    return write_prediction_file(Path(out_dir) / event / f"{name}.txt", name, values)


def predict_submission(images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       detect: Callable[[list[np.ndarray]], Sequence[Any]], *, batch_size: int = 8,
                       progress: bool = True) -> list[str]:
    """Run ``detect`` over ``<images_dir>/<event>/<image>`` and write a submission folder.

    Args:
        detect: maps a list of ``HxWx3`` uint8 BGR images to one result per image, each with
            ``.boxes`` ``[N, 4]`` x1 y1 x2 y2 and ``.scores`` ``[N]`` sorted by descending score
            (e.g. ``Detector.detect``).
        batch_size: images per ``detect`` call. Only images of identical size share a batch, so
            batching never pads an image (padding would change the network's border responses).

    Returns:
        The ``"<event>/<name>"`` keys written, in processing order.
    """
    import cv2

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = iter_image_files(images_dir)
    if not files:
        raise FileNotFoundError(f"no images under {images_dir}/<event>/")
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    written: list[str] = []

    def flush(shape: tuple[int, ...]) -> None:
        items = by_shape.pop(shape)
        results = detect([img for _, img in items])
        if len(results) != len(items):
            raise RuntimeError(f"detect returned {len(results)} results for {len(items)} images")
        for (key, _), det in zip(items, results, strict=True):
            write_detections(out_dir, key, det.boxes, det.scores)
            written.append(key)
        bar.update(len(items))

    with tqdm(total=len(files), desc="detecting", unit="img", disable=not progress) as bar:
        for key, path in files:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path}: not a readable image")
            by_shape.setdefault(image.shape, []).append((key, image))
            if len(by_shape[image.shape]) >= batch_size:
                flush(image.shape)
        for shape in list(by_shape):
            flush(shape)
    return written


def iter_image_files(images_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``("<event>/<name>", path)`` for every image under ``images_dir/<event>/``, sorted."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    found = sorted(p for p in images_dir.glob("*/*") if p.suffix.lower() in _IMAGE_EXTENSIONS and p.is_file())
    return [(f"{p.parent.name}/{p.stem}", p) for p in found]

