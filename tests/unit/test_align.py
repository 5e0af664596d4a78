"""pipeline.align against insightface's face_align (the reference), plus exact invariants."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict

import cv2
import numpy as np
import pytest

from pipeline.align import (
    ARCFACE_TEMPLATE,
    CropSpec,
    align_faces,
    estimate_norm,
    estimate_norm_batch,
    invert_affine,
    norm_crop,
    norm_crop2,
    similarity_umeyama,
    transform_points,
)
from tests.shared import asset, golden

face_align = pytest.importorskip("insightface.utils.face_align")

SIZES = (112, 128, 224)
GOLDEN = "retinaface/biubug6_mobilenet0.25_reference_detections.json"


def _insightface(fn, *args):
    with warnings.catch_warnings():  # skimage 0.26 deprecates SimilarityTransform.estimate
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _golden_faces(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Landmarks of every face with score >= 0.5 in the reference detections, + N(0, 0.5 px)."""
    data = json.loads(golden(GOLDEN).read_text())
    faces: dict[str, list[np.ndarray]] = defaultdict(list)
    for entry in data["images"]:
        for row in entry["detections"]:
            if row[4] >= 0.5:
                lm = np.asarray(row[5:15], dtype=np.float64).reshape(5, 2)
                faces[entry["image"]].append(lm + rng.normal(0.0, 0.5, size=(5, 2)))
    return faces


def _random_faces(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """Plausible five-point sets: the template at 12-400 px inter-template scale, rolled up to
    +-60 degrees, squeezed horizontally (yaw), with 3% per-point noise; some near/over borders."""
    base = (ARCFACE_TEMPLATE.astype(np.float64) - [56.0, 66.0]) / 112.0
    out = np.empty((n, 5, 2))
    for i in range(n):
        size = np.exp(rng.uniform(np.log(12.0), np.log(400.0)))
        yaw = rng.uniform(0.55, 1.0)
        pts = base * [yaw, 1.0]
        pts[2, 0] += rng.uniform(-0.15, 0.15) * (1.0 - yaw) * 2.0  # nose moves with yaw
        pts = pts + rng.normal(0.0, 0.03, size=(5, 2))
        m = _similarity(size, rng.uniform(-np.pi / 3, np.pi / 3),
                        rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height)
        out[i] = transform_points(pts, m)
    return out


def _compare_crops(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    return int(diff.max()), float(np.count_nonzero(diff) / diff.size)


def test_parity_with_insightface_on_golden_and_random_landmarks():
    rng = np.random.default_rng(2024)
    sets: list[tuple[np.ndarray, np.ndarray]] = []  # (image, [N, 5, 2])
    for rel, lms in _golden_faces(rng).items():
        img = cv2.imread(str(asset(rel)), cv2.IMREAD_COLOR)
        assert img is not None, rel
        sets.append((img, np.stack(lms)))
    n_golden = sum(len(lm) for _, lm in sets)
    assert n_golden > 300  # 378 faces with score >= 0.5 in the reference file
    photo = cv2.imread(str(asset("images/group_insightface_t1.jpg")), cv2.IMREAD_COLOR)
    sets.append((photo, _random_faces(rng, 1000, photo.shape[1], photo.shape[0])))

    worst_matrix = 0.0
    worst_pixel = 0
    worst_fraction = 0.0
    faces_with_diff = 0
    for size in SIZES:
        for img, lms in sets:
            batch = align_faces(img, lms, size)
            assert batch.crops.shape == (len(lms), size, size, 3)
            for i, lm in enumerate(lms):
                ref_m = _insightface(face_align.estimate_norm, lm, size)
                ref_crop = _insightface(face_align.norm_crop, img, lm, size)
                worst_matrix = max(worst_matrix, float(np.abs(batch.matrices[i] - ref_m).max()))
                max_diff, fraction = _compare_crops(batch.crops[i], ref_crop)
                worst_pixel = max(worst_pixel, max_diff)
                worst_fraction = max(worst_fraction, fraction)
                faces_with_diff += max_diff > 0
    print(f"\nparity: {n_golden} golden + 1000 random faces x sizes {SIZES}: max |M - M_ref| = "
          f"{worst_matrix:.3g}, worst crop: max diff {worst_pixel} grey level(s) on "
          f"{worst_fraction:.4%} of its values, crops with any difference: {faces_with_diff}")
    assert worst_matrix <= 1e-6
    assert worst_pixel <= 1
    assert worst_fraction <= 0.001


def test_insightface_signatures_match_single_face():
    rng = np.random.default_rng(7)
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")), cv2.IMREAD_COLOR)
    for size in (112, 128, 224, 256, 448):
        lm = _random_faces(rng, 1, img.shape[1], img.shape[0])[0]
        m = estimate_norm(lm, size)
        np.testing.assert_allclose(m, _insightface(face_align.estimate_norm, lm, size), atol=1e-9, rtol=0)
        crop = norm_crop(img, lm, image_size=size)
        np.testing.assert_array_equal(crop, _insightface(face_align.norm_crop, img, lm, size))
        crop2, m2 = norm_crop2(img, lm, size)
        np.testing.assert_array_equal(crop2, crop)
        np.testing.assert_array_equal(m2, m)


def test_float32_landmarks_stay_close_to_insightface():
    """insightface computes in float32 for float32 input; we compute in float64."""
    rng = np.random.default_rng(3)
    lms = _random_faces(rng, 50, 1000, 800).astype(np.float32)
    ours = estimate_norm_batch(lms, 112)
    ref = np.stack([_insightface(face_align.estimate_norm, lm, 112) for lm in lms])
    np.testing.assert_allclose(ours[:, :, :2], ref[:, :, :2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[:, :, 2], ref[:, :, 2], atol=5e-3, rtol=0)  # float32 translation
    exact = estimate_norm_batch(lms.astype(np.float64), 112)
    np.testing.assert_array_equal(ours, exact)


@pytest.mark.parametrize(("size", "expected"), [
    (112, [[1, 0, 0], [0, 1, 0]]),
    (128, [[1, 0, 8], [0, 1, 0]]),
    (224, [[2, 0, 0], [0, 2, 0]]),
    (256, [[2, 0, 16], [0, 2, 0]]),
    (896, [[8, 0, 0], [0, 8, 0]]),  # multiple of 112 and 128: the 112 rule wins
])
def test_template_size_rule(size, expected):
    lm = ARCFACE_TEMPLATE.astype(np.float64)
    m = estimate_norm(lm, size)
    # insightface centres its float32 template in float32: 1.5e-6 (112) to 1.2e-5 px (896) off
    np.testing.assert_allclose(m, expected, atol=1e-4)
    np.testing.assert_allclose(m, _insightface(face_align.estimate_norm, lm, size),
                               atol=1e-9, rtol=0)
    spec = CropSpec.create(size)
    assert (spec.width, spec.height) == (size, size)
    np.testing.assert_allclose(transform_points(lm, m), spec.template, atol=1e-4)


def test_recovers_known_similarity_exactly():
    rng = np.random.default_rng(11)
    template = CropSpec.create(112).template
    angles = np.concatenate([rng.uniform(-np.pi, np.pi, 200), [0.0, np.pi, -np.pi / 2, np.pi / 2]])
    truth = np.stack([_similarity(np.exp(rng.uniform(-4, 4)), a, *rng.uniform(-500, 500, 2))
                      for a in angles])
    # landmarks = truth^-1(template): estimating must give back truth
    lms = transform_points(template[None], invert_affine(truth))
    est = estimate_norm_batch(lms, 112)
    np.testing.assert_allclose(est[:, :, :2], truth[:, :, :2], rtol=1e-9, atol=1e-12)
    # translation: exact but for insightface's float32 template centring (<= 2e-6 px at 112)
    np.testing.assert_allclose(est[:, :, 2], truth[:, :, 2], rtol=0, atol=2e-6)


def test_similarity_umeyama_matches_skimage_including_reflections():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(5)
    for k in (2, 3, 5, 12):
        src = rng.normal(0, 50, size=(100, k, 2))
        dst = rng.normal(0, 50, size=(100, k, 2))
        dst[::2, :, 0] *= -1  # half the pairs are best matched by a reflection
        ours = similarity_umeyama(src, dst)
        for i in range(len(src)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                t = SimilarityTransform()
                t.estimate(src[i], dst[i])
            np.testing.assert_allclose(ours[i], t.params[:2], atol=1e-9, rtol=1e-9)
        assert np.all(np.linalg.det(ours[:, :, :2]) > 0)  # never a reflection


def test_inverse_and_point_round_trip():
    rng = np.random.default_rng(9)
    lms = _random_faces(rng, 300, 1000, 800)
    m = estimate_norm_batch(lms, 224)
    inv = invert_affine(m)
    for i in range(0, 300, 37):
        np.testing.assert_allclose(inv[i], cv2.invertAffineTransform(m[i]), atol=1e-9, rtol=1e-9)
    in_crop = transform_points(lms, m)
    np.testing.assert_allclose(transform_points(in_crop, inv), lms, atol=1e-8)
    # crop landmarks sit near the template (least-squares residual of plausible faces)
    assert np.abs(in_crop - CropSpec.create(224).template).mean() < 15


def test_aligning_a_warped_crop_recovers_it():
    """Put the aligned Tom Hanks crop into a photo with a known similarity; aligning the photo
    with the mapped template must give back the transform's inverse and (up to resampling) the crop."""
    crop = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")), cv2.IMREAD_COLOR)
    place = _similarity(2.5, np.deg2rad(25.0), 180.0, 60.0)  # crop -> photo
    photo = cv2.warpAffine(crop, place, (500, 420), flags=cv2.INTER_CUBIC)
    landmarks = transform_points(ARCFACE_TEMPLATE, place)
    out = align_faces(photo, landmarks, 112)
    np.testing.assert_allclose(out.matrices[0], invert_affine(place), atol=2e-6)
    np.testing.assert_allclose(out.inverse[0], place, atol=1e-5)
    inner = (slice(2, -2), slice(2, -2))
    diff = np.abs(out.crops[0][inner].astype(float) - crop[inner]).mean()
    assert diff < 3.0, diff


def test_112x96_crop_is_the_arcface_crop_minus_8px_each_side():
    rng = np.random.default_rng(13)
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")), cv2.IMREAD_COLOR)
    lms = _random_faces(rng, 200, img.shape[1], img.shape[0])
    for size in (112, 224):
        sq = align_faces(img, lms, size)
        narrow = align_faces(img, lms, size, variant="arcface_112x96")
        margin = 8 * size // 112
        assert narrow.crops.shape == (200, size, size * 96 // 112, 3)
        shifted = sq.matrices.copy()
        shifted[:, 0, 2] -= margin
        np.testing.assert_allclose(narrow.matrices, shifted, atol=1e-9)
        max_diff, fraction = _compare_crops(narrow.crops, sq.crops[:, :, margin:size - margin])
        assert max_diff <= 1 and fraction <= 0.001
    spec = CropSpec.create(112, "arcface_112x96")
    np.testing.assert_allclose(spec.template[0], [30.2946, 51.6963], atol=1e-5)  # SphereFace's


def test_image_layouts_and_empty_batches():
    rng = np.random.default_rng(17)
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")), cv2.IMREAD_COLOR)
    lms = _random_faces(rng, 4, img.shape[1], img.shape[0])
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    g = align_faces(gray, lms)
    assert g.crops.shape == (4, 112, 112) and g.crops.dtype == np.uint8
    np.testing.assert_array_equal(g.crops[1], _insightface(face_align.norm_crop, gray, lms[1]))
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    assert align_faces(bgra, lms).crops.shape == (4, 112, 112, 4)
    f = align_faces(img.astype(np.float32) / 255, lms)
    assert f.crops.dtype == np.float32
    empty = align_faces(img, np.zeros((0, 5, 2)))
    assert empty.crops.shape == (0, 112, 112, 3) and empty.matrices.shape == (0, 2, 3)
    single = align_faces(img, lms[0])
    np.testing.assert_array_equal(single.crops[0], align_faces(img, lms).crops[0])


def test_invalid_inputs_raise_clear_value_errors():
    lm = ARCFACE_TEMPLATE.astype(np.float64)
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        estimate_norm(lm[:4])
    with pytest.raises(ValueError, match=r"\[N, 5, 2\]"):
        estimate_norm_batch(np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_norm(np.where(np.arange(10).reshape(5, 2) == 3, np.nan, lm))
    with pytest.raises(ValueError, match=r"faces \[1\]"):
        estimate_norm_batch(np.stack([lm, lm + np.inf]))
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        estimate_norm(lm, 100)
    with pytest.raises(ValueError, match="positive"):
        estimate_norm(lm, 0)
    with pytest.raises(ValueError, match="int"):
        estimate_norm(lm, 112.0)
    with pytest.raises(ValueError, match="multiple of 112"):
        CropSpec.create(128, "arcface_112x96")
    with pytest.raises(ValueError, match="variant"):
        CropSpec.create(112, "vggface")
    with pytest.raises(ValueError, match="mode"):
        estimate_norm(lm, 112, mode="default")
    with pytest.raises(ValueError, match="degenerate"):
        estimate_norm(np.full((5, 2), 40.0))
    with pytest.raises(ValueError, match="numeric"):
        estimate_norm(np.array([["a", "b"]] * 5))
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="numpy array"):
        norm_crop([[0]], lm)
