"""The face-alignment stage: detect, select, align; for lists of images (a training ``Dataset``,
a verification run, the align job's actors).

:class:`FaceAligner` is built once from any :class:`detector.api.FaceDetector` (or a zero-argument
factory of one, e.g. ``DetectorSpec(...).build``, so that Ray actors and DataLoader workers build
their own) and a frozen :class:`AlignConfig`. Each call sends all images of the batch to the
detector together (one ``detect`` call), selects faces per image (:mod:`pipeline.select`),
estimates every similarity of the batch in one vectorised pass and warps the crops
(:mod:`pipeline.align`).

``aligner.align(images)`` (or ``aligner(images)``) with a sequence of ``HxWx3`` uint8 images ->
``list[list[AlignedFace]]``, one list per image in selection order. Images are validated once, here.
The Ray Data adapter is the align job's :class:`pipeline.job.stages.FaceCropPredictor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detector.api import Detections, FaceDetector, as_bgr_uint8
from pipeline.align import estimate_norm_batch, invert_affine, transform_points, warp_crops
from pipeline.config import AlignConfig
from pipeline.select import select_faces

__all__ = ["AlignConfig", "AlignedFace", "FaceAligner"]


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


class FaceAligner:
    """Detect, select and align faces in batches of images (see the module docstring).

    Args:
        detector: a :class:`detector.api.FaceDetector`, or a zero-argument callable returning one
            (called once, here; pass e.g. ``DetectorSpec(...).build`` so that Ray actors build
            their own model instead of unpickling one).
        config: the :class:`AlignConfig`.
    """

    def __init__(self, *, detector: FaceDetector | Callable[[], FaceDetector],
                 config: AlignConfig = AlignConfig()) -> None:
        if not isinstance(config, AlignConfig):
            raise TypeError(f"config must be an AlignConfig, got {type(config).__name__}")
        det = detector if isinstance(detector, FaceDetector) else detector()
        if not isinstance(det, FaceDetector):
            raise TypeError(f"detector must be a FaceDetector or a factory of one, got {type(det).__name__}")
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
    def detector(self) -> FaceDetector:
        return self._detector

    def __repr__(self) -> str:
        return f"FaceAligner(config={self._config!r})"

    # ------------------------------------------------------------------ list API
    @staticmethod
    def _prepare(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The one validation of the caller's images (gray -> 3 channels, alpha dropped)."""
        return [np.ascontiguousarray(as_bgr_uint8(im, i)) for i, im in enumerate(images)]

    def _detect(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        bgr = images if self._config.color == "bgr" else [cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in images]
        dets = self._detector.detect(bgr, resize=self._config.resize, conf_threshold=self._conf_threshold)
        return [d.numpy() for d in dets]

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One detector call for all ``images`` (channel order ``config.color``).

        Returns numpy :class:`Detections` per image, score-sorted, holding every face with
        ``score >= config.min_score`` (before the size filter and selection; ``face_index`` of an
        :class:`AlignedFace` indexes these).
        """
        return self._detect(self._prepare(images)) if len(images) else []

    def align(self, images: Sequence[np.ndarray]) -> list[list[AlignedFace]]:
        """Detect (one batched detector call), select and align.

        Args:
            images: ``HxWx3`` uint8 images in ``config.color`` order (``HxW`` / ``HxWx4`` accepted).

        Returns:
            one list of :class:`AlignedFace` per image, in selection order (possibly empty).
        """
        prepared = self._prepare(images)
        return self._align(prepared, self._detect(prepared))

    def detect_and_align(self, images: Sequence[np.ndarray]) -> list[tuple[Detections, list[AlignedFace]]]:
        """Per image, its detections (as :meth:`detect`) and its aligned faces (as :meth:`align`)."""
        prepared = self._prepare(images)
        dets = self._detect(prepared)
        return list(zip(dets, self._align(prepared, dets)))

    def align_detections(self, images: Sequence[np.ndarray],
                         detections: Sequence[Detections]) -> list[list[AlignedFace]]:
        """Select and align given detections (no detector call); see :meth:`align`."""
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detections")
        return self._align(self._prepare(images), detections)

    def _align(self, images: list[np.ndarray], detections: Sequence[Detections]) -> list[list[AlignedFace]]:
        cfg = self._config
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

    __call__ = align
