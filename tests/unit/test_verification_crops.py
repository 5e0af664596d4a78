"""Alignment sources without a detector: the box crop's geometry and the provided-landmark crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from pipeline.verification.crops import (
    CropMaker,
    CropStatus,
    box_crop,
    parse_sources,
    square_box_matrix,
    whole_image_box,
)
from tests.shared import asset


def test_square_box_matrix_geometry():
    box = np.array([10.0, 20.0, 50.0, 100.0])  # 40 wide, 80 high: square side 80 around (30, 60)
    m = square_box_matrix(box, 112)
    assert m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] == m[1, 1] == pytest.approx(112 / 80)
    corners = np.array([[-10.0, 20.0, 1.0], [70.0, 100.0, 1.0], [30.0, 60.0, 1.0]])
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [112, 112], [56, 56]], atol=1e-12)
    with pytest.raises(ValueError, match="degenerate"):
        square_box_matrix(np.array([5.0, 5.0, 5.0, 5.0]))


def test_box_crop_identity_and_content():
    img = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")))
    np.testing.assert_array_equal(box_crop(img, whole_image_box(img)), img)  # identity warp
    canvas = np.zeros((300, 400, 3), np.uint8)
    canvas[100:200, 150:200] = 255  # a 50x100 white bar; its square is 100x100 centred on it
    crop = box_crop(canvas, np.array([150.0, 100.0, 200.0, 200.0]))
    assert crop[56, 56].tolist() == [255, 255, 255]
    assert crop[56, 5].tolist() == [0, 0, 0] and crop[56, 106].tolist() == [0, 0, 0]  # side margins
    assert crop[:, 30:80].mean() > 250  # the bar spans the middle half, full height


def test_provided_crop_matches_insightface_and_degenerate_landmarks_count():
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    lmk = np.array([[420.0, 250.0], [470.0, 252.0], [446.0, 280.0], [425.0, 305.0], [466.0, 306.0]])
    maker = CropMaker(sources=("provided",))
    made = maker(img, landmarks=lmk, score=0.7)
    want = face_align.norm_crop(img, lmk)
    assert made.status["provided"] is CropStatus.OK and made.scores["provided"] == 0.7
    assert np.abs(made.crops["provided"].astype(int) - want.astype(int)).max() <= 1
    flat = maker(img, landmarks=np.full((5, 2), 10.0), score=0.7)
    assert flat.status["provided"] is CropStatus.NO_FACE and flat.crops["provided"] is None
    with pytest.raises(ValueError, match="need a face aligner"):
        CropMaker(sources=("provided", "box"))


def test_parse_sources():
    assert parse_sources("detector, box,provided") == ("detector", "box", "provided")
    with pytest.raises(ValueError, match="unknown alignment source"):
        parse_sources("detector,mtcnn")
    with pytest.raises(ValueError, match="twice"):
        parse_sources("box,box")
