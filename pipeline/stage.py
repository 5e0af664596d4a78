"""The face-alignment stage: detect, select, align; for lists of images, Ray Data and torch.

:class:`FaceAligner` is built once from a :class:`detector.Detector` (or a zero-argument factory of
one, so that Ray actors and DataLoader workers build their own) and a frozen :class:`AlignConfig`.
Each call sends all images of the batch to the detector together (one ``Detector.detect`` call),
selects faces per image (:mod:`pipeline.select`), estimates every similarity of the batch in one
vectorised pass and warps the crops (:mod:`pipeline.align`).

Two call forms, one object:

* ``aligner.align(images)`` (or ``aligner(images)``) with a sequence of ``HxWx3`` uint8 images ->
  ``list[list[AlignedFace]]``, one list per image in selection order.
* ``aligner.process_batch(batch)`` (or ``aligner(batch)``) with a ``dict`` of numpy columns ->
  ``dict`` of numpy columns: usable unchanged as ``ray.data.Dataset.map_batches(FaceAligner,
  fn_constructor_kwargs=..., batch_format="numpy")``.

Ray Data usage::

    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.map_batches(
        FaceAligner,
        fn_constructor_kwargs={
            "detector": functools.partial(Detector.from_weights, weights, device="cpu"),
            "config": AlignConfig(on_error="record"),
        },
        batch_size=8, compute=ray.data.ActorPoolStrategy(size=2), batch_format="numpy",
    )

Ray / dict column contract (``B`` rows in, ``B`` rows out, one row per image)
-------------------------------------------------------------------------------
Input (at least one of ``image`` / ``bytes``; if ``image`` is present it is used):

====================  =====================================================================
``image``             ``[B]`` object array of ``HxWx3`` uint8 arrays (or a ``[B, H, W, 3]`` uint8
                      array), channel order ``AlignConfig.color`` (BGR by default;
                      ``ray.data.read_images`` produces RGB: use ``color="rgb"``). ``HxW`` gray and
                      ``HxWx4`` (alpha dropped) are accepted.
``bytes``             ``[B]`` object array of encoded files (``ray.data.read_binary_files``),
                      decoded by :func:`pipeline.images.decode_image` (format by content, EXIF
                      orientation, ``AlignConfig.max_pixels`` cap).
``path``              optional, ``[B]`` str; names the file in read errors.
any other column      passed through unchanged.
====================  =====================================================================

Output (``image`` and ``bytes`` are dropped; ``K`` = faces kept for that row, possibly 0):

====================  =====================================================================
``num_faces``         ``[B]`` int64, ``K``.
``crops``             ``[B]`` object, each ``[K, h, w, 3]`` uint8 aligned crops, channel order
                      ``AlignConfig.color``; ``(h, w)`` = ``AlignConfig.crop_shape``.
``boxes``             ``[B]`` object, each ``[K, 4]`` float32 x1 y1 x2 y2 in image pixels.
``scores``            ``[B]`` object, each ``[K]`` float32 detector confidences.
``landmarks``         ``[B]`` object, each ``[K, 5, 2]`` float32 image pixels.
``matrices``          ``[B]`` object, each ``[K, 2, 3]`` float64 image -> crop.
``face_index``        ``[B]`` object, each ``[K]`` int64: index of the face in the detector's
                      score-sorted detections of that image.
``image_height``,     ``[B]`` int64 size of the (decoded, upright) image; 0 for a row that
``image_width``       could not be read.
``error``             ``[B]`` str: ``""``, or the :class:`~pipeline.images.ImageReadError` message
                      when ``AlignConfig.on_error == "record"`` (the row then has ``K = 0``).
pass-through          every other input column, e.g. ``path``.
====================  =====================================================================

Ray turns the per-row ``[K, ...]`` arrays into (possibly variable-shaped) tensor columns; rows read
back as numpy arrays of the shapes above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import cv2
import numpy as np

from detector.inference import Detections, Detector
from pipeline.align import estimate_norm_batch, invert_affine, transform_points, warp_crops
from pipeline.config import AlignConfig
from pipeline.images import ImageReadError, decode_image
from pipeline.select import select_faces

__all__ = ["AlignConfig", "AlignedFace", "FaceAligner", "OUTPUT_COLUMNS"]

#: Columns :meth:`FaceAligner.process_batch` always writes (besides pass-through columns).
OUTPUT_COLUMNS: tuple[str, ...] = (
    "num_faces", "crops", "boxes", "scores", "landmarks", "matrices", "face_index",
    "image_height", "image_width", "error",
)
_INPUT_COLUMNS = ("image", "bytes")


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One aligned face.

    Attributes:
        crop: ``[h, w, 3]`` uint8, channel order of the input.
        box: ``[4]`` float32 x1 y1 x2 y2 in image pixels.
        score: detector confidence.
        landmarks: ``[5, 2]`` float32 image pixels (left eye, right eye, nose, mouth left/right).
        matrix: ``[2, 3]`` float64 image -> crop (``cv2.warpAffine`` convention).
        inverse: ``[2, 3]`` float64 crop -> image.
        face_index: index of this face in the detector's score-sorted detections of the image.
    """

    crop: np.ndarray
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    face_index: int

    @property
    def crop_landmarks(self) -> np.ndarray:
        """``[5, 2]`` float64 landmarks in crop pixels (near the template for a good fit)."""
        return transform_points(self.landmarks, self.matrix)


def _to_three_channels(image: Any, index: int) -> np.ndarray:
    """Validate a decoded image; gray -> 3 channels, 4 channels -> alpha dropped."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"image {index}: expected HxW, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


class FaceAligner:
    """Detect, select and align faces in batches of images (see the module docstring).

    Args:
        detector: a :class:`detector.Detector`, or a zero-argument callable returning one (called
            once, here; pass e.g. ``functools.partial(Detector.from_weights, path)`` so that Ray
            actors build their own model instead of unpickling one).
        config: the :class:`AlignConfig`.
    """

    def __init__(self, *, detector: Detector | Callable[[], Detector],
                 config: AlignConfig = AlignConfig()) -> None:
        if not isinstance(config, AlignConfig):
            raise TypeError(f"config must be an AlignConfig, got {type(config).__name__}")
        det = detector if isinstance(detector, Detector) else detector()
        if not hasattr(det, "detect"):
            raise TypeError(f"detector must be a Detector or a factory of one, got {type(det).__name__}")
        self._detector = det
        self._config = config
        self._spec = config.crop_spec
        # The detector keeps scores strictly above its threshold; the float32 number just below
        # min_score makes that "score >= min_score" (scores are float32).
        self._conf_threshold = (
            float(np.nextafter(np.float32(config.min_score), np.float32(-np.inf)))
            if config.min_score > 0 else None
        )

    @property
    def config(self) -> AlignConfig:
        return self._config

    @property
    def detector(self) -> Detector:
        return self._detector

    def __repr__(self) -> str:
        return f"FaceAligner(config={self._config!r})"

    # ------------------------------------------------------------------ list API
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One detector call for all ``images`` (channel order ``config.color``).

        Returns numpy :class:`Detections` per image, score-sorted, holding every face with
        ``score >= config.min_score`` (before the size filter and selection; ``face_index`` of an
        :class:`AlignedFace` indexes these).
        """
        if len(images) == 0:
            return []
        images = [_to_three_channels(im, i) for i, im in enumerate(images)]
        bgr = images if self._config.color == "bgr" else [cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in images]
        dets = self._detector.detect(list(bgr), resize=self._config.resize,
                                     conf_threshold=self._conf_threshold)
        return [d.numpy() for d in dets]

    def align(self, images: Sequence[np.ndarray]) -> list[list[AlignedFace]]:
        """Detect (one batched detector call), select and align.

        Args:
            images: ``HxWx3`` uint8 images in ``config.color`` order (``HxW`` / ``HxWx4`` accepted).

        Returns:
            one list of :class:`AlignedFace` per image, in selection order (possibly empty).
        """
        prepared = [_to_three_channels(im, i) for i, im in enumerate(images)]
        return self.align_detections(prepared, self.detect(prepared))

    def align_detections(self, images: Sequence[np.ndarray],
                         detections: Sequence[Detections]) -> list[list[AlignedFace]]:
        """Select and align given detections (no detector call); see :meth:`align`."""
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detections")
        cfg = self._config
        images = [_to_three_channels(im, i) for i, im in enumerate(images)]
        chosen: list[tuple[np.ndarray, Detections]] = []
        for img, det in zip(images, detections):
            det = det.numpy()
            idx = select_faces(det.boxes, det.scores, image_shape=img.shape, mode=cfg.select,
                               min_score=cfg.min_score, min_face_size=cfg.min_face_size,
                               max_faces=cfg.max_faces)
            chosen.append((idx, det))
        counts = [len(idx) for idx, _ in chosen]
        total = sum(counts)
        if total == 0:
            return [[] for _ in images]
        landmarks = np.concatenate([det.landmarks[idx] for idx, det in chosen]).reshape(total, 5, 2)
        matrices = estimate_norm_batch(landmarks, cfg.image_size, variant=cfg.crop)
        inverse = invert_affine(matrices)
        out: list[list[AlignedFace]] = []
        start = 0
        for img, (idx, det), k in zip(images, chosen, counts):
            sl = slice(start, start + k)
            start += k
            crops = warp_crops(img, matrices[sl], self._spec) if k else None
            out.append([
                AlignedFace(crop=crops[j], box=det.boxes[i].copy(), score=float(det.scores[i]),
                            landmarks=landmarks[sl][j], matrix=matrices[sl][j],
                            inverse=inverse[sl][j], face_index=int(i))
                for j, i in enumerate(idx)
            ])
        return out

    # ------------------------------------------------------------------ dict (Ray) API
    def process_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Dict-of-columns form for ``ray.data.Dataset.map_batches(..., batch_format="numpy")``.

        See the module docstring for the column contract.

        Raises:
            ValueError: neither ``image`` nor ``bytes`` column, or columns of unequal length.
            ImageReadError: an unreadable ``bytes`` row when ``config.on_error == "raise"``.
        """
        cfg = self._config
        if "image" in batch:
            source_col, column = "image", batch["image"]
        elif "bytes" in batch:
            source_col, column = "bytes", batch["bytes"]
        else:
            raise ValueError(f"batch needs an 'image' or 'bytes' column, got {sorted(batch)}")
        n = len(column)
        for name, values in batch.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} rows, expected {n}")
        paths = batch.get("path")
        images: list[np.ndarray | None] = [None] * n
        errors = [""] * n
        for i in range(n):
            if source_col == "image":
                images[i] = _to_three_channels(column[i], i)
                continue
            name = str(paths[i]) if paths is not None else f"<bytes row {i}>"
            try:
                images[i] = decode_image(column[i], source=name, max_pixels=cfg.max_pixels,
                                         exif_orientation=cfg.exif_orientation, color=cfg.color)
            except (ImageReadError, TypeError) as e:
                err = e if isinstance(e, ImageReadError) else ImageReadError(name, str(e))
                if cfg.on_error == "raise":
                    raise err from e
                errors[i] = str(err)
        valid = [i for i in range(n) if images[i] is not None]
        faces_by_row: dict[int, list[AlignedFace]] = {}
        if valid:
            faces = self.align([images[i] for i in valid])
            faces_by_row = dict(zip(valid, faces))

        h, w = self._spec.shape
        out: dict[str, np.ndarray] = {
            k: v for k, v in batch.items() if k not in _INPUT_COLUMNS and k not in OUTPUT_COLUMNS
        }
        cols = {k: np.empty(n, dtype=object) for k in
                ("crops", "boxes", "scores", "landmarks", "matrices", "face_index")}
        for i in range(n):
            faces = faces_by_row.get(i, [])
            k = len(faces)
            if k:
                cols["crops"][i] = np.stack([f.crop for f in faces])
                cols["boxes"][i] = np.stack([f.box for f in faces]).astype(np.float32, copy=False)
                cols["scores"][i] = np.array([f.score for f in faces], dtype=np.float32)
                cols["landmarks"][i] = np.stack([f.landmarks for f in faces]).astype(np.float32)
                cols["matrices"][i] = np.stack([f.matrix for f in faces])
                cols["face_index"][i] = np.array([f.face_index for f in faces], dtype=np.int64)
            else:
                cols["crops"][i] = np.zeros((0, h, w, 3), dtype=np.uint8)
                cols["boxes"][i] = np.zeros((0, 4), dtype=np.float32)
                cols["scores"][i] = np.zeros((0,), dtype=np.float32)
                cols["landmarks"][i] = np.zeros((0, 5, 2), dtype=np.float32)
                cols["matrices"][i] = np.zeros((0, 2, 3), dtype=np.float64)
                cols["face_index"][i] = np.zeros((0,), dtype=np.int64)
        out["num_faces"] = np.array([len(faces_by_row.get(i, [])) for i in range(n)], dtype=np.int64)
        out.update(cols)
        out["image_height"] = np.array([0 if im is None else im.shape[0] for im in images], dtype=np.int64)
        out["image_width"] = np.array([0 if im is None else im.shape[1] for im in images], dtype=np.int64)
        out["error"] = np.array(errors, dtype=object)
        return out

    # ------------------------------------------------------------------ one entry point
    @overload
    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]: ...

    @overload
    def __call__(self, batch: Sequence[np.ndarray]) -> list[list[AlignedFace]]: ...

    def __call__(self, batch):
        """:meth:`process_batch` for a mapping of columns, :meth:`align` for a sequence of images."""
        if isinstance(batch, Mapping):
            return self.process_batch(batch)
        return self.align(batch)
