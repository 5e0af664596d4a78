"""Anchor matching, target encoding and the OHEM loss, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.anchors import AnchorGenerator
from detector.box_coder import BoxCoder
from detector.config import get_preset
from detector.model import RetinaFaceOutput
from detector.training.augment import AugmentConfig
from detector.training.dataset import SampleKey, WiderFaceTrainDataset, collate_training_samples
from detector.training.loss import LossConfig, RetinaFaceLoss, hard_negative_mask
from detector.training.matcher import IGNORE, NEGATIVE, POSITIVE, AnchorMatcher, MatcherConfig
from tests.shared import asset

SIZE = 640
CONFIG = get_preset("mobilenet0.25")


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Avoid OpenMP thread spinning on a loaded 2-core machine; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset():
    # no crop, no flip, no colour: the whole photo padded to a square and resized to 640
    augment = AugmentConfig(image_size=SIZE, crop=None, photometric=None, flip_probability=0.0,
                            random_interpolation=False)
    return WiderFaceTrainDataset(labels=asset("widerface_mini/train/label.txt"), augment=augment, seed=0)


def sample_named(dataset, name):
    index = next(i for i, image in enumerate(dataset.images) if image.path.name == name)
    return dataset[SampleKey(0, index)]


@pytest.fixture(scope="module")
def anchors():
    return AnchorGenerator(CONFIG.anchors)(SIZE, SIZE)


def matcher(config: MatcherConfig) -> AnchorMatcher:
    return AnchorMatcher(config=config, coder=BoxCoder(CONFIG.variance))


def numpy_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    anchor_boxes = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    lt = np.maximum(boxes[:, None, :2], anchor_boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], anchor_boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    area_a = np.prod(anchor_boxes[:, 2:] - anchor_boxes[:, :2], axis=1)
    return inter / (area_b[:, None] + area_a[None, :] - inter)


def reference_labels(boxes: np.ndarray, anchors: np.ndarray, config: MatcherConfig) -> tuple[np.ndarray, np.ndarray]:
    """biubug6 box_utils.match, written out with loops (forcing only faces above min_forced_iou)."""
    iou = numpy_iou(boxes.astype(np.float64), anchors.astype(np.float64))
    best_face = iou.argmax(0)
    best_iou = iou.max(0)
    for face in range(len(boxes)):
        anchor = iou[face].argmax()
        if iou[face, anchor] >= config.min_forced_iou:
            best_face[anchor] = face
            best_iou[anchor] = 2.0
    labels = np.full(len(anchors), NEGATIVE)
    labels[best_iou >= config.negative_iou] = IGNORE
    labels[best_iou >= config.positive_iou] = POSITIVE
    return labels, best_face


@pytest.mark.parametrize("name", ["group_insightface_t1.jpg", "crowd_biubug6_curve_test.jpg"])
def test_targets_decode_back_to_the_labelled_faces(dataset, anchors, name):
    sample = sample_named(dataset, name)
    assert sample.has_landmarks.all()
    result = matcher(MatcherConfig.reference()).match(
        boxes=sample.boxes, landmarks=sample.landmarks, has_landmarks=sample.has_landmarks, anchors=anchors
    )
    positive = result.positive
    coder = BoxCoder(CONFIG.variance)
    faces = result.matched[positive]
    decoded = coder.decode_boxes(result.box_targets[positive], anchors[positive])
    torch.testing.assert_close(decoded, sample.boxes[faces], atol=1e-4, rtol=0)
    assert torch.equal(result.landmark_mask, positive)  # every face here has landmarks
    decoded_landmarks = coder.decode_landmarks(result.landmark_targets[positive], anchors[positive])
    torch.testing.assert_close(decoded_landmarks, sample.landmarks[faces], atol=1e-4, rtol=0)
    # every labelled face is some positive anchor's target
    assert set(faces.tolist()) == set(range(len(sample.boxes)))
    assert (result.box_targets[~positive] == 0).all() and (result.landmark_targets[~positive] == 0).all()


@pytest.mark.parametrize("config", [MatcherConfig.reference(), MatcherConfig.paper()], ids=["reference", "paper"])
def test_labels_match_an_independent_implementation(dataset, anchors, config):
    # the Parade photo: 142 faces, many so small that even their best anchor is below IoU 0.2
    sample = sample_named(dataset, "0_Parade_Parade_0_873.jpg")
    result = matcher(config).match(
        boxes=sample.boxes, landmarks=sample.landmarks, has_landmarks=sample.has_landmarks, anchors=anchors
    )
    labels, best_face = reference_labels(sample.boxes.numpy(), anchors.numpy(), config)
    np.testing.assert_array_equal(result.labels.numpy(), labels)
    positive = labels == POSITIVE
    np.testing.assert_array_equal(result.matched.numpy()[positive], best_face[positive])
    assert (result.matched.numpy()[~positive] == -1).all()
    face_best = numpy_iou(sample.boxes.numpy(), anchors.numpy()).max(1)
    assert (face_best < config.min_forced_iou).any() and (face_best >= config.min_forced_iou).any()
    ignored = int((labels == IGNORE).sum())
    if config.positive_iou == config.negative_iou:
        assert ignored == 0
    else:
        assert ignored > 0
    # landmark-less faces never produce landmark targets
    assert not result.landmark_mask.any()


def test_forcing_gives_a_poorly_fitting_face_exactly_its_best_anchor(anchors):
    # a 48 x 10 px box: its best IoU with any square anchor is < 0.35, so only forcing matches it
    box = torch.tensor([[92.0, 199.0, 140.0, 209.0]])
    landmarks = torch.zeros(1, 5, 2)
    iou = numpy_iou(box.numpy(), anchors.numpy())[0]
    assert 0.2 <= iou.max() < 0.35
    forced = matcher(MatcherConfig.reference()).match(
        boxes=box, landmarks=landmarks, has_landmarks=torch.tensor([False]), anchors=anchors
    )
    assert forced.positive.nonzero().flatten().tolist() == [int(iou.argmax())]
    unforced = matcher(MatcherConfig(positive_iou=0.35, negative_iou=0.35, force_best_anchor=False)).match(
        boxes=box, landmarks=landmarks, has_landmarks=torch.tensor([False]), anchors=anchors
    )
    assert not unforced.positive.any()


def test_image_without_faces_is_all_background(anchors):
    result = matcher(MatcherConfig.paper()).match(
        boxes=torch.zeros(0, 4), landmarks=torch.zeros(0, 5, 2), has_landmarks=torch.zeros(0, dtype=torch.bool),
        anchors=anchors,
    )
    assert (result.labels == NEGATIVE).all() and not result.landmark_mask.any()


@pytest.mark.parametrize("ratio", [3.0, 7.0])
def test_ohem_keeps_the_configured_ratio_of_hardest_negatives(ratio):
    generator = torch.Generator().manual_seed(0)
    batch, anchors = 3, 500
    labels = torch.full((batch, anchors), NEGATIVE)
    labels[0, :10] = POSITIVE
    labels[1, :40] = POSITIVE
    labels[1, 40:100] = IGNORE
    labels[1, 100:300] = IGNORE  # image 1 has 200 eligible negatives, fewer than 7 * 40
    labels[2, :] = NEGATIVE  # no positives: no negatives either (reference behaviour)
    loss = torch.rand(batch, anchors, generator=generator)
    positive, negative = labels == POSITIVE, labels == NEGATIVE
    hard = hard_negative_mask(loss, positive=positive, negative=negative, negpos_ratio=ratio)
    assert not (hard & ~negative).any()
    for image in range(batch):
        eligible = int(negative[image].sum())
        expected = min(int(ratio * int(positive[image].sum())), eligible)
        assert int(hard[image].sum()) == expected
        if expected:
            chosen = loss[image][hard[image]]
            others = loss[image][negative[image] & ~hard[image]]
            assert others.numel() == 0 or float(chosen.min()) >= float(others.max())
    assert int(hard[0].sum()) == int(ratio * 10)
    assert int(hard[1].sum()) == min(int(ratio * 40), 200)
    floor = hard_negative_mask(loss, positive=positive, negative=negative, negpos_ratio=ratio, min_negatives=5)
    assert int(floor[2].sum()) == 5


def outputs_from_targets(targets, *, cls_margin: float) -> RetinaFaceOutput:
    positive = targets.positive.float()
    logits = torch.stack([(1 - positive) * cls_margin, positive * cls_margin], dim=-1)
    return RetinaFaceOutput(
        cls_logits=logits.requires_grad_(),
        bbox_deltas=targets.box_targets.clone().requires_grad_(),
        landmark_deltas=targets.landmark_targets.clone().requires_grad_(),
    )


def make_loss(config: LossConfig, matcher_config: MatcherConfig = MatcherConfig.reference()) -> RetinaFaceLoss:
    return RetinaFaceLoss(matcher=matcher(matcher_config), anchor_generator=AnchorGenerator(CONFIG.anchors),
                          config=config)


def test_loss_terms_weights_and_landmark_masking(dataset):
    batch = collate_training_samples(
        [
            sample_named(dataset, "group_insightface_t1.jpg"),
            sample_named(dataset, "11_Meeting_Meeting_11_Meeting_Meeting_11_26.jpg"),
        ]
    )
    criterion = make_loss(LossConfig.paper())
    targets = criterion.targets(batch, device=torch.device("cpu"))
    # perfect regression, confident classification: box and landmark terms vanish
    perfect = criterion(outputs_from_targets(targets, cls_margin=20.0), batch)
    terms = perfect.terms()
    assert terms["box"] == 0.0 and terms["landmark"] == 0.0 and terms["cls"] < 1e-6
    # landmark targets only on the first image (the Meeting photo has WIDER boxes, no landmarks)
    assert targets.landmark_mask[0].any() and not targets.landmark_mask[1].any()
    assert perfect.num_landmark_positives == int(targets.landmark_mask.sum())
    assert perfect.num_negatives == int(3 * targets.positive[0].sum()) + int(3 * targets.positive[1].sum())

    generator = torch.Generator().manual_seed(1)
    shape = targets.labels.shape
    noisy = RetinaFaceOutput(
        cls_logits=torch.randn(*shape, 2, generator=generator).requires_grad_(),
        bbox_deltas=torch.randn(*shape, 4, generator=generator).requires_grad_(),
        landmark_deltas=torch.randn(*shape, 10, generator=generator).requires_grad_(),
    )
    losses = criterion(noisy, batch)
    expected = 1.0 * losses.classification + 0.25 * losses.box + 0.1 * losses.landmark
    torch.testing.assert_close(losses.total, expected)
    # box term by hand: smooth-L1 summed over positives / number of positives
    positive = targets.positive
    diff = (noisy.bbox_deltas - targets.box_targets)[positive].abs()
    by_hand = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum() / positive.sum()
    torch.testing.assert_close(losses.box, by_hand)
    losses.total.backward()
    # no landmark gradient reaches anchors that are not landmark positives (image 1 entirely)
    assert noisy.landmark_deltas.grad[1].abs().sum() == 0
    assert noisy.landmark_deltas.grad[0][targets.landmark_mask[0]].abs().sum() > 0
    # ignored anchors (paper band 0.3..0.5) never receive a classification gradient
    paper = make_loss(LossConfig.paper(), MatcherConfig.paper())
    paper_targets = paper.targets(batch, device=torch.device("cpu"))
    logits = noisy.cls_logits.detach().clone().requires_grad_()
    paper(RetinaFaceOutput(logits, noisy.bbox_deltas.detach(), noisy.landmark_deltas.detach()), batch).total.backward()
    ignored = paper_targets.labels == IGNORE
    assert ignored.any() and logits.grad[ignored].abs().sum() == 0
