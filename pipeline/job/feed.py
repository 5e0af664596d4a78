"""Feeding GPU actors: the read tasks decode JPEG drafts at the detection size, and the actors take them.

With GPU actors the read tasks decode (:attr:`pipeline.job.plan.WorkerPlan.decode_in_tasks`). A
full-size decode ships ``H x W x 3`` bytes per photo through the object store (36 MB for a 12 MP
photo, 10-40x its file) although the detector shrinks it at once (``long:640``: 6x). With
``draft`` (the detector's resize policy), :func:`pipeline.job.stages.read_images` decodes a JPEG
that the policy shrinks 2x or more as a 1/2, 1/4 or 1/8 draft (:func:`decode_for_detection`: the
JPEG decoder's own DCT scaling, several times faster than a full decode) and ships the draft's
uint8 pixels plus the file's bytes (for the full-size re-crop of a face too small in the draft);
nothing full-size and nothing float. The actors (:func:`takes_drafts`) then detect on the draft
exactly as CPU actors do on their own drafts, so both layouts write the same manifest.

Rows of a read-task batch (see :func:`pipeline.job.stages.read_images`): ``data`` holds the file's
bytes for a drafted photo (else the full pixels, as without ``draft``), ``pixels`` the draft,
``height``/``width`` the draft's size, ``full_height``/``full_width`` the upright photo's size (0
when not drafted).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from detector.config import ResizePolicy
from detector.probe import on_device
from pipeline.images import decode_image, draft_factor, probe_image

__all__ = ["decode_for_detection", "takes_drafts"]


def decode_for_detection(raw: bytes, *, source: str, resize: ResizePolicy, max_pixels: int | None,
                         exif_orientation: bool) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The photo as the detector needs it: ``[h, w, 3]`` uint8 BGR, a JPEG draft when ``resize``
    shrinks the photo 2x or more (:func:`pipeline.images.draft_factor`), and the upright full
    ``(H, W)`` when it is a draft (``None``: the image is the full photo).

    The same rule as the CPU actors' own drafts (``FaceCropPredictor._image``, which can call this).

    Raises:
        ImageReadError: unreadable, unsupported or oversized input.
    """
    info = probe_image(raw, source=source)
    factor = draft_factor(info.height, info.width, resize.scale(info.height, info.width))
    image = decode_image(raw, source=source, max_pixels=max_pixels, exif_orientation=exif_orientation,
                         reduce=factor)
    if factor == 1:
        return image, None
    full = (info.height, info.width)
    if exif_orientation and info.orientation in (5, 6, 7, 8):
        full = full[::-1]
    return image, full


def takes_drafts(predictor: type) -> type:
    """``predictor`` (:class:`pipeline.job.stages.FaceCropPredictor` or a subclass) for the GPU
    layout: it takes the read tasks' drafts (the ``pixels`` / ``full_height`` / ``full_width``
    columns; see the module docstring) and builds its detector on the device it was granted
    (:func:`detector.probe.on_device`: the test-only ``FACEPREP_TEST_GPU_ON_CPU`` switch lets an
    actor granted a logical GPU run on the CPU). The class keeps the predictor's name.

    A photo with given landmarks (``draft=False``) is decoded at full size from its file."""

    class TakesDrafts(predictor):
        def __init__(self, *, detector: Any, **kwargs: Any) -> None:
            super().__init__(detector=on_device(detector), **kwargs)

        def _image(self, row: int, batch: dict[str, np.ndarray], *,
                   draft: bool = True) -> tuple[np.ndarray, tuple[int, int] | None]:
            full_h = int(batch["full_height"][row]) if "full_height" in batch else 0
            if not full_h:
                return super()._image(row, batch, draft=draft)
            full = (full_h, int(batch["full_width"][row]))
            if not draft:
                source = os.fsdecode(batch["src"][row])
                return decode_image(batch["data"][row], source=source, max_pixels=self._align.max_pixels,
                                    exif_orientation=self._align.exif_orientation), None
            h, w = int(batch["height"][row]), int(batch["width"][row])
            return np.frombuffer(batch["pixels"][row], np.uint8).reshape(h, w, 3), full

    TakesDrafts.__name__, TakesDrafts.__qualname__ = predictor.__name__, predictor.__qualname__
    TakesDrafts.__doc__ = predictor.__doc__
    return TakesDrafts
