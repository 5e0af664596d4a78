"""Running a detector over WIDER FACE validation images and writing a submission folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.evaluation.submission import _IMAGE_EXTENSIONS, _strip_image_extension, _to_numpy, write_prediction_file

__all__ = ["iter_detections", "iter_image_files", "predict_submission", "select_images", "write_detections",
           "xyxy_to_xywh"]


def xyxy_to_xywh(boxes_xyxy: Any) -> np.ndarray:
    """``float64 [N, 4]`` ``x y w h = x1, y1, max(x2 - x1, 0), max(y2 - y1, 0)`` of ``[N, 4]`` boxes
    (array or tensor). Degenerate boxes (a distance-coded detector such as SCRFD can decode
    ``x2 = x1 - 1e-4``) get size 0 rather than a negative one, which the protocol's files refuse."""
    b = _to_numpy(boxes_xyxy).reshape(-1, 4)
    return np.concatenate([b[:, :2], np.maximum(b[:, 2:] - b[:, :2], 0.0)], axis=1)


def write_detections(out_dir: str | os.PathLike[str], image_key: str, boxes_xyxy: Any, scores: Any) -> Path:
    """Write one image's detections (``[N, 4]`` x1 y1 x2 y2, ``[N]``; arrays or tensors) as
    ``<out_dir>/<event>/<name>.txt`` with ``x y w h`` from :func:`xyxy_to_xywh`."""
    event, sep, name = image_key.replace("\\", "/").rpartition("/")
    if not sep or not event:
        raise ValueError(f"image keys must be '<event>/<image>', got {image_key!r}")
    s = _to_numpy(scores).reshape(-1, 1)
    values = np.concatenate([xyxy_to_xywh(boxes_xyxy), s], axis=1)
    name = _strip_image_extension(name)
    return write_prediction_file(Path(out_dir) / event / f"{name}.txt", name, values)


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
                       progress: bool = True, keys: Collection[str] | None = None) -> list[str]:
    """Run ``detect`` over ``<images_dir>/<event>/<image>`` (:func:`iter_detections`) and write a
    submission folder ``<out_dir>/<event>/<name>.txt``.

    Returns:
        The ``"<event>/<name>"`` keys written, in processing order.
    """
    written: list[str] = []
    for key, det in iter_detections(images_dir, detect, batch_size=batch_size, progress=progress, keys=keys):
        write_detections(out_dir, key, det.boxes, det.scores)
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
