"""Per-face quality measures and the filter that decides which faces may be selected.

Pure functions on numpy arrays (no torch, no Ray). Conventions as everywhere in the project:
boxes ``[..., 4]`` x1 y1 x2 y2 and landmarks ``[..., 5, 2]`` (left eye, right eye, nose, left mouth
corner, right mouth corner; image left first), in pixels of the original photo, image
coordinates (x right, y down).

Measures (:func:`face_quality` gathers them into the manifest's ``"quality"`` dict):

* ``box_size``: ``sqrt(box area)`` in photo pixels (:func:`box_size`).
* ``eye_distance``: distance between the two eye points in photo pixels (:func:`eye_distance`).
* ``yaw``, ``pitch``, ``roll``: head pose in degrees from the five points (:func:`head_pose`).
* ``sharpness``: variance of the Laplacian of the grey 112x112 ArcFace crop (:func:`sharpness`).
* ``brightness``: mean grey level (0-255) of that crop (:func:`brightness`).

Sign conventions (image coordinates, y down):

* ``roll`` > 0 when the line from the left eye (image left) to the right eye goes *down* to the
  right, i.e. the face is turned clockwise in the image. Rotating a photo clockwise by ``a`` degrees
  adds ``a`` to the roll.
* ``yaw`` > 0 when the face turns towards the image right (the nose moves right of the eyes'
  midpoint).
* ``pitch`` > 0 when the face tilts up (chin up: the nose moves up towards the eyes).
* Mirroring a photo left-right flips the sign of ``yaw`` and ``roll`` and keeps ``pitch``.

Pose method. A scaled-orthographic (weak-perspective) camera is fitted to :data:`MEAN_FACE_3D`, a
mean 3-D five-point face: the observed points are ``s * R[:2] @ X + t``. In closed form: the
centred observations ``P [2, 5]`` and model ``X [3, 5]`` give the least-squares affine
``A = P X^T (X X^T)^-1`` (``[2, 3]``); its nearest scaled pair of orthonormal rows is
``s * U V^T`` (``A = U S V^T``, ``s`` the mean singular value); the third row of ``R`` is the cross
product of the first two, so ``R`` is a proper rotation. ``R`` is decomposed as
``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` (the in-plane rotation outermost, so that a rotation of the
photo changes only the roll). The model is left-right symmetric, which makes the estimate exactly
antisymmetric under mirroring (up to the landmark detector's own error). Absolute yaw and pitch
inherit the model's assumed depths (below); roll does not depend on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

__all__ = [
    "MEAN_FACE_3D", "QUALITY_KEYS", "QualityFilter", "box_size", "brightness", "eye_distance",
    "face_quality", "head_pose", "sharpness",
]

QUALITY_KEYS: tuple[str, ...] = ("box_size", "eye_distance", "yaw", "pitch", "roll", "sharpness", "brightness")
"""The keys of a face's ``"quality"`` dict in the manifest, in this order."""


def _mean_face_3d() -> np.ndarray:
    # x, y: where the project's reference detector (RetinaFace MobileNet-0.25, biubug6 weights, cap:1024)
    # puts the five points of a portrait, on average, once aligned to the 112x112 ArcFace template:
    # the mean over the 62 deepface test photos (../shared/assets/verification/deepface), measured
    # for this module, then made exactly left-right symmetric (pairs averaged, nose on the axis) and
    # centred on the eyes' midpoint. Units: crop pixels (eye distance 36.47). insightface's template
    # itself puts this detector's nose ~3 px too high and its mouth ~2.5 px too low for a frontal
    # face, which would read as a -15 to -25 degree pitch on ordinary portraits.
    # z (into the scene; right-handed with x right, y down): relative depths of insightface's 3-D
    # mean face (insightface/data/objects/meanshape_68.pkl, 68 points): taking the eye centres as
    # the mean of each eye's six contour points, the nose tip (point 30) lies 0.534 eye distances in
    # front of the eyes and the mouth corners (points 48, 54) 0.12 in front. Depths scale the
    # absolute yaw and pitch, not their signs.
    eye_half, eye_y = 18.2325, 52.5866
    nose_y = 74.5273
    mouth_half, mouth_y = 16.4762, 89.9017
    iod = 2.0 * eye_half
    nose_z, mouth_z = -0.534 * iod, -0.12 * iod
    pts = np.array([
        [-eye_half, eye_y, 0.0], [eye_half, eye_y, 0.0], [0.0, nose_y, nose_z],
        [-mouth_half, mouth_y, mouth_z], [mouth_half, mouth_y, mouth_z],
    ])
    pts[:, 1] -= eye_y
    pts.setflags(write=False)
    return pts


MEAN_FACE_3D: np.ndarray = _mean_face_3d()
"""``[5, 3]`` float64 mean five-point face (x right, y down, z into the scene; crop pixels), in the
project's landmark order; see :func:`head_pose`."""


_CENTRED_FACE_3D = MEAN_FACE_3D - MEAN_FACE_3D.mean(axis=0)
_POSE_SOLVE = _CENTRED_FACE_3D @ np.linalg.inv(_CENTRED_FACE_3D.T @ _CENTRED_FACE_3D)
"""``[5, 3]``: ``X (X^T X)^-1`` of the centred mean face (the least-squares fit of :func:`head_pose`)."""


def _landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (5, 2):
        raise ValueError(f"landmarks must have shape [..., 5, 2], got {lm.shape}")
    return lm


def eye_distance(landmarks: np.ndarray) -> np.ndarray:
    """Inter-ocular distance: ``[..., 5, 2]`` landmarks -> ``[...]`` float64 pixels."""
    lm = _landmarks(landmarks)
    return np.linalg.norm(lm[..., 1, :] - lm[..., 0, :], axis=-1)


def box_size(boxes: np.ndarray) -> np.ndarray:
    """``sqrt(width * height)``: ``[..., 4]`` x1 y1 x2 y2 boxes -> ``[...]`` float64 pixels (0 for
    an empty box)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {b.shape}")
    w = np.clip(b[..., 2] - b[..., 0], 0.0, None)
    h = np.clip(b[..., 3] - b[..., 1], 0.0, None)
    return np.sqrt(w * h)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """Yaw, pitch and roll in degrees from five points (method and signs: module docstring).

    Args:
        landmarks: ``[..., 5, 2]`` image points (any scale and position).

    Returns:
        ``[..., 3]`` float64 ``(yaw, pitch, roll)`` in degrees; yaw and pitch in [-90, 90], roll in
        (-180, 180]. Degenerate points (all equal) give NaN.
    """
    lm = _landmarks(landmarks)
    batch = lm.shape[:-2]
    p = lm.reshape(-1, 5, 2)
    p = p - p.mean(axis=1, keepdims=True)                       # [N, 5, 2]
    # least-squares affine A [N, 2, 3] with p_i ~ A x_i (x: the centred mean face): A = P^T X (X^T X)^-1
    a = np.einsum("nki,kj->nij", p, _POSE_SOLVE)
    u, _, vt = np.linalg.svd(a, full_matrices=False)            # [N,2,2], [N,2], [N,2,3]
    r12 = u @ vt                                                # nearest orthonormal rows
    r3 = np.cross(r12[:, 0], r12[:, 1])
    rot = np.concatenate([r12, r3[:, None, :]], axis=1)        # [N, 3, 3], det +1
    yaw = np.degrees(np.arcsin(np.clip(rot[:, 2, 0], -1.0, 1.0)))
    pitch = -np.degrees(np.arctan2(rot[:, 2, 1], rot[:, 2, 2]))
    roll = np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    out = np.stack([yaw, pitch, roll], axis=-1)
    degenerate = ~(np.abs(p).max(axis=(1, 2)) > 0)
    out[degenerate] = np.nan
    return out.reshape(*batch, 3)


def _grey(crop: np.ndarray) -> np.ndarray:
    c = np.asarray(crop)
    if c.dtype != np.uint8 or c.ndim not in (2, 3) or (c.ndim == 3 and c.shape[2] not in (1, 3)):
        raise ValueError(f"crop must be an HxW or HxWx3 uint8 BGR image, got {c.dtype} {c.shape}")
    if c.ndim == 3 and c.shape[2] == 3:
        return cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)
    return c.reshape(c.shape[:2])


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian (3x3 kernel ``[[0,1,0],[1,-4,1],[0,1,0]]``, reflected border) of
    the grey ``HxW(x3)`` uint8 BGR crop; higher is sharper. Compare values between crops of one
    size only (the project measures on the 112x112 ArcFace crop)."""
    lap = cv2.Laplacian(_grey(crop), cv2.CV_64F, ksize=1)
    return float(lap.var())


def brightness(crop: np.ndarray) -> float:
    """Mean grey level (0-255) of the ``HxW(x3)`` uint8 BGR crop."""
    return float(_grey(crop).mean())


def face_quality(boxes: np.ndarray | None, landmarks: np.ndarray, crops: np.ndarray) -> list[dict[str, float]]:
    """The manifest's ``"quality"`` dict of each of K faces.

    Args:
        boxes: ``[K, 4]`` boxes in photo pixels (``None``: ``box_size`` is ``None``).
        landmarks: ``[K, 5, 2]`` landmarks in photo pixels.
        crops: ``[K, 112, 112, 3]`` uint8 BGR ArcFace crops of those faces.

    Returns:
        K dicts with the keys :data:`QUALITY_KEYS`, values rounded to 2 decimals.
    """
    lm = _landmarks(landmarks).reshape(-1, 5, 2)
    k = lm.shape[0]
    if len(crops) != k or (boxes is not None and len(boxes) != k):
        raise ValueError(f"{k} landmark sets but {len(crops)} crops"
                         + ("" if boxes is None else f" and {len(boxes)} boxes"))
    sizes = box_size(np.asarray(boxes).reshape(-1, 4)) if boxes is not None else [None] * k
    eyes = eye_distance(lm)
    pose = head_pose(lm)
    out = []
    for i in range(k):
        grey = _grey(crops[i])  # once per crop: both measures take it as it is
        values = {"box_size": sizes[i], "eye_distance": eyes[i], "yaw": pose[i, 0], "pitch": pose[i, 1],
                  "roll": pose[i, 2], "sharpness": sharpness(grey), "brightness": brightness(grey)}
        out.append({key: None if v is None or not math.isfinite(v) else round(float(v), 2)
                    for key, v in values.items()})
    return out


@dataclass(frozen=True, kw_only=True)
class QualityFilter:
    """Which faces may be selected, on their :func:`face_quality` dicts. ``None`` turns a rule off
    (the default: every rule off). Pose limits apply to the absolute angle.

    Attributes:
        min_eye_distance: inter-ocular distance >= this (photo pixels).
        min_box_size: ``sqrt(box area)`` >= this (photo pixels).
        max_yaw, max_pitch, max_roll: ``|angle|`` <= this (degrees, in (0, 180]).
        min_sharpness: variance of the Laplacian of the 112 crop >= this.
        min_brightness, max_brightness: mean grey of the 112 crop within these (0-255).
    """

    min_eye_distance: float | None = None
    min_box_size: float | None = None
    max_yaw: float | None = None
    max_pitch: float | None = None
    max_roll: float | None = None
    min_sharpness: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number or None, got {value!r}")
            object.__setattr__(self, f.name, float(value))
            if f.name.startswith("max_") and f.name != "max_brightness" and not 0 < value <= 180:
                raise ValueError(f"{f.name} must be in (0, 180] degrees, got {value!r}")
            if f.name.endswith("brightness") and not 0 <= value <= 255:
                raise ValueError(f"{f.name} must be in [0, 255], got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value!r}")
        lo, hi = self.min_brightness, self.max_brightness
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_brightness {lo:g} > max_brightness {hi:g}")

    @property
    def active(self) -> bool:
        """Whether any rule is on."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def reasons(self, quality: Mapping[str, Any]) -> list[str]:
        """Why a face with this ``quality`` dict may not be selected (empty: it passes), e.g.
        ``["yaw 63.1 > 45", "eye_distance 8.2 < 20"]``. A measure that is missing or ``None``
        (no box for given landmarks, a degenerate pose) fails its rule, when the rule is on."""
        out: list[str] = []
        for name, key, kind in (
            ("min_box_size", "box_size", "min"), ("min_eye_distance", "eye_distance", "min"),
            ("max_yaw", "yaw", "abs"), ("max_pitch", "pitch", "abs"), ("max_roll", "roll", "abs"),
            ("min_sharpness", "sharpness", "min"), ("min_brightness", "brightness", "min"),
            ("max_brightness", "brightness", "max"),
        ):
            limit = getattr(self, name)
            if limit is None:
                continue
            value = quality.get(key)
            if value is None:
                out.append(f"{key} unknown ({name} {limit:g})")
            elif kind == "min" and value < limit:
                out.append(f"{key} {value:.1f} < {limit:g}")
            elif kind == "max" and value > limit:
                out.append(f"{key} {value:.1f} > {limit:g}")
            elif kind == "abs" and abs(value) > limit:
                out.append(f"{key} {value:.1f} > {limit:g}" if value > 0 else f"{key} {value:.1f} < -{limit:g}")
        return out
