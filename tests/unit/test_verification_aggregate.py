"""Template aggregation against a straightforward loop implementation of insightface's formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.verification.aggregate import AggregationConfig, image_features, pair_scores, template_features


def reference_scores(emb, emb_flip, scores, templates, medias, pairs, *, flip, face_score, keep_norm):
    """One image, one media, one template at a time, in plain Python/numpy."""
    feats = []
    for i in range(len(emb)):
        f = np.array(emb[i], dtype=np.float64)
        if flip:
            f = f + np.array(emb_flip[i], dtype=np.float64)
        if not keep_norm:
            f = f / np.sqrt(np.sum(f * f))
        if face_score:
            f = f * float(scores[i])
        feats.append(f)
    template_feat = {}
    for t in sorted(set(templates.tolist())):
        media_feats = []
        for m in sorted({medias[i] for i in range(len(feats)) if templates[i] == t}):
            members = [feats[i] for i in range(len(feats)) if templates[i] == t and medias[i] == m]
            media_feats.append(sum(members) / len(members))
        total = sum(media_feats)
        template_feat[t] = total / np.sqrt(np.sum(total * total))
    return np.array([float(np.dot(template_feat[a], template_feat[b])) for a, b in pairs])


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(7)
    n, d = 400, 64
    templates = rng.integers(0, 40, n) * 3 + 1000  # sparse, large ids
    medias = rng.integers(0, 4, n) + 7 * (templates % 5)  # several images per media, media ids reused across templates
    emb = rng.normal(size=(n, d)) * rng.uniform(0.2, 30.0, (n, 1))  # widely varying norms: N1 vs N0 matters
    emb_flip = emb + rng.normal(scale=0.5, size=(n, d))
    scores = rng.uniform(0.05, 1.0, n)
    uniq = np.unique(templates)
    pairs = np.stack([rng.choice(uniq, 300), rng.choice(uniq, 300)], axis=1)
    return emb, emb_flip, scores, templates, medias, pairs


@pytest.mark.parametrize("flip,face_score,keep_norm", list(itertools.product([True, False], repeat=3)))
def test_aggregation_equals_reference(synthetic, flip, face_score, keep_norm):
    emb, emb_flip, scores, templates, medias, pairs = synthetic
    config = AggregationConfig(flip=flip, face_score=face_score, keep_norm=keep_norm)
    feats = image_features(emb, flipped=emb_flip, scores=scores, config=config)
    uniq, tfeats = template_features(feats, templates, medias)
    got = pair_scores(uniq, tfeats, pairs[:, 0], pairs[:, 1], chunk=64)
    want = reference_scores(emb, emb_flip, scores, templates, medias, pairs,
                            flip=flip, face_score=face_score, keep_norm=keep_norm)
    assert np.max(np.abs(got - want)) < 1e-6
    assert np.allclose(np.linalg.norm(tfeats, axis=1), 1.0)


def test_media_mean_is_not_a_plain_template_mean(synthetic):
    """The two-level aggregation must differ from averaging all images of a template (guards the test above)."""
    emb, emb_flip, scores, templates, medias, pairs = synthetic
    config = AggregationConfig(flip=False, keep_norm=True)
    feats = image_features(emb, config=config)
    uniq, tfeats = template_features(feats, templates, medias)
    _, flat = template_features(feats, templates, np.arange(templates.size))  # every image its own media
    assert np.max(np.abs(tfeats - flat)) > 1e-2


def test_aggregation_errors(synthetic):
    emb, emb_flip, scores, templates, medias, pairs = synthetic
    with pytest.raises(ValueError, match="mirrored"):
        image_features(emb, config=AggregationConfig(flip=True))
    with pytest.raises(ValueError, match="face scores"):
        image_features(emb, flipped=emb_flip, config=AggregationConfig(face_score=True))
    uniq, tfeats = template_features(emb, templates, medias)
    with pytest.raises(KeyError, match="without features"):
        pair_scores(uniq, tfeats, np.array([uniq[0]]), np.array([5]))
