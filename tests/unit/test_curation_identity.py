"""Identity consistency (``--recognizer``): the pure functions, and the align job on a deepface tree.

The tree (issue 12, acceptance 3): identities are the connected components of master.csv's "Yes"
pairs (one of 8 photos, one of 3, seven of 2), one folder each; 4 photos of other people go into
the 8-photo folder and 2 into the 3-photo folder; 3 two-face composites (a photo of the
identity, smaller, beside a larger face of another person) go into the 8-photo folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import AlignConfig
from pipeline.curation.identity import (
    OutlierRule,
    cosine_distances,
    identity_face,
    l2_normalize,
    medoid_index,
    nearest_face,
    robust_centre,
)
from pipeline.job import AlignJobConfig
from pipeline.job.identity import EMBEDDINGS_INDEX_NAME, EMBEDDINGS_NAME
from pipeline.select import select_faces

# ------------------------------------------------------------------------------------------ pure functions


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return l2_normalize(rng.normal(size=(n, d)))


def test_medoid_matches_the_brute_force_definition():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        x = _unit(rng, n, 16)
        brute = int(np.argmin((1.0 - x.astype(np.float64) @ x.T.astype(np.float64)).sum(axis=1)))
        assert medoid_index(x) == brute


def test_robust_centre_ignores_a_minority_of_intruders():
    rng = np.random.default_rng(1)
    identity = l2_normalize(rng.normal(size=(1, 64)))[0]
    members = l2_normalize(identity + 0.35 * rng.normal(size=(12, 64)) / 8)
    # intruders: one tight group of another person (they pull a plain mean the most)
    other = l2_normalize(rng.normal(size=(1, 64)))[0]
    intruders = l2_normalize(other + 0.2 * rng.normal(size=(7, 64)) / 8)
    x = np.concatenate([intruders, members])
    centre = robust_centre(x)
    assert centre >= len(intruders)  # a member
    d = cosine_distances(x, x[centre])
    assert d[len(intruders):].max() < d[:len(intruders)].min()
    with pytest.raises(ValueError, match="non-empty"):
        robust_centre(np.zeros((0, 8), np.float32))


def test_outlier_rule_folder_relative_and_fixed():
    rule = OutlierRule(k=3.0, floor=0.4, min_photos=5, fixed=0.6)
    d = np.array([0.0, 0.1, 0.2, 0.3, 0.35, 0.9, np.nan])
    median = np.median(d[:6])
    mad = np.median(np.abs(d[:6] - median))
    assert rule.threshold(d) == pytest.approx(max(0.4, median + 3.0 * 1.4826 * mad))
    assert rule.threshold(np.array([0.01, 0.02, 0.03, 0.02, 0.01])) == 0.4  # the floor
    assert rule.threshold(np.array([0.1, 0.9, np.nan])) == 0.6  # too few photos: fixed
    with pytest.raises(ValueError, match="min_photos"):
        OutlierRule(min_photos=1)
    with pytest.raises(ValueError, match="floor"):
        OutlierRule(floor=-0.1)


def test_nearest_face_and_identity_selection():
    assert nearest_face(np.array([0.7, 0.2, 0.2])) == 1
    assert nearest_face(np.array([np.nan, 0.9])) == 1
    assert nearest_face(np.array([np.nan])) == -1
    assert nearest_face(np.zeros(0)) == -1
    boxes = np.array([[0, 0, 100, 100], [0, 0, 10, 10], [0, 0, 50, 50]], np.float32)
    scores = np.array([0.9, 0.8, 0.3], np.float32)
    dist = np.array([0.8, 0.1, 0.05])
    assert select_faces(boxes, scores, image_shape=(200, 200), mode="identity", distances=dist).tolist() == [2]
    # filters come first: the nearest face below min_score is not a candidate
    assert select_faces(boxes, scores, image_shape=(200, 200), mode="identity", distances=dist,
                        min_score=0.5).tolist() == [1]
    with pytest.raises(ValueError, match="needs per-face distances"):
        select_faces(boxes, scores, image_shape=(200, 200), mode="identity")


def test_identity_face_is_the_nearest_else_the_largest():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 105, 65], [0, 0, 50, 50], [200, 200, 260, 300]], np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # 100, 6000, 2500, 6000
    assert identity_face(np.array([0.9, np.nan, 0.3, 0.4]), boxes) == 2  # nearest known distance
    # no known distance: the largest box, the first of equal ones (reference: argmax, first wins)
    assert identity_face(np.full(4, np.nan), boxes) == int(np.argmax(areas)) == 1
    assert identity_face(np.full(2, np.nan), boxes[[0, 2]]) == 1
    assert identity_face(np.zeros(0), np.zeros((0, 4))) == -1
    with pytest.raises(ValueError, match="2 distances but 4 boxes"):
        identity_face(np.zeros(2), boxes)


def test_select_identity_needs_a_recognizer(tmp_path):
    with pytest.raises(ValueError, match="needs a recogniser"):
        AlignJobConfig(src=tmp_path, dst=tmp_path / "out", align=AlignConfig(select="identity"))


def test_embedding_store_commits_parts_and_only_appends_rows(tmp_path):
    from pipeline.job.identity import EmbeddingStore

    rng = np.random.default_rng(3)
    store = EmbeddingStore(tmp_path)
    a, b = l2_normalize(rng.normal(size=(3, 8))), l2_normalize(rng.normal(size=(1, 8)))
    store.write_part([{"src": "p/1.jpg", "faces": [[0, 0, 0, 9, 9], [1, 5, 5, 8, 8]]},
                      {"src": "q/2.jpg", "faces": [[0, 1, 1, 9, 9]]}, {"src": "q/3.jpg", "faces": []}], a)
    (store.folder / "part-000001.npy").write_bytes(b"killed before its index was written")
    assert store.done_sources() == {"p/1.jpg", "q/2.jpg", "q/3.jpg"}
    assert not (store.folder / "part-000001.npy").exists()  # never committed: removed
    table = store.concatenate()
    assert np.array_equal(np.load(tmp_path / EMBEDDINGS_NAME), a)
    store.write_part([{"src": "a/0.jpg", "faces": [[0, 0, 0, 9, 9]]}], b)
    store.concatenate()
    emb = np.load(tmp_path / EMBEDDINGS_NAME)
    index = [json.loads(line) for line in (tmp_path / EMBEDDINGS_INDEX_NAME).read_text().splitlines()]
    assert np.array_equal(emb, np.concatenate([a, b]))  # new rows after the old ones
    assert [(e["row"], e["src"], e["face"], e["identity"]) for e in index] == [
        (0, "p/1.jpg", 0, "p"), (1, "p/1.jpg", 1, "p"), (2, "q/2.jpg", 0, "q"), (3, "a/0.jpg", 0, "a")]
    assert table.rows == 3
    with pytest.raises(ValueError, match="2 faces listed but 1 embeddings"):
        store.write_part([{"src": "x.jpg", "faces": [[0, 0, 0, 1, 1], [1, 0, 0, 1, 1]]}], b)
