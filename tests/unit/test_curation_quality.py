"""Per-face quality measures (pose, eye distance, box size, sharpness, brightness), the quality
filter, and both through the align job: constructed cases on real photos (blur, mirror, rotation by
20 degrees, half size), and filters deciding the selection and the ``filtered`` status."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.curation import (
    MEAN_FACE_3D,
    QualityFilter,
    box_size,
    brightness,
    eye_distance,
    face_quality,
    head_pose,
    sharpness,
)
from tests.shared import asset

DEEPFACE = "verification/deepface"
MIRROR = [1, 0, 2, 4, 3]  # landmark order after a left-right flip (left eye = image left)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The rotation ``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` that :func:`head_pose` inverts."""
    a, b, g = np.radians([-pitch, -yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _project(yaw: float, pitch: float, roll: float, scale: float = 2.5, shift=(300.0, 200.0)) -> np.ndarray:
    return (scale * MEAN_FACE_3D @ _rotation(yaw, pitch, roll).T)[:, :2] + shift


# ------------------------------------------------------------------------------------ pure functions


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (0, 20, 0), (0, -25, 0), (0, 0, 20),
                                    (25, -15, 10), (-40, 10, -35), (60, 5, 170)])
def test_pose_recovers_the_angles_of_a_projected_mean_face(angles):
    np.testing.assert_allclose(head_pose(_project(*angles)), angles, atol=1e-9)


def test_pose_sign_conventions_in_image_coordinates():
    def eyes_mid(p):
        return (p[0] + p[1]) / 2

    front = _project(0, 0, 0)
    right, up, clockwise = _project(20, 0, 0), _project(0, 20, 0), _project(0, 0, 20)
    # yaw > 0: the face turns towards the image right (the nose moves right of the eyes' midpoint)
    assert (right[2] - eyes_mid(right))[0] > 0 and (front[2] - eyes_mid(front))[0] == pytest.approx(0)
    # pitch > 0: chin up, the nose tip moves up towards the eyes (y down)
    assert (up[2] - eyes_mid(up))[1] < (front[2] - eyes_mid(front))[1]
    # roll > 0: the line from the left eye (image left) to the right eye goes down to the right
    assert clockwise[1, 1] > clockwise[0, 1]
    np.testing.assert_allclose(head_pose(front), [0, 0, 0], atol=1e-9)


def test_pose_is_antisymmetric_under_mirroring_and_rotating_the_points_adds_to_the_roll(detector):
    """On real detected points: exact (the fit is equivariant), whatever the detector's error."""
    for name in ("img1.jpg", "img12.jpg", "img30.jpg"):
        img = _even(cv2.imread(str(asset(f"{DEEPFACE}/{name}"))))
        pts = detector.detect([img])[0].numpy().landmarks[0].astype(np.float64)
        yaw, pitch, roll = head_pose(pts)
        mirrored = pts[MIRROR] * [-1, 1] + [img.shape[1] - 1, 0]
        np.testing.assert_allclose(head_pose(mirrored), [-yaw, pitch, -roll], atol=1e-9)
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), -20, 1.0)  # 20 deg clockwise
        np.testing.assert_allclose(head_pose(pts @ m[:, :2].T + m[:, 2]), [yaw, pitch, roll + 20], atol=1e-9)
        assert eye_distance(pts * 0.5) == pytest.approx(eye_distance(pts) / 2, rel=1e-12)


def test_measures_on_shapes_and_an_independent_laplacian():
    lm = np.array([[[10, 10], [40, 14], [25, 30], [12, 45], [38, 45]]], np.float64)
    assert eye_distance(lm).shape == (1,) and eye_distance(lm)[0] == pytest.approx(np.hypot(30, 4))
    assert box_size(np.array([[10, 20, 50, 120], [5, 5, 4, 9]])).tolist() == [pytest.approx(np.sqrt(4000)), 0.0]
    crop = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")))
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    padded = np.pad(grey, 1, mode="reflect")  # OpenCV's default border (reflect 101)
    lap = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * grey
    assert sharpness(crop) == pytest.approx(lap.var(), rel=1e-9)
    assert brightness(crop) == pytest.approx(grey.mean(), rel=1e-9)
    assert brightness(np.full((112, 112, 3), 77, np.uint8)) == 77.0 and sharpness(np.zeros((8, 8), np.uint8)) == 0
    with pytest.raises(ValueError, match="uint8"):
        sharpness(crop.astype(np.float32))
    q = face_quality(np.array([[0, 0, 112, 112]]), lm, crop[None])[0]
    assert list(q) == ["box_size", "eye_distance", "yaw", "pitch", "roll", "sharpness", "brightness"]
    assert q["box_size"] == 112.0 and q["sharpness"] == round(sharpness(crop), 2)
    assert face_quality(None, lm, crop[None])[0]["box_size"] is None


def test_quality_filter_validation_and_reasons():
    assert not QualityFilter().active and QualityFilter(max_yaw=45).active
    f = QualityFilter(min_eye_distance=20, max_yaw=45, max_roll=30, min_sharpness=50, min_brightness=40,
                      max_brightness=220, min_box_size=32, max_pitch=40)
    good = {"box_size": 90.0, "eye_distance": 35.0, "yaw": -44.9, "pitch": 39.0, "roll": 3.0, "sharpness": 80.0,
            "brightness": 120.0}
    assert f.reasons(good) == []
    bad = {**good, "yaw": 63.14, "eye_distance": 8.2, "roll": -31.0, "brightness": 230.0, "box_size": None}
    assert f.reasons(bad) == ["box_size unknown (min_box_size 32)", "eye_distance 8.2 < 20", "yaw 63.1 > 45",
                              "roll -31.0 < -30", "brightness 230.0 > 220"]
    for kwargs, message in [({"max_yaw": 0}, "max_yaw must be in"), ({"max_roll": 181}, "max_roll must be in"),
                            ({"min_sharpness": -1}, "min_sharpness must be >= 0"),
                            ({"min_brightness": 300}, "min_brightness must be in"),
                            ({"min_brightness": 200, "max_brightness": 100}, "min_brightness 200 > max_brightness 100"),
                            ({"min_eye_distance": float("nan")}, "finite number"),
                            ({"max_pitch": True}, "finite number")]:
        with pytest.raises(ValueError, match=message):
            QualityFilter(**kwargs)
    assert QualityFilter(max_yaw=45).to_dict()["max_yaw"] == 45.0


def _even(img: np.ndarray, long_side: int = 512) -> np.ndarray:
    """A smaller copy (a fast test) with even sides (an exact half size)."""
    scale = min(1.0, long_side / max(img.shape[:2]))
    w, h = (round(img.shape[1] * scale) // 2 * 2, round(img.shape[0] * scale) // 2 * 2)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
