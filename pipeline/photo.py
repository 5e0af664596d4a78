"""One photo as :meth:`pipeline.stage.FaceAligner.run` takes it (:class:`PhotoInput`) and decodes
it (:class:`Photo`): lazily, at the largest JPEG draft that each detection or crop allows.

A :class:`PhotoInput` is pixels (the full photo), an encoded file, or an encoded file with a JPEG
draft of it decoded already (by the job's read tasks, :mod:`pipeline.job.feed`): the coarse
detection then runs on that draft, and finer pixels (a refinement window, the crop of a face too
small in the draft, a retry at a larger size) are decoded from the file only when needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from detector.api import as_bgr_uint8
from pipeline.config import AlignConfig
from pipeline.images import decode_image, draft_factor, probe_image

__all__ = ["Photo", "PhotoInput"]

DRAFT_FACTORS = (2, 4, 8)
"""The JPEG draft reductions (:func:`pipeline.images.draft_factor`)."""


@dataclass(frozen=True, eq=False)
class PhotoInput:
    """One photo for :meth:`pipeline.stage.FaceAligner.run`.

    Attributes:
        image: ``HxWx3`` uint8 in ``config.color`` order: the full photo (or ``data``).
        data: the encoded file.
        source: its name in errors.
        landmarks: given ``[5, 2]`` photo-pixel points to align from without detection.
        draft: with ``data``: ``[h, w, 3]`` uint8 BGR, ``data`` decoded at 1/``factor`` as
            :func:`pipeline.images.decode_image` does with ``reduce=factor`` (and the aligner's
            ``max_pixels`` and ``exif_orientation``), e.g. by a read task; used where the aligner
            would decode that draft itself.
        shape: with ``draft``: the upright full photo's ``(H, W)``.
        factor: with ``draft``: its reduction, 2, 4 or 8 (``h == ceil(H / factor)``).
    """

    image: np.ndarray | None = None
    data: bytes | None = None
    source: str = ""
    landmarks: np.ndarray | None = None
    draft: np.ndarray | None = None
    shape: tuple[int, int] | None = None
    factor: int = 1

    def __post_init__(self) -> None:
        if self.draft is None:
            return
        if self.data is None or self.image is not None:
            raise ValueError("a PhotoInput's draft comes with the file's data (and no image)")
        if self.factor not in DRAFT_FACTORS or self.shape is None:
            raise ValueError(f"a draft needs the full shape and a factor in {DRAFT_FACTORS}, got "
                             f"shape={self.shape}, factor={self.factor}")
        d, (big_h, big_w) = self.draft, self.shape
        expected = (-(-int(big_h) // self.factor), -(-int(big_w) // self.factor), 3)
        if d.dtype != np.uint8 or d.shape != expected:
            raise ValueError(f"a 1/{self.factor} draft of a {big_w}x{big_h} photo is {expected} uint8, "
                             f"got {d.shape} {d.dtype}")


class Photo:
    """A photo decoded lazily: at the largest JPEG draft that a given scale allows, or in full.

    Decoded images are kept per reduction factor (1: the full photo); a :class:`PhotoInput`'s
    ``draft`` is the first of them."""

    def __init__(self, inp: PhotoInput, config: AlignConfig, *, draft: bool) -> None:
        self.source = inp.source
        self._config = config
        self._data = inp.data
        self._images: dict[int, np.ndarray] = {}
        self._draft = draft and inp.image is None
        self._info = None
        if inp.image is not None:
            image = np.ascontiguousarray(as_bgr_uint8(inp.image, 0))
            if config.color == "rgb":
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            self._images[1] = image
            self.shape = image.shape[:2]
        elif inp.draft is not None:  # the file is probed and decoded only if finer pixels are needed
            self._images[inp.factor] = inp.draft
            self.shape = (int(inp.shape[0]), int(inp.shape[1]))
        elif inp.data is not None:
            self._info = probe_image(inp.data, source=inp.source)
            h, w = self._info.height, self._info.width
            if config.exif_orientation and self._info.orientation in (5, 6, 7, 8):
                h, w = w, h
            self.shape = (h, w)
        else:
            raise ValueError("a PhotoInput needs an image or data")

    def at(self, scale: float) -> tuple[np.ndarray, tuple[float, float]]:
        """The photo decoded with at least ``scale`` of its resolution, and the photo pixels per
        image pixel ``(rx, ry)`` (1 unless a JPEG draft). An image decoded before is reused when
        it is fine enough; else the largest JPEG draft that keeps ``scale`` is decoded."""
        needed = draft_factor(self.shape[0], self.shape[1], scale) if self._draft else 1
        fine_enough = [f for f in self._images if f <= needed]
        factor = max(fine_enough) if fine_enough else needed
        image = self._images.get(factor)
        if image is None:
            cfg = self._config
            if self._info is None:
                self._info = probe_image(self._data, source=self.source)
            image = decode_image(self._data, source=self.source, max_pixels=cfg.max_pixels,
                                 exif_orientation=cfg.exif_orientation, reduce=factor, info=self._info)
            self._images[factor] = image
        h, w = image.shape[:2]
        return image, (self.shape[1] / w, self.shape[0] / h)
