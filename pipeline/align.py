"""ArcFace five-point similarity alignment, vectorised over many faces.

Drop-in replacements for insightface's ``insightface.utils.face_align.estimate_norm`` /
``norm_crop`` / ``norm_crop2`` (same signatures, same results: matrices agree to ~1e-12 for
float64 landmarks, crops are produced by the same ``cv2.warpAffine`` call), plus batched forms that
estimate all matrices in one numpy pass and return the inverse matrices that map crop points back
to the photo.

Conventions
-----------
* Landmarks are ``[5, 2]`` or ``[N, 5, 2]`` (x, y) pixel coordinates in the order left eye, right
  eye, nose, left mouth corner, right mouth corner (image left first), as RetinaFace emits them.
* A matrix ``M`` is ``[2, 3]`` float64 and maps photo pixels to crop pixels:
  ``crop_xy = M[:, :2] @ photo_xy + M[:, 2]`` (the ``cv2.warpAffine`` convention).
* Crop geometry (:class:`CropSpec`):

  - ``variant="arcface"``: an ``image_size`` x ``image_size`` crop. The 112x112 ArcFace template is
    used as is for ``image_size`` a multiple of 112 (scaled by ``image_size / 112``); otherwise, for a
    multiple of 128, it is scaled by ``image_size / 128`` and shifted right by ``8 * image_size / 128``
    (insightface's rule; 112 takes precedence for sizes that are multiples of both, e.g. 896).
  - ``variant="arcface_112x96"``: the classic 112 (high) x 96 (wide) crop of older recognisers
    (SphereFace / CosFace): the ArcFace 112 crop minus 8 px on the left and right, i.e. the template
    shifted left by 8. ``image_size`` is the crop height and must be a multiple of 112; the width is
    ``image_size * 96 / 112``.

Numerics
--------
The similarity is the least-squares (Umeyama, 1991) estimate that
``skimage.transform.SimilarityTransform.estimate(lmk, dst)`` computes inside insightface, written in
the closed form that the 2-D case allows: with centred source points ``x_i`` and centred template
points ``y_i`` viewed as complex numbers, ``s * exp(i * theta) = sum(conj(x_i) * y_i) / sum(|x_i|^2)``.
This equals Umeyama's SVD solution, including its reflection handling (the estimate is always a
proper rotation). The template is kept in float32 and centred in float32 exactly as insightface
(float32 ``arcface_dst``) and skimage (``dst.mean(axis=0)`` on that array) do, so the translation
matches insightface's to ~1e-12 instead of differing by float32 rounding (~2e-6 px).
For float32 landmarks (RetinaFace output) insightface's skimage call computes in float32; we always
compute in float64 (against insightface: ~1e-6 on the linear part, up to ~1.5e-3 px on the
translation of large faces, the error being insightface's).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "center_crop",
    "ARCFACE_TEMPLATE",
    "AlignedCrops",
    "CropSpec",
    "CropVariant",
    "align_faces",
    "estimate_norm",
    "estimate_norm_batch",
    "invert_affine",
    "norm_crop",
    "norm_crop2",
    "similarity_umeyama",
    "transform_points",
    "warp_crops",
]

CropVariant = Literal["arcface", "arcface_112x96"]
CROP_VARIANTS: tuple[str, ...] = ("arcface", "arcface_112x96")

#: The standard ArcFace 112x112 five-point template (insightface's ``arcface_dst``), float32.
ARCFACE_TEMPLATE: np.ndarray = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_TEMPLATE.setflags(write=False)


@dataclass(frozen=True, eq=False)
class CropSpec:
    """Geometry of one crop variant at one size.

    Attributes:
        image_size: the size parameter (square side, or the height of the 112x96 variant).
        variant: ``"arcface"`` or ``"arcface_112x96"``.
        width, height: output crop size in pixels.
        template: ``[5, 2]`` float64 destination landmarks in crop pixels (float32-exact values).
    """

    image_size: int
    variant: str
    width: int
    height: int
    template: np.ndarray
    _template_mean: np.ndarray  # [2] float64, float32-computed like skimage does
    _template_centred: np.ndarray  # [5, 2] float64, float32-computed like skimage does

    @staticmethod
    def create(image_size: int = 112, variant: str = "arcface") -> CropSpec:
        """Validated, cached :class:`CropSpec` for ``image_size`` and ``variant``.

        Raises:
            ValueError: unknown variant, or a size the variant does not support.
        """
        if isinstance(image_size, (bool, np.bool_)) or not isinstance(image_size, (int, np.integer)):
            raise ValueError(f"image_size must be an int, got {image_size!r}")
        return _crop_spec(int(image_size), str(variant))

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the crop."""
        return self.height, self.width


@lru_cache(maxsize=64)
def _crop_spec(image_size: int, variant: str) -> CropSpec:
    if variant not in CROP_VARIANTS:
        raise ValueError(f"unknown crop variant {variant!r}; expected one of {CROP_VARIANTS}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    # Same float32 arithmetic as insightface's estimate_norm.
    if image_size % 112 == 0:
        ratio = float(image_size) / 112.0
        diff_x = 0.0
    elif image_size % 128 == 0 and variant == "arcface":
        ratio = float(image_size) / 128.0
        diff_x = 8.0 * ratio
    elif variant == "arcface":
        raise ValueError(
            f"image_size must be a multiple of 112 or 128 for the ArcFace template, got {image_size}"
        )
    else:
        raise ValueError(
            f"image_size (the crop height) must be a multiple of 112 for the 112x96 crop, got {image_size}"
        )
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += diff_x
    width = height = image_size
    if variant == "arcface_112x96":
        dst[:, 0] -= 8.0 * ratio
        width = image_size * 96 // 112
    mean32 = dst.mean(axis=0)
    centred32 = dst - mean32
    arrays = [dst.astype(np.float64), mean32.astype(np.float64), centred32.astype(np.float64)]
    for a in arrays:
        a.setflags(write=False)
    return CropSpec(image_size, variant, width, height, arrays[0], arrays[1], arrays[2])


def _as_landmarks(landmarks: np.ndarray, name: str = "landmarks") -> np.ndarray:
    """``[N, K, 2]`` float64 copy-free view when possible; validates shape and finiteness."""
    lm = np.asarray(landmarks)
    if lm.dtype == object or not (np.issubdtype(lm.dtype, np.floating) or np.issubdtype(lm.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {lm.dtype}")
    if lm.ndim != 3 or lm.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [N, K, 2], got {lm.shape}")
    lm = lm.astype(np.float64, copy=False)
    if not np.isfinite(lm).all():
        bad = np.flatnonzero(~np.isfinite(lm).all(axis=(1, 2)))
        raise ValueError(f"{name} contain NaN or infinite values (faces {bad[:10].tolist()})")
    return lm


def _similarity_from_centred(
    src: np.ndarray, dst_mean: np.ndarray, dst_centred: np.ndarray
) -> np.ndarray:
    """Least-squares similarity ``[N, 2, 3]`` mapping ``src [N, K, 2]`` onto a destination given by
    its mean ``[N|1, 2]`` and centred points ``[N|1, K, 2]`` (all float64)."""
    src_mean = src.mean(axis=1)  # [N, 2]
    xs = src - src_mean[:, None, :]
    norm2 = np.einsum("nkd,nkd->n", xs, xs)
    dx, dy = dst_centred[..., 0], dst_centred[..., 1]
    sx, sy = xs[..., 0], xs[..., 1]
    dot = (sx * dx + sy * dy).sum(axis=1)
    cross = (sx * dy - sy * dx).sum(axis=1)
    degenerate = ~(norm2 > 0.0)
    if degenerate.any():
        bad = np.flatnonzero(degenerate)
        raise ValueError(
            f"degenerate landmarks (all points coincide) for faces {bad[:10].tolist()}; "
            "a similarity transform is undefined"
        )
    a = dot / norm2  # s * cos(theta)
    b = cross / norm2  # s * sin(theta)
    if not ((a != 0.0) | (b != 0.0)).all():
        bad = np.flatnonzero((a == 0.0) & (b == 0.0))
        raise ValueError(f"degenerate landmarks (zero-scale fit) for faces {bad[:10].tolist()}")
    out = np.empty((src.shape[0], 2, 3), dtype=np.float64)
    out[:, 0, 0] = a
    out[:, 0, 1] = -b
    out[:, 1, 0] = b
    out[:, 1, 1] = a
    mx, my = src_mean[:, 0], src_mean[:, 1]
    out[:, 0, 2] = dst_mean[..., 0] - (a * mx - b * my)
    out[:, 1, 2] = dst_mean[..., 1] - (b * mx + a * my)
    return out


def similarity_umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2-D similarity (rotation, uniform scale, translation) from ``src`` to ``dst``.

    Vectorised Umeyama estimate, equal to ``skimage.transform.SimilarityTransform`` estimated on each
    pair (up to float64 rounding), never a reflection.

    Args:
        src: ``[N, K, 2]`` or ``[K, 2]`` source points (K >= 2).
        dst: ``[N, K, 2]`` or ``[K, 2]`` destination points (a ``[K, 2]`` dst is shared by all N).

    Returns:
        ``[N, 2, 3]`` (or ``[2, 3]`` for a single ``[K, 2]`` src) float64 matrices ``M`` with
        ``dst ~= src @ M[:, :2].T + M[:, 2]``.

    Raises:
        ValueError: mismatched shapes, non-finite values or degenerate (coincident) source points.
    """
    src_arr = np.asarray(src)
    single = src_arr.ndim == 2
    s = _as_landmarks(src_arr[None] if single else src_arr, "src")
    d = np.asarray(dst, dtype=np.float64)
    if d.ndim == 2:
        d = d[None]
    if d.ndim != 3 or d.shape[1:] != s.shape[1:] or d.shape[0] not in (1, s.shape[0]):
        raise ValueError(f"dst shape {np.shape(dst)} does not match src shape {src_arr.shape}")
    if s.shape[1] < 2:
        raise ValueError(f"need at least 2 points, got {s.shape[1]}")
    if not np.isfinite(d).all():
        raise ValueError("dst contains NaN or infinite values")
    d_mean = d.mean(axis=1)
    out = _similarity_from_centred(s, d_mean, d - d_mean[:, None, :])
    return out[0] if single else out


def estimate_norm_batch(
    landmarks: np.ndarray, image_size: int = 112, *, variant: CropVariant = "arcface"
) -> np.ndarray:
    """Similarity matrices aligning many faces to the crop template.

    Args:
        landmarks: ``[N, 5, 2]`` photo landmarks (any real dtype; computed in float64).
        image_size: crop size (see :class:`CropSpec` for the size rules).
        variant: ``"arcface"`` or ``"arcface_112x96"``.

    Returns:
        ``[N, 2, 3]`` float64 photo -> crop matrices (``N = 0`` gives an empty array).

    Raises:
        ValueError: wrong shape, NaN/inf landmarks, degenerate landmarks, unsupported size/variant.
    """
    spec = CropSpec.create(image_size, variant)
    lm = _as_landmarks(landmarks)
    if lm.shape[1] != 5:
        raise ValueError(f"landmarks must have shape [N, 5, 2], got {lm.shape}")
    if lm.shape[0] == 0:
        return np.empty((0, 2, 3), dtype=np.float64)
    return _similarity_from_centred(lm, spec._template_mean[None], spec._template_centred[None])


def estimate_norm(lmk: np.ndarray, image_size: int = 112, mode: str = "arcface") -> np.ndarray:
    """insightface-compatible ``estimate_norm``: the ``[2, 3]`` float64 photo -> crop matrix.

    Args:
        lmk: ``[5, 2]`` landmarks.
        image_size: a multiple of 112 or 128.
        mode: only ``"arcface"`` (insightface ignores it; kept for signature compatibility).

    Raises:
        ValueError: instead of insightface's asserts (wrong shape, NaN, bad size, degenerate).
    """
    if mode != "arcface":
        raise ValueError(f"only mode='arcface' is supported, got {mode!r}")
    lm = np.asarray(lmk)
    if lm.shape != (5, 2):
        raise ValueError(f"lmk must have shape (5, 2), got {lm.shape}")
    return estimate_norm_batch(lm[None], image_size)[0]


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must be HxW or HxWxC with H, W >= 1, got shape {img.shape}")
    if img.ndim == 3 and not 1 <= img.shape[2] <= 4:
        raise ValueError(f"image must have 1 to 4 channels, got {img.shape[2]}")
    return img


def norm_crop(img: np.ndarray, landmark: np.ndarray, image_size: int = 112,
              mode: str = "arcface") -> np.ndarray:
    """insightface-compatible ``norm_crop``: the aligned ``image_size`` square crop of ``img``.

    ``cv2.warpAffine`` with insightface's settings (bilinear, constant black border).
    """
    return norm_crop2(img, landmark, image_size, mode)[0]


def norm_crop2(img: np.ndarray, landmark: np.ndarray, image_size: int = 112,
               mode: str = "arcface") -> tuple[np.ndarray, np.ndarray]:
    """insightface-compatible ``norm_crop2``: ``(crop, M)`` with ``M`` the ``[2, 3]`` matrix."""
    _check_image(img)
    m = estimate_norm(landmark, image_size, mode)
    warped = cv2.warpAffine(img, m, (image_size, image_size), borderValue=0.0)
    return warped, m


def invert_affine(matrices: np.ndarray) -> np.ndarray:
    """Inverse of ``[..., 2, 3]`` affine matrices (closed form, vectorised), same shape, float64.

    Raises:
        ValueError: wrong shape or a singular matrix.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim < 2 or m.shape[-2:] != (2, 3):
        raise ValueError(f"matrices must have shape [..., 2, 3], got {m.shape}")
    a, b, tx = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    c, d, ty = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    det = a * d - b * c
    if not (np.abs(det) > 0).all():
        raise ValueError("singular affine matrix cannot be inverted")
    inv = np.empty_like(m)
    inv[..., 0, 0] = d / det
    inv[..., 0, 1] = -b / det
    inv[..., 1, 0] = -c / det
    inv[..., 1, 1] = a / det
    inv[..., 0, 2] = -(inv[..., 0, 0] * tx + inv[..., 0, 1] * ty)
    inv[..., 1, 2] = -(inv[..., 1, 0] * tx + inv[..., 1, 1] * ty)
    return inv


def transform_points(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Apply ``[..., 2, 3]`` affine matrices to ``[..., K, 2]`` points (broadcast over ``...``).

    Returns float64 ``[..., K, 2]``; e.g. ``transform_points(crop_pts, inverse)`` maps crop points
    back to the photo.
    """
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrices, dtype=np.float64)
    if p.shape[-1] != 2 or m.shape[-2:] != (2, 3):
        raise ValueError(f"points [..., K, 2] and matrices [..., 2, 3] expected, got {p.shape}, {m.shape}")
    return p @ np.swapaxes(m[..., :, :2], -1, -2) + m[..., None, :, 2]


@dataclass(frozen=True, eq=False)
class AlignedCrops:
    """Result of :func:`align_faces` for N faces of one image.

    Attributes:
        crops: ``[N, H, W, C]`` (or ``[N, H, W]`` for a 2-D image), the input's dtype.
        matrices: ``[N, 2, 3]`` float64 photo -> crop.
        inverse: ``[N, 2, 3]`` float64 crop -> photo.
        spec: the crop geometry used.
    """

    crops: np.ndarray
    matrices: np.ndarray
    inverse: np.ndarray
    spec: CropSpec

    def __len__(self) -> int:
        return int(self.crops.shape[0])


def warp_crops(img: np.ndarray, matrices: np.ndarray, spec: CropSpec) -> np.ndarray:
    """Warp ``img`` with each of ``matrices [N, 2, 3]`` into ``[N, H, W(, C)]`` crops.

    One ``cv2.warpAffine`` per face (bilinear, constant 0 border), written in place into one
    preallocated array.
    """
    _check_image(img)
    n = int(matrices.shape[0])
    out = np.empty((n, spec.height, spec.width) + img.shape[2:], dtype=img.dtype)
    size = (spec.width, spec.height)
    for i in range(n):
        cv2.warpAffine(img, matrices[i], size, dst=out[i], borderValue=0.0)
    return out


def align_faces(img: np.ndarray, landmarks: np.ndarray, image_size: int = 112, *,
                variant: CropVariant = "arcface") -> AlignedCrops:
    """Align all faces of one image.

    Args:
        img: ``HxW`` or ``HxWxC`` image (any channel order; crops keep it).
        landmarks: ``[N, 5, 2]`` photo landmarks (``[5, 2]`` is taken as N = 1).
        image_size: crop size, see :class:`CropSpec`.
        variant: ``"arcface"`` (square) or ``"arcface_112x96"``.

    Returns:
        :class:`AlignedCrops` with crops pixel-identical to ``norm_crop`` for each face (same
        ``cv2.warpAffine`` call with matrices equal to insightface's up to float64 rounding).
    """
    _check_image(img)
    lm = np.asarray(landmarks)
    if lm.ndim == 2:
        lm = lm[None]
    spec = CropSpec.create(image_size, variant)
    m = estimate_norm_batch(lm, image_size, variant=variant)
    return AlignedCrops(crops=warp_crops(img, m, spec), matrices=m, inverse=invert_affine(m), spec=spec)


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The largest centred window of ``image`` with the aspect of ``shape = (h, w)``, resized."""
    h, w = shape
    ih, iw = image.shape[:2]
    scale = min(ih / h, iw / w)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = (ih - ch) // 2, (iw - cw) // 2
    window = image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if ch >= h else cv2.INTER_LINEAR
    return cv2.resize(window, (w, h), interpolation=interp)
