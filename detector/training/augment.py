"""Training-time augmentation of RetinaFace (the paper's recipe, as the reference code does it).

Order, as in the reference ``preproc``: random square crop -> photometric distortion -> pad to a
square when no crop was found -> horizontal flip -> resize to the training size -> mean subtraction.

* Crop: a square of side ``s * short_side`` (``s`` from the reference's choices
  ``(0.3, 0.45, 0.6, 0.8, 1.0)``, or uniform in ``[0.3, 1]`` as the paper words it), placed
  uniformly; accepted when at least one face lies wholly inside it and at least one face whose
  centre is strictly inside it survives. Faces whose centre leaves the crop are dropped, kept boxes
  are clipped to it, landmarks move with the crop (and are clamped to it, as the reference does).
  Up to ``max_attempts`` tries (reference 250); if none succeeds the whole image is padded to a
  square with the mean colour instead.
* Photometric distortion: brightness, contrast, saturation, hue, each applied with probability 1/2
  in one of the two orders of the SSD/reference recipe (contrast before or after the HSV part).
* Horizontal flip: mirrors boxes and landmarks and swaps left/right eye and mouth corners, so the
  landmark order stays "image left first".
* Resize to ``image_size`` x ``image_size`` (reference: a random one of five interpolations),
  then subtract the BGR mean and go to channels-first ``float32``.

All randomness comes from the ``numpy.random.Generator`` passed in; nothing global is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "AugmentConfig",
    "AugmentedSample",
    "CropConfig",
    "PhotometricConfig",
    "TrainAugmentation",
    "flip_horizontal",
    "photometric_distort",
    "random_square_crop",
    "FLIP_LANDMARK_ORDER",
    "INTERPOLATIONS",
]

FLIP_LANDMARK_ORDER = (1, 0, 2, 4, 3)
"""After mirroring, new landmark ``k`` is old landmark ``FLIP_LANDMARK_ORDER[k]`` (eyes and mouth
corners swap, the nose stays)."""

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
"""The reference's random resize interpolations."""

REFERENCE_CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CropConfig:
    """Random square crop as a fraction of the image's short side.

    Attributes:
        sampling: ``"choices"`` draws the fraction from ``scale_choices`` (reference);
            ``"uniform"`` draws it uniformly from ``scale_range`` (paper: [0.3, 1]).
        max_attempts: tries before falling back to padding the whole image to a square.
        min_face_size: a kept face must have ``min(w, h)`` above this, in training pixels
            (reference: 0, i.e. any non-empty box).
    """

    sampling: Literal["choices", "uniform"] = "choices"
    scale_choices: tuple[float, ...] = REFERENCE_CROP_SCALES
    scale_range: tuple[float, float] = (0.3, 1.0)
    max_attempts: int = 250
    min_face_size: float = 0.0

    def __post_init__(self) -> None:
        if self.sampling not in ("choices", "uniform"):
            raise ValueError(f"unknown crop sampling {self.sampling!r}")
        scales = self.scale_choices if self.sampling == "choices" else self.scale_range
        if not scales or not all(0.0 < s <= 1.0 for s in scales):
            raise ValueError(f"crop scales must lie in (0, 1], got {scales}")
        if self.sampling == "uniform" and self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"empty crop scale range {self.scale_range}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def draw_scale(self, rng: np.random.Generator) -> float:
        if self.sampling == "choices":
            return float(self.scale_choices[int(rng.integers(len(self.scale_choices)))])
        low, high = self.scale_range
        return float(rng.uniform(low, high))


@dataclass(frozen=True, slots=True, kw_only=True)
class PhotometricConfig:
    """Colour distortion; each of the four is applied with ``probability``.

    Attributes:
        brightness_delta: added value drawn from ``[-delta, delta]`` (0..255 scale).
        contrast_range: multiplier range.
        saturation_range: multiplier range of the HSV saturation channel.
        hue_delta: OpenCV hue units (0..180 wraps) drawn from ``[-delta, delta]``.
    """

    probability: float = 0.5
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must lie in [0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class AugmentConfig:
    """The whole training transform.

    Attributes:
        image_size: side of the square network input (reference/paper 640).
        mean_bgr: subtracted after resizing (the detector's ``ModelConfig.mean_bgr``).
        crop: ``None`` disables cropping (the image is padded to a square instead).
        photometric: ``None`` disables colour distortion.
        flip_probability: probability of the horizontal flip.
        random_interpolation: pick one of :data:`INTERPOLATIONS` per sample (reference) instead
            of always linear.
    """

    image_size: int = 640
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    crop: CropConfig | None = field(default_factory=CropConfig)
    photometric: PhotometricConfig | None = field(default_factory=PhotometricConfig)
    flip_probability: float = 0.5
    random_interpolation: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size {self.image_size} is too small")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError("flip_probability must lie in [0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AugmentedSample:
    """Output of :class:`TrainAugmentation`.

    Attributes:
        image: ``float32 [3, S, S]`` BGR minus the mean.
        boxes: ``float32 [N, 4]`` x1, y1, x2, y2 in pixels of the ``S x S`` input.
        landmarks: ``float32 [N, 5, 2]`` same frame, image-left-first order; zero rows where
            ``has_landmarks`` is false.
        has_landmarks: ``bool [N]``.
        crop_box: ``(left, top, side)`` of the square taken from the original image (a padded
            whole image gives ``(0, 0, max(H, W))``).
        flipped: whether the sample was mirrored.
    """

    image: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    has_landmarks: np.ndarray
    cropped: bool
    crop_box: tuple[int, int, int]
    flipped: bool


def random_square_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    has_landmarks: np.ndarray,
    *,
    config: CropConfig,
    image_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]] | None:
    """One random square crop, or ``None`` when ``max_attempts`` tries found none.

    Args:
        image: ``uint8 [H, W, 3]``.
        boxes: ``[N, 4]`` x1y1x2y2; landmarks ``[N, 5, 2]``; has_landmarks ``bool [N]``.
        image_size: training size the crop will be resized to (for ``min_face_size``).

    Returns:
        ``(image [s, s, 3], boxes [M, 4], landmarks [M, 5, 2], has_landmarks [M], (left, top, s))``,
        coordinates in crop pixels.
    """
    height, width = image.shape[:2]
    if boxes.shape[0] == 0:
        return None
    short_side = min(height, width)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    for _ in range(config.max_attempts):
        side = max(1, int(config.draw_scale(rng) * short_side))
        left = int(rng.integers(width - side + 1))
        top = int(rng.integers(height - side + 1))
        origin = np.array([left, top], dtype=np.float32)
        corner = origin + side
        inside = np.all((boxes[:, :2] >= origin) & (boxes[:, 2:] <= corner), axis=1)
        if not inside.any():
            continue
        keep = np.all((centres > origin) & (centres < corner), axis=1)
        if not keep.any():
            continue
        kept_boxes = np.concatenate(
            [np.maximum(boxes[keep, :2], origin), np.minimum(boxes[keep, 2:], corner)], axis=1
        ) - np.tile(origin, 2)
        face_size = np.minimum(kept_boxes[:, 2] - kept_boxes[:, 0], kept_boxes[:, 3] - kept_boxes[:, 1])
        large = face_size * (image_size / side) > config.min_face_size
        if not large.any():
            continue
        kept_landmarks = np.clip(landmarks[keep] - origin, 0.0, float(side))
        kept_has = has_landmarks[keep]
        crop = image[top : top + side, left : left + side]
        return (
            crop,
            kept_boxes[large].astype(np.float32),
            kept_landmarks[large].astype(np.float32),
            kept_has[large],
            (left, top, side),
        )
    return None


def _scale_values(channel: np.ndarray, *, alpha: float, beta: float) -> np.ndarray:
    return np.clip(channel.astype(np.float32) * alpha + beta, 0.0, 255.0).astype(np.uint8)


def photometric_distort(image: np.ndarray, *, config: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue distortion of a ``uint8 [H, W, 3]`` BGR image.

    The draw order (one coin for which recipe, then one coin and one value per distortion) is
    fixed, so the same generator state always gives the same image.
    """
    contrast_first = bool(rng.integers(2))

    def maybe(probability: float) -> bool:
        return bool(rng.random() < probability)

    out = image
    if maybe(config.probability):
        out = _scale_values(out, alpha=1.0, beta=float(rng.uniform(-config.brightness_delta, config.brightness_delta)))
    if contrast_first and maybe(config.probability):
        out = _scale_values(out, alpha=float(rng.uniform(*config.contrast_range)), beta=0.0)
    apply_saturation = maybe(config.probability)
    saturation = float(rng.uniform(*config.saturation_range))
    apply_hue = maybe(config.probability)
    hue_shift = int(rng.integers(-config.hue_delta, config.hue_delta + 1))
    if apply_saturation or apply_hue:
        hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2HSV)
        if apply_saturation:
            hsv[:, :, 1] = _scale_values(hsv[:, :, 1], alpha=saturation, beta=0.0)
        if apply_hue:
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + hue_shift) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and maybe(config.probability):
        out = _scale_values(out, alpha=float(rng.uniform(*config.contrast_range)), beta=0.0)
    return out


def flip_horizontal(
    image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror an ``[H, W, C]`` image with its ``[N, 4]`` boxes and ``[N, 5, 2]`` landmarks.

    Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), so ``x``
    maps to ``W - x``. Landmarks are reordered with :data:`FLIP_LANDMARK_ORDER` so the first
    point is again the eye on the image's left.
    """
    width = image.shape[1]
    flipped_image = np.ascontiguousarray(image[:, ::-1])
    flipped_boxes = boxes.copy()
    flipped_boxes[:, 0] = width - boxes[:, 2]
    flipped_boxes[:, 2] = width - boxes[:, 0]
    flipped_landmarks = landmarks[:, FLIP_LANDMARK_ORDER, :].copy()
    flipped_landmarks[:, :, 0] = width - flipped_landmarks[:, :, 0]
    return flipped_image, flipped_boxes, flipped_landmarks


def _pad_to_square(image: np.ndarray, mean_bgr: tuple[float, float, float]) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(height, width)
    if height == width:
        return image
    fill = np.round(np.asarray(mean_bgr)).clip(0, 255).astype(image.dtype)
    padded = np.empty((side, side, image.shape[2]), dtype=image.dtype)
    padded[...] = fill
    padded[:height, :width] = image
    return padded


class TrainAugmentation:
    """Callable training transform; see the module docstring for the steps."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self._mean = np.asarray(config.mean_bgr, dtype=np.float32)

    def __call__(
        self,
        image: np.ndarray,
        *,
        boxes: np.ndarray,
        landmarks: np.ndarray,
        has_landmarks: np.ndarray,
        rng: np.random.Generator,
    ) -> AugmentedSample:
        """Augment one image.

        Args:
            image: ``uint8 [H, W, 3]`` BGR (not modified).
            boxes: ``[N, 4]`` x1y1x2y2 original pixels.
            landmarks: ``[N, 5, 2]``; has_landmarks ``bool [N]``.
            rng: the sample's generator (the only source of randomness).
        """
        config = self.config
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
        has_landmarks = np.asarray(has_landmarks, dtype=bool).reshape(-1)

        cropped = None
        if config.crop is not None:
            cropped = random_square_crop(
                image, boxes, landmarks, has_landmarks, config=config.crop, image_size=config.image_size, rng=rng
            )
        if cropped is not None:
            image, boxes, landmarks, has_landmarks, crop_box = cropped
        else:
            crop_box = (0, 0, max(image.shape[:2]))
        if config.photometric is not None:
            image = photometric_distort(image, config=config.photometric, rng=rng)
        if cropped is None:
            image = _pad_to_square(image, config.mean_bgr)
        flipped = bool(rng.random() < config.flip_probability)
        if flipped:
            image, boxes, landmarks = flip_horizontal(image, boxes, landmarks)

        side = image.shape[0]
        scale = config.image_size / side
        interpolation = (
            INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))] if config.random_interpolation else cv2.INTER_LINEAR
        )
        resized = cv2.resize(image, (config.image_size, config.image_size), interpolation=interpolation)
        tensor = (resized.astype(np.float32) - self._mean).transpose(2, 0, 1)
        landmarks = np.where(has_landmarks[:, None, None], landmarks * scale, 0.0)
        return AugmentedSample(
            image=np.ascontiguousarray(tensor),
            boxes=(boxes * scale).astype(np.float32),
            landmarks=landmarks.astype(np.float32),
            has_landmarks=has_landmarks.copy(),
            cropped=cropped is not None,
            crop_box=crop_box,
            flipped=flipped,
        )
