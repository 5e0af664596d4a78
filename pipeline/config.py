"""The frozen options of the detect-select-align stage, importable without torch.

:class:`AlignConfig` is what :class:`pipeline.stage.FaceAligner` (which loads torch) and the batch
job (:mod:`pipeline.job`, whose driver and read/write tasks never need torch) are configured with.
``pipeline.stage.AlignConfig`` is the same class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from detector.config import ResizePolicy
from pipeline.align import CropSpec, CropVariant
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.select import SELECT_MODES, SelectMode

__all__ = ["AlignConfig"]


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """Options of :class:`FaceAligner` (validated on construction).

    Attributes:
        image_size: crop size: a multiple of 112 or 128 for ``crop="arcface"``; the crop height, a
            multiple of 112, for ``crop="arcface_112x96"`` (see :class:`pipeline.align.CropSpec`).
        crop: ``"arcface"`` (square, insightface's template rule) or ``"arcface_112x96"``.
        select: ``"central"`` (default; facenet and insightface: area - 2 * squared centre
            offset), ``"largest"`` box area, ``"score"``, or ``"all"`` (detector order), see
            :mod:`pipeline.select`.
        max_faces: faces kept per image after ordering; ``None``: 1 for the single-face modes,
            no limit for ``"all"``.
        min_score: keep faces with score >= this (default 0.8). It is also passed to the
            detector as its confidence threshold (NMS keeps the same boxes above it; with
            ``vote_iou``, the candidates above it are the ones that vote). Values below the
            detector's own threshold (0.02 by default) do not lower it.
        min_face_size: keep faces whose shorter box side is >= this many image pixels.
        resize: the coarse detection size, a resize policy; default ``cap:640`` (photos whose
            long side exceeds 640 are shrunk to 640, smaller ones are kept: never enlarged).
            Accepts anything :meth:`detector.ResizePolicy.parse` does; stored as a
            :class:`ResizePolicy`.
        refine_size: the kept faces that the coarse pass saw smaller than this many pixels are
            detected again in a window where they are this size (or the photo's own size when
            smaller), and take their box and landmarks from there (:mod:`pipeline.refine`);
            ``None`` or 0: no refinement.
        retry_resize: a photo without an eligible face at ``resize`` is detected again at this
            size before it is called ``no_face`` (only where it is finer); ``None``: no retry.
        vote_iou: every detection (coarse, retry, refinement) takes the score-weighted mean of
            the boxes and landmarks of the candidates overlapping it by at least this IoU
            (:attr:`detector.api.PostprocessConfig.vote_iou`); default 0.6. Near-tied anchors then
            cannot swap a face's landmarks (OpenVINO bf16 against torch fp32 through this stage),
            and the landmarks jitter ~25 % less under few-pixel shifts (docs/widerface.md, "The
            bf16 landmark tail"). ``None``: the detector's own setting (off by default: the
            reference's NMS survivors).
        color: channel order of input images and output crops, ``"bgr"`` or ``"rgb"``; encoded
            inputs are decoded into this order. The detector is always fed BGR.
        max_pixels: pixel cap for encoded inputs (``None``: no cap of ours).
        exif_orientation: apply EXIF orientation to encoded inputs.
        on_error: for dict batches, ``"raise"`` the first :class:`ImageReadError`, or
            ``"record"`` it in the ``error`` column and return zero faces for that row.
    """

    image_size: int = 112
    crop: CropVariant = "arcface"
    select: SelectMode = "central"
    max_faces: int | None = None
    min_score: float = 0.8
    min_face_size: float = 0.0
    resize: ResizePolicy | str | int | None = field(default_factory=lambda: ResizePolicy.cap(640))
    refine_size: int | None = 224
    retry_resize: ResizePolicy | str | int | None = field(default_factory=lambda: ResizePolicy.cap(1600))
    vote_iou: float | None = 0.6
    color: Literal["bgr", "rgb"] = "bgr"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    exif_orientation: bool = True
    on_error: Literal["raise", "record"] = "raise"

    def __post_init__(self) -> None:
        CropSpec.create(self.image_size, self.crop)  # validates size and variant
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if self.max_faces is not None and (isinstance(self.max_faces, bool) or int(self.max_faces) < 1):
            raise ValueError(f"max_faces must be None or >= 1, got {self.max_faces!r}")
        if not (0.0 <= float(self.min_score) <= 1.0):
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score!r}")
        if not (float(self.min_face_size) >= 0.0):
            raise ValueError(f"min_face_size must be >= 0, got {self.min_face_size!r}")
        if self.vote_iou is not None and not 0.0 < float(self.vote_iou) <= 1.0:
            raise ValueError(f"vote_iou must be None or in (0, 1], got {self.vote_iou!r}")
        if self.color not in ("bgr", "rgb"):
            raise ValueError(f"color must be 'bgr' or 'rgb', got {self.color!r}")
        if self.max_pixels is not None and int(self.max_pixels) < 1:
            raise ValueError(f"max_pixels must be None or positive, got {self.max_pixels!r}")
        if self.on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {self.on_error!r}")
        object.__setattr__(self, "resize", ResizePolicy.parse(self.resize))
        if self.refine_size is not None and (isinstance(self.refine_size, bool) or int(self.refine_size) < 0):
            raise ValueError(f"refine_size must be None or >= 0, got {self.refine_size!r}")
        object.__setattr__(self, "refine_size", int(self.refine_size) if self.refine_size else None)
        if self.retry_resize is not None:
            object.__setattr__(self, "retry_resize", ResizePolicy.parse(self.retry_resize))

    @property
    def crop_spec(self) -> CropSpec:
        return CropSpec.create(self.image_size, self.crop)

    @property
    def crop_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the crops."""
        return self.crop_spec.shape
