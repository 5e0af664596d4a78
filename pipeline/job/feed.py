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
(:data:`DRAFTS_ATTRIBUTE`), as :class:`pipeline.job.stages.FaceCropPredictor` (and its
subclasses) do: :func:`photo_input` makes such a row a :class:`pipeline.photo.PhotoInput` with
the draft, the full size and the file, so that the actor detects on the draft and decodes the file
only for finer pixels (a refinement window, a face too small in the draft, a retry).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from detector.config import ResizePolicy
from detector.probe import on_device, weights_on_node
from pipeline.images import decode_image, draft_factor, probe_image
from pipeline.photo import PhotoInput

__all__ = ["DRAFTS_ATTRIBUTE", "decode_for_detection", "draft_reduction", "on_granted_device", "photo_input",
           "takes_read_drafts"]


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
    full = (info.height, info.width)
    if exif_orientation and info.orientation in (5, 6, 7, 8):
        full = full[::-1]
    if factor == 1 or image.shape[:2] == full:  # not drafted (or a format without drafts)
        return image, None
    return image, full


def draft_reduction(full: tuple[int, int], draft: tuple[int, int]) -> int:
    """The reduction ``N`` (2, 4 or 8) of a JPEG draft of ``draft = (h, w)`` pixels of a photo of
    ``full = (H, W)`` (the decoder's DCT scaling gives ``ceil(H / N) x ceil(W / N)``).

    Raises:
        ValueError: ``draft`` is no such draft of ``full``.
    """
    for n in (2, 4, 8):
        if (-(-full[0] // n), -(-full[1] // n)) == tuple(draft):
            return n
    raise ValueError(f"{draft[1]}x{draft[0]} is no 1/2, 1/4 or 1/8 JPEG draft of {full[1]}x{full[0]}")


def photo_input(batch: dict[str, Any], row: int, *, landmarks: np.ndarray | None = None) -> PhotoInput:
    """Row ``row`` of a :func:`pipeline.job.stages.read_images` batch (as Ray Data's numpy batch)
    as a :class:`pipeline.photo.PhotoInput`: the draft with the full size and the file (a drafted
    row), the decoded photo (a row decoded in full), or the file."""
    data, h, w = batch["data"][row], int(batch["height"][row]), int(batch["width"][row])
    source = os.fsdecode(batch["src"][row])
    if "pixels" in batch and int(batch["full_height"][row]):  # a JPEG draft of the file in `data`
        full = (int(batch["full_height"][row]), int(batch["full_width"][row]))
        draft = np.frombuffer(batch["pixels"][row], np.uint8).reshape(h, w, 3)
        return PhotoInput(data=data, draft=draft, shape=full, factor=draft_reduction(full, (h, w)),
                          source=source, landmarks=landmarks)
    if h:  # decoded in full by the read task
        return PhotoInput(image=np.frombuffer(data, np.uint8).reshape(h, w, 3), source=source, landmarks=landmarks)
    return PhotoInput(data=data, source=source, landmarks=landmarks)


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
    a logical GPU runs in CI, and a torch detector there takes the CUDA input path,
    :class:`detector.inference.Detector`'s ``group_shapes``). The class keeps the predictor's name
    (Ray names the actors after it)."""

    class OnGrantedDevice(predictor):
        def __init__(self, *, detector: Any, asked_weights: str | None = None, **kwargs: Any) -> None:
            spec = on_device(weights_on_node(detector, asked_weights))
            super().__init__(detector=spec, **kwargs)
            built = self._aligner.detector
            if spec.device != detector.device and hasattr(built, "group_shapes"):
                built.group_shapes = True  # the test switch: the CUDA input path (batches of one shape), on the CPU

    OnGrantedDevice.__name__, OnGrantedDevice.__qualname__ = predictor.__name__, predictor.__qualname__
    OnGrantedDevice.__doc__ = predictor.__doc__
    return OnGrantedDevice
