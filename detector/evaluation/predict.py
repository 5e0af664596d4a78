"""Running a detector over WIDER FACE validation images and writing a submission folder.

Box conventions of the written ``x y w h score`` lines (``box_format``, :data:`BOX_FORMATS`):

* ``"float"`` (the default): the detector's boxes unchanged (:func:`xyxy_to_xywh`), scores exact.
* ``"reference-int"``: what biubug6's ``test_widerface.py`` writes, the script behind its published
  WIDER val table: ``x = int(x1)``, ``y = int(y1)``, ``w = int(x2) - int(x1)``,
  ``h = int(y2) - int(y1)`` (Python's ``int``: truncation toward zero), and the score as
  ``str()`` of its float32 value (:func:`reference_int_xywh`, :func:`reference_scores`). The
  truncation moves boxes by up to a pixel, which moves AP by about 0.1 point; use it to compare
  with that table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tqdm import tqdm

from detector.evaluation.submission import _IMAGE_EXTENSIONS, _strip_image_extension, _to_numpy, write_prediction_file

__all__ = ["BOX_FORMATS", "SubmissionBoxFormat", "check_box_format", "iter_detections", "iter_image_files",
           "predict_submission", "reference_int_predictions", "reference_int_xywh", "reference_scores",
           "select_images", "write_detections", "xyxy_to_xywh"]

#: how the ``x y w h score`` lines of a submission are written (see the module docstring)
SubmissionBoxFormat = Literal["float", "reference-int"]
BOX_FORMATS: tuple[str, ...] = get_args(SubmissionBoxFormat)


def check_box_format(box_format: str) -> str:
    """``box_format`` if it is one of :data:`BOX_FORMATS`, else ``ValueError``."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    return box_format


def xyxy_to_xywh(boxes_xyxy: Any) -> np.ndarray:
    """``float64 [N, 4]`` ``x y w h = x1, y1, max(x2 - x1, 0), max(y2 - y1, 0)`` of ``[N, 4]`` boxes
    (array or tensor). Degenerate boxes (a distance-coded detector such as SCRFD can decode
    ``x2 = x1 - 1e-4``) get size 0 rather than a negative one, which the protocol's files refuse."""
    b = _to_numpy(boxes_xyxy).reshape(-1, 4)
    return np.concatenate([b[:, :2], np.maximum(b[:, 2:] - b[:, :2], 0.0)], axis=1)


def reference_int_xywh(boxes_xyxy: Any) -> np.ndarray:
    """``float64 [N, 4]`` integral ``x y w h`` of ``[N, 4]`` x1 y1 x2 y2 boxes (array or tensor) as
    biubug6's ``test_widerface.py`` writes them: ``x = int(x1)``, ``y = int(y1)``,
    ``w = int(x2) - int(x1)``, ``h = int(y2) - int(y1)``, where Python's ``int`` truncates toward
    zero (``int(-0.7) == 0``, ``int(-1.5) == -1``, ``int(2.9) == 2``). A degenerate box
    (``x2 < x1``, never from RetinaFace's decode) gets size 0, as in :func:`xyxy_to_xywh`."""
    t = np.trunc(_to_numpy(boxes_xyxy).reshape(-1, 4))
    return np.concatenate([t[:, :2], np.maximum(t[:, 2:] - t[:, :2], 0.0)], axis=1)


def reference_scores(scores: Any) -> np.ndarray:
    """``float64 [N]``: each score as the reference writes and the evaluator reads it back,
    ``float(str(numpy.float32(score)))`` (the shortest decimal of its float32 value)."""
    s = _to_numpy(scores).reshape(-1).astype(np.float32)
    return np.array([float(str(v)) for v in s], dtype=np.float64)


def reference_int_predictions(values: Any) -> np.ndarray:
    """A ``"float"`` submission's ``[N, 5]`` (x, y, w, h, score) in the ``"reference-int"``
    convention, so that one detection run scores both ways.

    Exact when the float lines hold float32 boxes (every runtime's) written by :func:`write_detections`:
    ``w = x2 - x1`` of two float32 values is exact in float64, so ``x + w`` is ``x2`` again.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1, 5)
    xyxy = np.concatenate([v[:, :2], v[:, :2] + v[:, 2:4]], axis=1)
    return np.concatenate([reference_int_xywh(xyxy), reference_scores(v[:, 4])[:, None]], axis=1)


def write_detections(out_dir: str | os.PathLike[str], image_key: str, boxes_xyxy: Any, scores: Any, *,
                     box_format: SubmissionBoxFormat = "float") -> Path:
    """Write one image's detections (``[N, 4]`` x1 y1 x2 y2, ``[N]``; arrays or tensors) as
    ``<out_dir>/<event>/<name>.txt``: ``x y w h`` from :func:`xyxy_to_xywh` (``"float"``) or
    :func:`reference_int_xywh` with :func:`reference_scores` (``"reference-int"``)."""
    event, sep, name = image_key.replace("\\", "/").rpartition("/")
    if not sep or not event:
        raise ValueError(f"image keys must be '<event>/<image>', got {image_key!r}")
    reference = check_box_format(box_format) == "reference-int"
    if reference:
        xywh, s = reference_int_xywh(boxes_xyxy), reference_scores(scores)
    else:
        xywh, s = xyxy_to_xywh(boxes_xyxy), _to_numpy(scores).reshape(-1)
    values = np.concatenate([xywh, s[:, None]], axis=1)
    name = _strip_image_extension(name)
    return write_prediction_file(Path(out_dir) / event / f"{name}.txt", name, values, int_boxes=reference)


def iter_detections(images_dir: str | os.PathLike[str], detect: Callable[[list[np.ndarray]], Sequence[Any]], *,
                    batch_size: int = 8, progress: bool = True,
                    keys: Collection[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Run ``detect`` over ``<images_dir>/<event>/<image>``; yields ``("<event>/<name>", result)``.

    Args:
        detect: maps a list of ``HxWx3`` uint8 BGR images to one result per image, each with
            ``.boxes`` ``[N, 4]`` x1 y1 x2 y2 and ``.scores`` ``[N]`` sorted by descending score
            (e.g. ``Detector.detect``).
        batch_size: images per ``detect`` call. Only images of identical size share a batch, so
            batching never pads an image (padding would change the network's border responses).
        keys: only these ``"<event>/<name>"`` images (``None``: all); a key with no image file
            under ``images_dir`` is an error.

    Results come in processing order (a batch is flushed when it is full, the rest at the end).
    """
    import cv2

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = iter_image_files(images_dir)
    if not files:
        raise FileNotFoundError(f"no images under {images_dir}/<event>/")
    if keys is not None:
        wanted = set(keys)
        files = [(key, path) for key, path in files if key in wanted]
        if len(files) != len(wanted):
            missing = sorted(wanted - {key for key, _ in files})
            raise FileNotFoundError(f"{len(missing)} requested images are not under {images_dir}, e.g. {missing[0]}")
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}

    def flush(shape: tuple[int, ...]) -> list[tuple[str, Any]]:
        items = by_shape.pop(shape)
        results = detect([img for _, img in items])
        if len(results) != len(items):
            raise RuntimeError(f"detect returned {len(results)} results for {len(items)} images")
        bar.update(len(items))
        return [(key, det) for (key, _), det in zip(items, results, strict=True)]

    with tqdm(total=len(files), desc="detecting", unit="img", disable=not progress) as bar:
        for key, path in files:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path}: not a readable image")
            by_shape.setdefault(image.shape, []).append((key, image))
            if len(by_shape[image.shape]) >= batch_size:
                yield from flush(image.shape)
        for shape in list(by_shape):
            yield from flush(shape)


def predict_submission(images_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                       detect: Callable[[list[np.ndarray]], Sequence[Any]], *, batch_size: int = 8,
                       progress: bool = True, keys: Collection[str] | None = None,
                       box_format: SubmissionBoxFormat = "float") -> list[str]:
    """Run ``detect`` over ``<images_dir>/<event>/<image>`` (:func:`iter_detections`) and write a
    submission folder ``<out_dir>/<event>/<name>.txt`` in the ``box_format`` convention (see the
    module docstring; ``"reference-int"`` to compare with biubug6's published table).

    Returns:
        The ``"<event>/<name>"`` keys written, in processing order.
    """
    check_box_format(box_format)
    written: list[str] = []
    for key, det in iter_detections(images_dir, detect, batch_size=batch_size, progress=progress, keys=keys):
        write_detections(out_dir, key, det.boxes, det.scores, box_format=box_format)
        written.append(key)
    return written


def select_images(keys: Iterable[str], *, every: int = 1, events: Collection[str] | None = None) -> list[str]:
    """A fixed subset of ``"<event>/<name>"`` keys: every ``every``-th key of each event (keys
    sorted, the first one kept), optionally only the ``events`` (names such as ``0--Parade`` or their
    numbers ``0``). Sorted."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    by_event: dict[str, list[str]] = {}
    for key in sorted(keys):
        by_event.setdefault(key.split("/", 1)[0], []).append(key)
    out: list[str] = []
    for event, names in by_event.items():
        if events is not None and event not in events and event.split("--", 1)[0] not in events:
            continue
        out.extend(names[::every])
    return out


def iter_image_files(images_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``("<event>/<name>", path)`` for every image under ``images_dir/<event>/``, sorted."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    found = sorted(p for p in images_dir.glob("*/*") if p.suffix.lower() in _IMAGE_EXTENSIONS and p.is_file())
    return [(f"{p.parent.name}/{p.stem}", p) for p in found]
