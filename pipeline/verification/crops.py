"""Alignment sources: how the ArcFace 112x112 crop of a verification photo is made.

* ``provided``: the protocol's own five landmarks (IJB-C's ``name_5pts_score`` file), aligned with the
  pipeline's ArcFace similarity alignment (:func:`pipeline.align.align_faces`); degenerate landmarks
  (all points equal) give no crop (``NO_FACE``, counted).
* ``detector``: our detector on the photo through the pipeline's :class:`pipeline.stage.FaceAligner`
  (:func:`face_aligner`), configured with the project's one set of alignment defaults,
  :class:`pipeline.config.AlignConfig` (face choice ``select``, ``min_score``, detection sizes),
  keeping one face, aligned the same way. When the detector
  finds no face, the protocol's landmarks are used instead (status ``FALLBACK``, counted); without
  protocol landmarks, the evaluation's ``on_no_face`` decides: ``center-crop`` (the align job's
  ``--on-no-face center-crop``: the photo's centred square, resized; ``FALLBACK``) or ``exclude``
  (no crop, ``NO_FACE``).
* ``box``: no alignment, the baseline: the square with the chosen detection box's centre and longer
  side, scaled to the crop size with ``cv2.warpAffine`` (no rotation). When the detector finds no
  face, the whole photo's centred square is used (``FALLBACK``, counted) - for loose face crops
  that is the face; for other photos it is the honest "no detector" baseline.

The detector runs once per photo and serves both ``detector`` and ``box``. A face counts when
``score >= align.min_score`` (the aligner's rule; the golden run's ``> 0.5`` differs only at exactly 0.5).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector.spec import DetectorSpec
from pipeline.align import align_faces, center_crop
from pipeline.config import AlignConfig

PROVIDED = "provided"
DETECTOR = "detector"
BOX = "box"
ALIGNMENT_SOURCES: tuple[str, ...] = (PROVIDED, DETECTOR, BOX)
NO_FACE_POLICIES: tuple[str, ...] = ("exclude", "center-crop")


def parse_sources(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"detector,box"`` -> ``("detector", "box")``; validates names, refuses duplicates."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no alignment source given; choose from " + ", ".join(ALIGNMENT_SOURCES))
    unknown = [n for n in names if n not in ALIGNMENT_SOURCES]
    if unknown:
        raise ValueError(f"unknown alignment source(s) {unknown}; choose from {', '.join(ALIGNMENT_SOURCES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"alignment source listed twice in {names}")
    return tuple(names)


class CropStatus(enum.IntEnum):
    OK = 0
    FALLBACK = 1
    """Detector found no face: ``detector`` used the protocol landmarks, ``box`` the whole photo."""
    NO_FACE = 2
    MISSING = 3
    UNREADABLE = 4


VERIFICATION_SELECT: tuple[str, ...] = ("largest", "central", "score")
"""The :attr:`pipeline.config.AlignConfig.select` modes verification accepts (one face per photo)."""


def check_align(align: AlignConfig) -> AlignConfig:
    """``align`` if verification can use it: an :class:`AlignConfig` choosing one face
    (:data:`VERIFICATION_SELECT`) of BGR photos; else :class:`ValueError` / :class:`TypeError`."""
    if not isinstance(align, AlignConfig):
        raise TypeError(f"align must be a pipeline.config.AlignConfig, got {type(align).__name__}")
    if align.select not in VERIFICATION_SELECT:
        raise ValueError(f"align.select must be one of {', '.join(VERIFICATION_SELECT)}; got {align.select!r}")
    if align.color != "bgr":
        raise ValueError(f"verification reads photos as BGR; align.color must be 'bgr', got {align.color!r}")
    return align


def check_on_no_face(on_no_face: str) -> str:
    if on_no_face not in NO_FACE_POLICIES:
        raise ValueError(f"on_no_face must be one of {', '.join(NO_FACE_POLICIES)}, got {on_no_face!r}")
    return on_no_face


def face_aligner(*, align: AlignConfig, detector: DetectorSpec) -> Any:
    """The pipeline's :class:`pipeline.stage.FaceAligner` (detect, select one face, align) of the
    ``detector`` and ``box`` sources: ``align`` keeping one face (``max_faces=1``); the
    detector is built here, from ``detector`` (its ``resize`` is not used: ``align.resize`` decides)."""
    from pipeline.stage import FaceAligner

    if not isinstance(detector, DetectorSpec):
        raise TypeError(f"detector must be a DetectorSpec, got {type(detector).__name__}")
    return FaceAligner(detector=detector.build, config=dataclasses.replace(check_align(align), max_faces=1))


def settings_json(*, align: AlignConfig, detector: DetectorSpec, on_no_face: str) -> dict:
    """The ``detector``/``box`` sources' settings as reported (JSON-safe)."""
    resize = align.resize.to_string()
    retry = None if align.retry_resize is None else align.retry_resize.to_string()
    return {"detector": {**detector.fingerprint(), "resize": resize},
            "align": {"select": align.select, "min_score": float(align.min_score), "resize": resize,
                      "refine_size": align.refine_size, "retry_resize": retry,
                      "min_face_size": float(align.min_face_size)},
            "on_no_face": on_no_face}


def square_box_matrix(box: np.ndarray, size: int = 112) -> np.ndarray:
    """``[2, 3]`` matrix mapping the square of ``box``'s centre and longer side onto ``[0, size]^2``.

    Pure scale and translation: ``x' = s * (x - (cx - L / 2))`` with ``s = size / L``.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x2 - x1, y2 - y1)
    if not side > 0:
        raise ValueError(f"degenerate box {box}")
    s = size / side
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array([[s, 0.0, s * (side / 2.0 - cx)], [0.0, s, s * (side / 2.0 - cy)]], dtype=np.float64)


def box_crop(image: np.ndarray, box: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``box`` source's crop: square of the box's centre and longer side, resized, no rotation."""
    return cv2.warpAffine(image, square_box_matrix(box, size), (size, size), flags=cv2.INTER_LINEAR,
                          borderValue=0.0)


def whole_image_box(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array([0.0, 0.0, float(w), float(h)])


@dataclass(frozen=True, eq=False, kw_only=True)
class PhotoCrops:
    """Crops of one photo for each requested source (``None`` where the source has none)."""

    crops: dict[str, np.ndarray | None]
    status: dict[str, CropStatus]
    scores: dict[str, float]
    """Faceness score per source: the detection score, or the protocol's score on fallback (1.0 if none)."""


class CropMaker:
    """Makes every requested source's crop of one photo; the face aligner (if needed) runs once.

    ``aligner`` is the pipeline's :class:`pipeline.stage.FaceAligner` (:func:`face_aligner`)
    configured to keep one face; it serves the ``detector`` source (its aligned crop) and the ``box``
    source (the chosen face's box).
    """

    def __init__(self, *, sources: tuple[str, ...], aligner: Any | None = None, image_size: int = 112,
                 on_no_face: str = "exclude"):
        self.sources = parse_sources(sources)
        self.needs_detector = DETECTOR in self.sources or BOX in self.sources
        if self.needs_detector and aligner is None:
            raise ValueError(f"sources {self.sources} need a face aligner (detector)")
        if aligner is not None and aligner.config.image_size != image_size:
            raise ValueError(f"aligner makes {aligner.config.image_size}px crops, expected {image_size}px")
        self.aligner = aligner
        self.image_size = image_size
        self.on_no_face = check_on_no_face(on_no_face)

    def detect(self, image: np.ndarray) -> Any | None:
        """The selected :class:`pipeline.stage.AlignedFace` of ``image`` (BGR), or ``None``."""
        faces = self.aligner.align([image])[0]
        return faces[0] if faces else None

    def __call__(self, image: np.ndarray, *, landmarks: np.ndarray | None = None,
                 score: float | None = None) -> PhotoCrops:
        crops: dict[str, np.ndarray | None] = {}
        status: dict[str, CropStatus] = {}
        scores: dict[str, float] = {}
        fallback_score = 1.0 if score is None else float(score)
        provided_crop = None
        if PROVIDED in self.sources and landmarks is None:
            raise ValueError("the 'provided' source needs protocol landmarks for every photo")
        if landmarks is not None and (PROVIDED in self.sources or DETECTOR in self.sources):
            try:
                provided_crop = align_faces(image, np.asarray(landmarks, np.float64)[None], self.image_size).crops[0]
            except ValueError:  # degenerate protocol landmarks (e.g. all points equal): no provided face
                provided_crop = None
        if PROVIDED in self.sources:
            if provided_crop is None:
                crops[PROVIDED], status[PROVIDED], scores[PROVIDED] = None, CropStatus.NO_FACE, 0.0
            else:
                crops[PROVIDED], status[PROVIDED], scores[PROVIDED] = provided_crop, CropStatus.OK, fallback_score
        face = self.detect(image) if self.needs_detector else None
        if DETECTOR in self.sources:
            if face is not None:
                crops[DETECTOR], status[DETECTOR], scores[DETECTOR] = face.crop, CropStatus.OK, face.score
            elif provided_crop is not None:
                crops[DETECTOR], status[DETECTOR], scores[DETECTOR] = provided_crop, CropStatus.FALLBACK, fallback_score
            elif self.on_no_face == "center-crop":
                crops[DETECTOR] = center_crop(image, (self.image_size, self.image_size))
                status[DETECTOR], scores[DETECTOR] = CropStatus.FALLBACK, fallback_score
            else:
                crops[DETECTOR], status[DETECTOR], scores[DETECTOR] = None, CropStatus.NO_FACE, 0.0
        if BOX in self.sources:
            if face is not None:
                crops[BOX] = box_crop(image, face.box, self.image_size)
                status[BOX], scores[BOX] = CropStatus.OK, face.score
            else:
                crops[BOX] = box_crop(image, whole_image_box(image), self.image_size)
                status[BOX], scores[BOX] = CropStatus.FALLBACK, fallback_score
        return PhotoCrops(crops=crops, status=status, scores=scores)
