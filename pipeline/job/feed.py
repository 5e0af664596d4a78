"""Feeding GPU actors: the read tasks can decode JPEG drafts at the detection size.

With GPU actors the read tasks decode (:attr:`pipeline.job.plan.WorkerPlan.decode_in_tasks`). A
full-size decode ships ``H x W x 3`` uint8 bytes per photo through the object store (36 MB for a
12 MP photo, 10-40x its file) although the detector shrinks it at once (``cap:640``: 6x). With
``draft`` (the detector's resize policy), :func:`pipeline.job.stages.read_images` decodes a JPEG
that the policy shrinks 2x or more as a 1/2, 1/4 or 1/8 draft (:func:`decode_for_detection`: the
JPEG decoder's own DCT scaling, several times faster than a full decode) and ships the draft's
uint8 pixels plus the file's bytes (for the full-size re-crop of a face too small in the draft);
nothing full-size and nothing float.

Rows of such a batch: ``data`` holds the file's bytes for a drafted photo (else the full pixels,
as without ``draft``), ``pixels`` the draft, ``height``/``width`` the draft's size,
``full_height``/``full_width`` the upright photo's size (0 when not drafted).

The job turns this on only for a predictor that declares ``takes_read_drafts = True``
(:data:`DRAFTS_ATTRIBUTE`): :class:`pipeline.job.stages.FaceCropPredictor` does not yet, because
:class:`pipeline.stage.PhotoInput` takes either pixels (then taken as the full photo) or a file,
not a draft of a file; until then GPU read tasks ship full-size uint8 pixels (never float).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detector.config import ResizePolicy
from detector.probe import on_device, weights_on_node
from pipeline.images import decode_image, draft_factor, probe_image

__all__ = ["DRAFTS_ATTRIBUTE", "decode_for_detection", "on_granted_device", "takes_read_drafts"]


def decode_for_detection(raw: bytes, *, source: str, resize: ResizePolicy, max_pixels: int | None,
                         exif_orientation: bool) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The photo as the detector needs it: ``[h, w, 3]`` uint8 BGR, a JPEG draft when ``resize``
    shrinks the photo 2x or more (:func:`pipeline.images.draft_factor`), and the upright full
    ``(H, W)`` when it is a draft (``None``: the image is the full photo).

    The same rule as the aligner's own drafts (:class:`pipeline.stage.FaceAligner`).

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


DRAFTS_ATTRIBUTE = "takes_read_drafts"
"""A predictor class with this attribute true takes the read tasks' drafts (see the module docstring)."""


def takes_read_drafts(predictor: type) -> bool:
    """Whether ``predictor`` takes the drafts of :func:`pipeline.job.stages.read_images`."""
    return bool(getattr(predictor, DRAFTS_ATTRIBUTE, False))


def on_granted_device(predictor: type) -> type:
    """``predictor`` (:class:`pipeline.job.stages.FaceCropPredictor` or a subclass, taking a
    ``detector`` :class:`~detector.spec.DetectorSpec`) that builds its detector from weights its
    node has and on the device it was granted.

    Constructor: ``asked_weights`` (what the user named; :func:`detector.probe.weights_on_node`:
    the driver's file where the node has it, else the node's own ``FACEPREP_WEIGHTS`` / cache /
    download), and the predictor's own. The device: :func:`detector.probe.on_device` (the spec
    itself, or with the test-only ``FACEPREP_TEST_GPU_ON_CPU=1`` the CPU, so that an actor granted
    a logical GPU runs in CI). The class keeps the predictor's name (Ray names the actors after it)."""

    class OnGrantedDevice(predictor):
        def __init__(self, *, detector: Any, asked_weights: str | None = None, **kwargs: Any) -> None:
            super().__init__(detector=on_device(weights_on_node(detector, asked_weights)), **kwargs)

    OnGrantedDevice.__name__, OnGrantedDevice.__qualname__ = predictor.__name__, predictor.__qualname__
    OnGrantedDevice.__doc__ = predictor.__doc__
    return OnGrantedDevice
