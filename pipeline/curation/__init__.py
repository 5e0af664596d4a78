"""Dataset curation for the align job: given landmarks, per-face quality, identity consistency.

* :mod:`~pipeline.curation.landmarks` - the ``--landmarks`` CSV (:func:`read_landmarks_csv`,
  :class:`GivenLandmarks`), and the box recorded for a given face (:func:`box_from_landmarks`);
* :mod:`~pipeline.curation.quality` - pure measures (eye distance, box size, head pose from five
  points, sharpness, brightness), :func:`face_quality` (the manifest's ``"quality"`` dict) and
  :class:`QualityFilter` (which faces may be selected);
* :mod:`~pipeline.curation.identity` - identity consistency from face embeddings: a robust
  identity centre (:func:`robust_centre`), cosine distances, the :class:`OutlierRule`, and
  :func:`nearest_face` / :func:`identity_face` (the align job's ``--recognizer`` / ``--select identity``).

No torch, no Ray: importable in the job's driver.
"""

from pipeline.curation.identity import (
    OutlierRule,
    cosine_distances,
    identity_face,
    l2_normalize,
    medoid_index,
    nearest_face,
    robust_centre,
)
from pipeline.curation.landmarks import (
    HEADER,
    GivenLandmarks,
    LandmarksFileError,
    box_from_landmarks,
    read_landmarks_csv,
    unpack_points,
)
from pipeline.curation.quality import (
    MEAN_FACE_3D,
    QUALITY_KEYS,
    QualityFilter,
    box_size,
    brightness,
    eye_distance,
    face_quality,
    head_pose,
    sharpness,
)

__all__ = [
    "HEADER", "MEAN_FACE_3D", "QUALITY_KEYS", "GivenLandmarks", "LandmarksFileError", "QualityFilter",
    "box_from_landmarks", "box_size", "brightness", "eye_distance", "face_quality", "head_pose",
    "read_landmarks_csv", "sharpness", "unpack_points",
    "OutlierRule", "cosine_distances", "identity_face", "l2_normalize", "medoid_index", "nearest_face", "robust_centre",
]
