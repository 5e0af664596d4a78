"""Identity consistency of a photo folder from face embeddings: pure numpy functions.

Every embedding here is a row of an ``[N, D]`` float32 matrix, L2-normalised (unit rows), and the
distance between two faces is the cosine distance ``1 - cos = 1 - a @ b`` (0 for the same
direction, 1 for orthogonal, up to 2).

* :func:`medoid_index` / :func:`robust_centre`: the centre of an identity, a real face of it: the
  medoid under cosine distance, re-estimated on the half of the faces nearest to it (so that a
  minority of other people in the folder cannot pull it).
* :func:`cosine_distances`: ``[N]`` distances of faces to a centre.
* :class:`OutlierRule`: when a photo is too far from its identity's centre (see its docstring).
* :func:`nearest_face` / :func:`identity_face`: which face of a photo is the identity's
  (``--select identity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.select import select_faces

__all__ = ["OutlierRule", "cosine_distances", "identity_face", "l2_normalize", "medoid_index", "nearest_face",
           "robust_centre"]

MAD_TO_SIGMA = 1.4826
"""``1.4826 * MAD`` estimates the standard deviation of normally distributed values."""


def l2_normalize(embeddings: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """``[N, D]`` -> ``[N, D]`` float32 rows of unit norm (an all-zero row stays zero)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got shape {x.shape}")
    return x


def medoid_index(embeddings: np.ndarray) -> int:
    """Index of the medoid of ``[N, D]`` unit rows under cosine distance, in ``O(N * D)``.

    The medoid minimises ``sum_j (1 - e_i @ e_j) = N - e_i @ s`` with ``s = sum_j e_j``: it is
    the face whose direction is closest to the mean direction. Ties go to the lowest index.
    """
    x = _unit_rows(embeddings)
    total = x.sum(axis=0, dtype=np.float64)
    return int(np.argmax(x.astype(np.float64) @ total))


def robust_centre(embeddings: np.ndarray, *, keep: float = 0.5) -> int:
    """Index of a robust centre of ``[N, D]`` unit rows (the faces of one identity).

    Two steps: the medoid of all rows, then the medoid of the ``ceil(keep * N)`` rows nearest
    to it (at least one). The second step drops the far half, so intruders (other people filed
    under the identity) do not weigh on the centre as long as they are a minority.

    Returns:
        the index (into ``embeddings``) of the face chosen as the centre.
    """
    x = _unit_rows(embeddings)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    first = medoid_index(x)
    n_keep = max(1, math.ceil(keep * x.shape[0]))
    if n_keep >= x.shape[0]:
        return first
    nearest = np.argsort(cosine_distances(x, x[first]), kind="stable")[:n_keep]
    return int(nearest[medoid_index(x[nearest])])


def cosine_distances(embeddings: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``[N, D]`` unit rows, ``[D]`` unit centre -> ``[N]`` float32 ``1 - cos`` distances."""
    x = np.asarray(embeddings, dtype=np.float32)
    c = np.asarray(centre, dtype=np.float32).reshape(-1)
    if x.ndim != 2 or x.shape[1] != c.shape[0]:
        raise ValueError(f"embeddings [N, {c.shape[0]}] expected for a centre of {c.shape[0]}, got {x.shape}")
    return (1.0 - x @ c).astype(np.float32)


def nearest_face(distances: np.ndarray) -> int:
    """Index of the smallest finite distance of one photo's faces (``[K]``), ``-1`` if none
    (no faces, or none with a known distance: NaN). Ties go to the lowest index (the detector's
    most confident face)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    finite = np.isfinite(d)
    if not finite.any():
        return -1
    return int(np.argmin(np.where(finite, d, np.inf)))


def identity_face(distances: np.ndarray, boxes: np.ndarray) -> int:
    """Which of one photo's ``K`` candidate faces is the identity's (``--select identity``): the
    nearest to the identity's centre (:func:`nearest_face` of ``distances``, ``[K]``, NaN where
    unknown); when no distance is known, the largest box (``boxes``, ``[K, 4]`` x1 y1 x2 y2;
    :func:`pipeline.select.select_faces`' ``largest``, ties to the lowest index). ``-1``: no faces."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.shape[0] != b.shape[0]:
        raise ValueError(f"{d.shape[0]} distances but {b.shape[0]} boxes")
    j = nearest_face(d)
    if j >= 0 or b.shape[0] == 0:
        return j
    return int(select_faces(b, np.ones(b.shape[0]), image_shape=(1, 1), mode="largest", max_faces=1)[0])


@dataclass(frozen=True, kw_only=True)
class OutlierRule:
    """When a photo is an identity outlier: its distance to the identity's centre exceeds

    * ``max(floor, median + k * 1.4826 * MAD)`` of the distances of the folder's photos, when
      the folder has at least ``min_photos`` photos with a face (a folder-relative rule: a
      folder of varied photos tolerates more than a tight one, but never less than ``floor``);
    * ``fixed``, an absolute distance, in smaller folders (too few photos to estimate a spread).

    The folder's distances are those of each photo's nearest face to the centre; the centre's
    own photo (distance 0) counts. Defaults suit ArcFace-style models (same person typically
    below 0.5, different people near 1): on the deepface photos with MobileFaceNet, same-person
    distances to the centre stay below 0.55 and other people's above 0.7.

    Attributes:
        k: how many robust standard deviations above the median.
        floor: smallest threshold of the folder-relative rule.
        min_photos: folder size (photos with a face) from which the folder-relative rule applies.
        fixed: the threshold of smaller folders.
    """

    k: float = 3.0
    floor: float = 0.4
    min_photos: int = 8
    fixed: float = 0.6

    def __post_init__(self) -> None:
        for name in ("k", "floor", "fixed"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"outlier {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.floor <= 2.0 or not 0.0 <= self.fixed <= 2.0:
            raise ValueError(f"outlier floor / fixed are cosine distances in [0, 2], got {self.floor}, {self.fixed}")
        if isinstance(self.min_photos, bool) or int(self.min_photos) < 2:
            raise ValueError(f"outlier min_photos must be >= 2, got {self.min_photos!r}")

    def threshold(self, distances: np.ndarray) -> float:
        """The outlier threshold of a folder whose photos are at ``distances`` (``[N]``, NaN
        ignored) from its centre."""
        d = np.asarray(distances, dtype=np.float64).reshape(-1)
        d = d[np.isfinite(d)]
        if d.size < self.min_photos:
            return float(self.fixed)
        median = float(np.median(d))
        mad = float(np.median(np.abs(d - median)))
        return max(float(self.floor), median + self.k * MAD_TO_SIGMA * mad)

    def to_json(self) -> dict:
        return {"k": self.k, "floor": self.floor, "min_photos": self.min_photos, "fixed": self.fixed}
