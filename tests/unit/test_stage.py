"""FaceAligner end to end with the real detector: lists, dict batches, Ray Data, torch Dataset."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.align import CropSpec, transform_points
from pipeline.images import apply_exif_orientation, decode_image, read_image
from pipeline.select import select_faces, selection_key
from pipeline.stage import AlignConfig, AlignedFace, FaceAligner
from tests.shared import asset, golden

DEEPFACE = "verification/deepface"
BATCH = 8


@pytest.fixture(scope="module")
def aligner(detector):
    return FaceAligner(detector=detector, config=AlignConfig())


@pytest.fixture(scope="module")
def deepface_files():
    files = sorted(asset(DEEPFACE).glob("*.jpg"))
    assert len(files) == 62
    return files


def _template_residual(face: AlignedFace) -> float:
    return float(np.linalg.norm(face.crop_landmarks - CropSpec.create(112).template, axis=1).mean())


# ------------------------------------------------------------------ acceptance 3 and verification
def test_every_deepface_photo_yields_one_largest_face_and_verifies(aligner, deepface_files):
    images = {p.name: read_image(p) for p in deepface_files}
    # batches of similar shape: less padding in the detector's batch tensor
    names = sorted(images, key=lambda n: (images[n].shape[0] >= images[n].shape[1], images[n].size))
    crops: dict[str, np.ndarray] = {}
    residuals = []
    for start in range(0, len(names), BATCH):
        batch_names = names[start:start + BATCH]
        batch = [images[n] for n in batch_names]
        dets = aligner.detect(batch)  # one detector call for the batch
        faces = aligner.align_detections(batch, dets)
        for name, img, det, found in zip(batch_names, batch, dets, faces):
            assert len(det) >= 1 and len(found) == 1, name
            face = found[0]
            areas = selection_key(det.boxes, det.scores, img.shape, "largest")
            assert face.face_index == int(np.argmax(areas)), name  # the largest face
            assert face.score >= 0.5 and face.crop.shape == (112, 112, 3)
            np.testing.assert_array_equal(face.box, det.boxes[face.face_index])
            residuals.append(_template_residual(face))
            crops[name] = face.crop
    # real faces fit the template to a few pixels (img54's largest box is a torso false positive)
    assert np.median(residuals) < 4.0

    # the crops verify like the golden run (reference detector, largest face, cap 1024, ArcFace 112)
    import onnxruntime as ort

    session = ort.InferenceSession(str(asset("weights/mobilefacenet_arcface112.onnx")),
                                   providers=["CPUExecutionProvider"])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    emb = {}
    for name, crop in crops.items():
        x = ((crop[:, :, ::-1] / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        e = session.run(None, {"input0": x})[0][0]
        emb[name] = e / np.linalg.norm(e)
    with asset(f"{DEEPFACE}/master.csv").open() as f:
        pairs = [(r["file_x"], r["file_y"], r["Decision"] == "Yes") for r in csv.DictReader(f)]
    sims = np.array([emb[a] @ emb[b] for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs])
    pos, neg = sims[same], sims[~same]
    auc = float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    expected = json.loads(golden("verification/deepface_expected.json").read_text())
    print(f"\ndeepface: 62/62 photos -> one face each; template residual median "
          f"{np.median(residuals):.2f} px, max {np.max(residuals):.2f} px; verification AUC {auc:.4f} "
          f"(golden {expected['results']['aligned_arcface112']['auc']})")
    assert auc >= expected["results"]["aligned_arcface112"]["auc"] - 0.005


def _exif_copy(img_bgr: np.ndarray, orientation: int, fmt: str) -> bytes:
    """A file whose stored pixels are ``img_bgr`` turned so that EXIF ``orientation`` restores it
    (JPEG as a camera would write it, quality 95, 4:4:4; or lossless PNG with an eXIf chunk)."""
    inverse = {3: 3, 6: 8, 8: 6}[orientation]
    stored = apply_exif_orientation(img_bgr, inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)).save(out, format=fmt, exif=exif.tobytes(),
                                                                  **options)
    return out.getvalue()


def test_exif_rotated_copies_give_the_upright_crop(aligner):
    original = read_image(asset(f"{DEEPFACE}/img11.jpg"))  # 600x800
    copies = {(fmt, o): _exif_copy(original, o, fmt) for fmt in ("JPEG", "PNG") for o in (3, 6, 8)}
    stored = decode_image(copies["JPEG", 6], exif_orientation=False)
    assert stored.shape[:2] == original.shape[1::-1]  # really rotated pixels
    decoded = [decode_image(c, source=f"rot{o}.{fmt.lower()}") for (fmt, o), c in copies.items()]
    for (fmt, _), img in zip(copies, decoded):
        assert img.shape == original.shape
        if fmt == "PNG":
            np.testing.assert_array_equal(img, original)
    faces = aligner.align([original] + decoded)
    ref = faces[0][0].crop.astype(float)
    diffs = {}
    for key, found in zip(copies, faces[1:]):
        assert len(found) == 1
        diffs[key] = float(np.abs(found[0].crop - ref).mean())
    print("\nEXIF copies vs upright crop, mean |diff| grey levels: "
          + ", ".join(f"{fmt} {o}: {d:.2f}" for (fmt, o), d in diffs.items()))
    assert max(diffs.values()) <= 2.0
    assert all(d == 0.0 for (fmt, _), d in diffs.items() if fmt == "PNG")  # lossless: identical
    # without applying EXIF the face is sideways: its crop differs grossly
    (found,) = aligner.align([stored])
    assert not found or np.abs(found[0].crop - ref).mean() > 10


# ------------------------------------------------------------------ acceptance 2
def test_realigning_an_aligned_crop_is_nearly_the_identity(aligner):
    crop = read_image(asset("images/aligned112_insightface_tom_hanks.png"))
    pad = 56  # the crop in the middle of a 224x224 photo
    photo = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    (face,) = aligner.align([photo])[0]
    template = CropSpec.create(112).template
    # where the original crop's template points land in the re-aligned crop
    moved = np.linalg.norm(transform_points(template + pad, face.matrix) - template, axis=1)
    # the re-detected landmarks, in the original crop's pixels and in the new crop's
    detected = np.linalg.norm(face.landmarks - pad - template, axis=1)
    residual = np.linalg.norm(face.crop_landmarks - template, axis=1)
    diff = np.abs(face.crop.astype(float) - crop).mean()
    print(f"\nTom Hanks re-alignment: template points move {np.round(moved, 2)} px "
          f"(mean {moved.mean():.2f}, max {moved.max():.2f}); re-detected landmarks vs template "
          f"{np.round(detected, 2)} px; after re-alignment {np.round(residual, 2)} px; "
          f"crop mean |diff| {diff:.1f} grey levels")
    assert moved.mean() <= 2.0 and moved.max() <= 3.0
    assert detected[:2].max() <= 4.0  # the eyes
    assert diff < 15.0


# ------------------------------------------------------------------ selection
def test_selection_modes_on_a_group_photo(detector):
    img = read_image(asset("images/group_insightface_t1.jpg"))
    everyone = FaceAligner(detector=detector, config=AlignConfig(select="all"))
    det = everyone.detect([img])[0]
    faces = everyone.align_detections([img], [det])[0]
    assert len(faces) == len(det) == 6 and [f.face_index for f in faces] == list(range(6))
    assert all(np.diff([f.score for f in faces]) <= 0)

    b = det.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    h, w = img.shape[:2]
    offsets = np.vstack([(b[:, 0] + b[:, 2]) / 2 - w / 2, (b[:, 1] + b[:, 3]) / 2 - h / 2])
    facenet = int(np.argmax(area - np.sum(offsets ** 2, 0) * 2.0))  # facenet align_dataset
    expect = {"largest": int(np.argmax(area)), "central": facenet, "score": 0}
    for mode, index in expect.items():
        al = FaceAligner(detector=detector, config=AlignConfig(select=mode))
        (face,) = al.align_detections([img], [det])[0]
        assert face.face_index == index, mode
        np.testing.assert_array_equal(face.crop, faces[index].crop)
    three = FaceAligner(detector=detector, config=AlignConfig(select="largest", max_faces=3))
    got = [f.face_index for f in three.align_detections([img], [det])[0]]
    assert got == list(np.argsort(-area, kind="stable")[:3])
    side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    limit = float(np.median(side))
    big = FaceAligner(detector=detector, config=AlignConfig(select="all", min_face_size=limit))
    assert [f.face_index for f in big.align_detections([img], [det])[0]] == list(np.flatnonzero(side >= limit))


def test_select_faces_rules_without_a_detector():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [0, 0, 30, 30], [45, 45, 55, 55]], float)
    scores = np.array([0.9, 0.8, 0.4, 0.7])
    shape = (100, 100, 3)
    assert select_faces(boxes, scores, image_shape=shape, mode="largest").tolist() == [2]
    assert select_faces(boxes, scores, image_shape=shape, mode="largest", min_score=0.5).tolist() == [1]
    assert select_faces(boxes, scores, image_shape=shape, mode="central").tolist() == [1]
    assert select_faces(boxes, scores, image_shape=shape, mode="score").tolist() == [0]
    assert select_faces(boxes, scores, image_shape=shape, mode="all", min_score=0.5).tolist() == [0, 1, 3]
    assert select_faces(boxes, scores, image_shape=shape, mode="all", min_face_size=15).tolist() == [1, 2]
    assert select_faces(boxes, scores, image_shape=shape, mode="all", max_faces=2).tolist() == [0, 1]
    assert select_faces(boxes[:0], scores[:0], image_shape=shape).shape == (0,)
    # ties: the first in detector order, like np.argmax
    assert select_faces(boxes[[1, 1]], scores[[1, 1]], image_shape=shape).tolist() == [0]
    with pytest.raises(ValueError):
        select_faces(boxes, scores, image_shape=shape, mode="biggest")
    with pytest.raises(ValueError):
        select_faces(boxes, scores, image_shape=shape, max_faces=0)


# ------------------------------------------------------------------ input forms
def test_gray_and_rgb_inputs_align_like_bgr(aligner, detector):
    img = read_image(asset(f"{DEEPFACE}/img12.jpg"))  # 560x415
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    blank = np.full((40, 50, 3), 127, np.uint8)
    faces = aligner.align([img, gray, blank])
    assert [len(f) for f in faces] == [1, 1, 0]
    # gray input: detected and aligned as 3 equal channels
    assert np.ptp(faces[1][0].crop.astype(int), axis=2).max() == 0
    both = aligner.detect_and_align([img, gray, blank])
    np.testing.assert_array_equal(both[0][1][0].crop, faces[0][0].crop)
    assert len(both[0][0]) >= 1 and both[0][1][0].face_index < len(both[0][0])
    rgb = FaceAligner(detector=detector, config=AlignConfig(color="rgb"))
    rgb_faces = rgb.align([np.ascontiguousarray(img[:, :, ::-1]), gray, blank])  # same detector input
    np.testing.assert_array_equal(rgb_faces[0][0].crop, faces[0][0].crop[:, :, ::-1])
    with pytest.raises(ValueError, match="image 1: expected uint8"):
        aligner.align([img, img.astype(np.float32)])
    with pytest.raises(TypeError, match="FaceDetector"):
        FaceAligner(detector=lambda: object(), config=AlignConfig())


def test_config_validation():
    for bad in (dict(image_size=100), dict(crop="arcface_112x96", image_size=128), dict(select="big"),
                dict(max_faces=0), dict(min_score=1.5), dict(min_face_size=-1), dict(color="yuv"),
                dict(resize="huge"), dict(on_error="ignore"), dict(max_pixels=0)):
        with pytest.raises(ValueError):
            AlignConfig(**bad)
    cfg = AlignConfig(resize="long:640")
    assert cfg.resize.mode == "long_side" and AlignConfig().resize.mode == "cap"
    assert AlignConfig(crop="arcface_112x96").crop_shape == (112, 96)
    with pytest.raises(TypeError):
        AlignConfig(112)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 224  # frozen


# ------------------------------------------------------------------ torch
def test_inside_a_torch_dataset(aligner):
    import torch
    from torch.utils.data import DataLoader, Dataset

    class AlignedFaces(Dataset):
        """Largest face of each photo as a CHW float tensor in [0, 1]."""

        def __init__(self, paths, face_aligner: FaceAligner):
            self.paths = list(paths)
            self.aligner = face_aligner

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            (face,) = self.aligner.align([read_image(self.paths[i])])[0]
            return torch.from_numpy(face.crop).permute(2, 0, 1).float() / 255, torch.from_numpy(face.matrix)

    paths = [asset(f"{DEEPFACE}/{name}") for name in ("img10.jpg", "img21.jpg", "img50.jpg")]
    loader = DataLoader(AlignedFaces(paths, aligner), batch_size=3, num_workers=0)
    crops, matrices = next(iter(loader))
    assert crops.shape == (3, 3, 112, 112) and matrices.shape == (3, 2, 3)
    for i, p in enumerate(paths):
        (face,) = aligner.align([read_image(p)])[0]
        np.testing.assert_array_equal((crops[i] * 255).round().byte().permute(1, 2, 0).numpy(), face.crop)
