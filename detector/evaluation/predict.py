"""Running a detector over WIDER FACE validation images and writing a submission folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.evaluation.submission import _IMAGE_EXTENSIONS, _strip_image_extension, _to_numpy, write_prediction_file

__all__ = ["iter_image_files", "predict_submission", "write_detections"]


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
                       progress: bool = True, keys: Collection[str] | None = None) -> list[str]:
    """Run ``detect`` over ``<images_dir>/<event>/<image>`` and write a submission folder.

    Args:
        detect: maps a list of ``HxWx3`` uint8 BGR images to one result per image, each with
            ``.boxes`` ``[N, 4]`` x1 y1 x2 y2 and ``.scores`` ``[N]`` sorted by descending score
            (e.g. ``Detector.detect``).
        batch_size: images per ``detect`` call. Only images of identical size share a batch, so
            batching never pads an image (padding would change the network's border responses).
        keys: only these ``"<event>/<name>"`` images (``None``: all); a key with no image file
            under ``images_dir`` is an error.

    Returns:
        The ``"<event>/<name>"`` keys written, in processing order.
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
            found = {key for key, _ in files}
            missing = sorted(wanted - found)
            raise FileNotFoundError(f"{len(missing)} requested images are not under {images_dir}, e.g. {missing[0]}")
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
