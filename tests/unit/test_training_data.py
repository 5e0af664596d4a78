"""Label parsing, the step sampler and training augmentation on the real widerface_mini set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.training.augment import (
    FLIP_LANDMARK_ORDER,
    AugmentConfig,
    CropConfig,
    PhotometricConfig,
    TrainAugmentation,
    flip_horizontal,
    photometric_distort,
)
from detector.training.dataset import (
    LabelFormatError,
    SampleKey,
    StepSampler,
    WiderFaceTrainDataset,
    parse_label_file,
    sample_generator,
)
from tests.shared import asset

LABELS = "widerface_mini/train/label.txt"
GROUP = "group_insightface_t1.jpg"


@pytest.fixture(scope="module")
def labeled():
    return parse_label_file(asset(LABELS))


def by_name(images, name):
    return next(image for image in images if image.path.name == name)


def test_parses_every_face_of_widerface_mini(labeled):
    assert len(labeled) == 6
    assert sum(len(image) for image in labeled) == 359
    # first face line: "311 131 8 9 -1.0 ... 1.0" -> x1y1x2y2, no landmarks
    first = by_name(labeled, "0_Parade_marchingband_1_765.jpg")
    np.testing.assert_allclose(first.boxes[0], [311, 131, 319, 140])
    assert not first.has_landmarks.any()
    assert first.line == 1
    group = by_name(labeled, GROUP)
    assert group.has_landmarks.all() and len(group) == 6
    # "742.4 348 99 128 760.666 400.013 0 801.097 400.535 0 ..."
    np.testing.assert_allclose(group.boxes[0], [742.4, 348, 841.4, 476], rtol=1e-6)
    np.testing.assert_allclose(group.landmarks[0, :2], [[760.666, 400.013], [801.097, 400.535]], rtol=1e-6)
    assert all(image.path.is_file() for image in labeled)
    # landmark-less faces carry zero landmarks, never the -1 sentinel
    assert not (np.concatenate([image.landmarks for image in labeled]) == -1).any()


def test_malformed_lines_are_reported_with_file_and_line(tmp_path: Path):
    images = tmp_path / "images" / "ev"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    good = "1 2 3 4 " + " ".join(["-1.0"] * 15) + " 1.0"
    label = tmp_path / "label.txt"
    label.write_text(
        "\n".join(
            [
                "1 1 2 2 " + " ".join(["-1"] * 15) + " 1",  # 1: face before any header
                "# ev/a.jpg",  # 2
                good,  # 3
                "1 2 3",  # 4: too few numbers
                good.replace("3", "x", 1),  # 5: not a number
                "1 2 0 4 " + " ".join(["-1.0"] * 15) + " 1.0",  # 6: zero width
                "1 2 3 4 5 6 0 " + " ".join(["-1.0"] * 12) + " 1.0",  # 7: partial landmarks
                "# ev/missing.jpg",  # 8: image does not exist
                good,  # 9
            ]
        )
        + "\n"
    )
    with pytest.raises(LabelFormatError) as caught:
        parse_label_file(label)
    error = caught.value
    assert [line for line, _ in error.problems] == [1, 4, 5, 6, 7, 8]
    assert f"{label}:4:" in str(error) and f"{label}:8:" in str(error)
    assert "got 3" in dict(error.problems)[4]


def test_image_without_faces_is_kept(tmp_path: Path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "empty.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "label.txt").write_text("# empty.jpg\n")
    (image,) = parse_label_file(tmp_path / "label.txt")
    assert len(image) == 0 and image.boxes.shape == (0, 4) and image.landmarks.shape == (0, 5, 2)


def test_step_sampler_partitions_ranks_and_resumes_exactly():
    size, batch, world = 11, 2, 2
    full = [
        list(StepSampler(dataset_size=size, batch_size=batch, seed=3, start_step=0, end_step=9,
                         num_replicas=world, rank=rank))
        for rank in range(world)
    ]
    per_epoch = StepSampler.steps_per_epoch_for(dataset_size=size, batch_size=batch, num_replicas=world)
    assert per_epoch == 3
    # within each epoch the two ranks together see every sample (11 padded to 12 by wrapping)
    for epoch in range(3):
        seen = [k.index for rank in range(world) for k in full[rank] if k.epoch == epoch]
        assert sorted(set(seen)) == list(range(size)) and len(seen) == 12
    # epochs are shuffled differently
    first = [k.index for k in full[0] if k.epoch == 0]
    second = [k.index for k in full[0] if k.epoch == 1]
    assert first != second
    # starting at step 4 yields exactly the tail of the uninterrupted sequence
    tail = list(StepSampler(dataset_size=size, batch_size=batch, seed=3, start_step=4, end_step=9,
                            num_replicas=world, rank=1))
    assert tail == full[1][4 * batch:]


@pytest.fixture(scope="module")
def group_sample(labeled):
    image = by_name(labeled, GROUP)
    pixels = cv2.imread(str(image.path))
    return image, pixels


def test_flip_swaps_left_and_right_landmarks(group_sample):
    image, pixels = group_sample
    width = pixels.shape[1]
    flipped, boxes, landmarks = flip_horizontal(pixels, image.boxes, image.landmarks)
    assert np.array_equal(flipped[:, 0], pixels[:, -1])
    np.testing.assert_allclose(boxes[:, 0], width - image.boxes[:, 2])
    np.testing.assert_allclose(boxes[:, 2], width - image.boxes[:, 0])
    # new left eye = mirrored old right eye, new right mouth corner = mirrored old left one, nose stays
    np.testing.assert_allclose(landmarks[:, 0, 0], width - image.landmarks[:, 1, 0])
    np.testing.assert_allclose(landmarks[:, 0, 1], image.landmarks[:, 1, 1])
    np.testing.assert_allclose(landmarks[:, 4, 0], width - image.landmarks[:, 3, 0])
    np.testing.assert_allclose(landmarks[:, 2, 0], width - image.landmarks[:, 2, 0])
    assert FLIP_LANDMARK_ORDER == (1, 0, 2, 4, 3)
    # the labels are frontal faces: image-left eye has the smaller x before and after the flip
    assert (image.landmarks[:, 0, 0] < image.landmarks[:, 1, 0]).all()
    assert (landmarks[:, 0, 0] < landmarks[:, 1, 0]).all()
    assert (landmarks[:, 3, 0] < landmarks[:, 4, 0]).all()


def test_pipeline_without_crop_pads_flips_resizes_and_subtracts_mean(group_sample):
    image, pixels = group_sample
    config = AugmentConfig(image_size=320, crop=None, photometric=None, flip_probability=1.0,
                           random_interpolation=False)
    out = TrainAugmentation(config)(pixels, boxes=image.boxes, landmarks=image.landmarks,
                                    has_landmarks=image.has_landmarks, rng=np.random.default_rng(0))
    side = max(pixels.shape[:2])  # 1280: padded to 1280 x 1280, then mirrored
    scale = 320 / side
    assert out.flipped and not out.cropped and out.crop_box == (0, 0, side)
    expected = image.landmarks[:, FLIP_LANDMARK_ORDER].copy()
    expected[..., 0] = side - expected[..., 0]
    np.testing.assert_allclose(out.landmarks, expected * scale, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.boxes[:, [0, 2]], (side - image.boxes[:, [2, 0]]) * scale, rtol=1e-5)
    assert out.image.shape == (3, 320, 320) and out.image.dtype == np.float32
    # the padding (bottom rows of the padded square) is the mean colour: zero after subtraction
    np.testing.assert_allclose(out.image[:, -5:, :], 0.0, atol=0.5)
    padded = np.full((side, side, 3), (104, 117, 123), np.uint8)
    padded[: pixels.shape[0], : pixels.shape[1]] = pixels
    reference = cv2.resize(padded[:, ::-1], (320, 320), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(out.image, (reference - [104, 117, 123]).transpose(2, 0, 1), atol=1e-4)


@pytest.mark.parametrize("sampling", ["choices", "uniform"])
def test_random_crop_keeps_faces_whose_centre_is_inside(labeled, sampling):
    image = by_name(labeled, "0_Parade_Parade_0_873.jpg")  # 142 faces
    pixels = cv2.imread(str(image.path))
    crop = CropConfig(sampling=sampling)
    config = AugmentConfig(image_size=640, crop=crop, photometric=None, flip_probability=0.0,
                           random_interpolation=False)
    transform = TrainAugmentation(config)
    sides = set()
    for seed in range(8):
        out = transform(pixels, boxes=image.boxes, landmarks=image.landmarks, has_landmarks=image.has_landmarks,
                        rng=np.random.default_rng(seed))
        assert out.cropped
        left, top, side = out.crop_box
        sides.add(side)
        short = min(pixels.shape[:2])
        assert 0.3 * short - 1 <= side <= short
        assert 0 <= left <= pixels.shape[1] - side and 0 <= top <= pixels.shape[0] - side
        centres = (image.boxes[:, :2] + image.boxes[:, 2:]) / 2
        inside = np.all((centres > [left, top]) & (centres < [left + side, top + side]), axis=1)
        expected = np.clip(image.boxes[inside] - [left, top, left, top], 0, side) * (640 / side)
        np.testing.assert_allclose(out.boxes, expected, rtol=1e-5, atol=1e-3)
        assert (out.boxes >= 0).all() and (out.boxes <= 640 + 1e-3).all()
    if sampling == "choices":
        allowed = {int(s * min(pixels.shape[:2])) for s in crop.scale_choices}
        assert sides <= allowed
    assert len(sides) > 1


def test_photometric_distortion_changes_colours_within_range(group_sample):
    _, pixels = group_sample
    small = cv2.resize(pixels, (160, 111))
    always = PhotometricConfig(probability=1.0)
    outputs = [photometric_distort(small, config=always, rng=np.random.default_rng(s)) for s in range(4)]
    for out in outputs:
        assert out.dtype == np.uint8 and out.shape == small.shape
        assert np.abs(out.astype(int) - small.astype(int)).mean() > 1.0
    assert not np.array_equal(outputs[0], outputs[1])
    never = PhotometricConfig(probability=0.0)
    assert np.array_equal(photometric_distort(small, config=never, rng=np.random.default_rng(0)), small)


def test_samples_are_a_function_of_seed_epoch_and_index():
    config = AugmentConfig(image_size=256)
    dataset = WiderFaceTrainDataset(labels=asset(LABELS), augment=config, seed=7)
    again = WiderFaceTrainDataset(labels=asset(LABELS), augment=config, seed=7)
    other = WiderFaceTrainDataset(labels=asset(LABELS), augment=config, seed=8)
    key = SampleKey(epoch=2, index=4)
    a, b = dataset[key], again[key]
    assert np.array_equal(a.image.numpy(), b.image.numpy()) and np.array_equal(a.boxes.numpy(), b.boxes.numpy())
    assert not np.array_equal(a.image.numpy(), other[key].image.numpy())
    assert not np.array_equal(a.image.numpy(), dataset[SampleKey(epoch=3, index=4)].image.numpy())
    # the generator itself is keyed by (seed, epoch, index) only
    assert sample_generator(7, 2, 4).random() == sample_generator(7, 2, 4).random()
    assert sample_generator(7, 2, 4).random() != sample_generator(7, 4, 2).random()
