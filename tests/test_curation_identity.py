"""Identity consistency (``--recognizer``): the pure functions, and the align job on a deepface tree.

The tree (issue 12, acceptance 3): identities are the connected components of master.csv's "Yes"
pairs (one of 8 photos, one of 3, seven of 2), one folder each; 4 photos of other people go into
the 8-photo folder and 2 into the 3-photo folder; 3 two-face composites (a photo of the
identity, smaller, beside a larger face of another person) go into the 8-photo folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
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
from pipeline.images import read_image
from pipeline.job import AlignJobConfig, JobConfigError, run_align_job
from pipeline.job.identity import EMBEDDINGS_INDEX_NAME, EMBEDDINGS_NAME
from pipeline.select import select_faces
from pipeline.verification.recognizer import OnnxRecognizerConfig, Preprocess
from pipeline.writers import identity_of
from tests.shared import asset

DEEPFACE = "verification/deepface"
RECOGNIZER = "weights/mobilefacenet_arcface112.onnx"
INTRUDERS = {"id_a": ["img16.jpg", "img18.jpg", "img22.jpg", "img8.jpg"], "id_b": ["img20.jpg", "img12.jpg"]}
# (photo of id_a, photo of another person with a larger face, side of the id_a photo)
COMPOSITES = [("img10.jpg", "img24.jpg", "left"), ("img5.jpg", "img19.jpg", "right"),
              ("img6.jpg", "img9.jpg", "left")]
LONG_SIDE = 640  # photos are shrunk when the tree is built: the test is about identities, not pixels


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


# ---------------------------------------------------------------------------------------------- the tree


def _identities() -> list[list[str]]:
    """master.csv's "Yes" pairs as connected components, largest first."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    with open(asset(f"{DEEPFACE}/master.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["Decision"] == "Yes":
                parent[find(row["file_x"])] = find(row["file_y"])
    groups: dict[str, list[str]] = {}
    for name in list(parent):
        groups.setdefault(find(name), []).append(name)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g))


def _small(name: str) -> np.ndarray:
    image = read_image(asset(f"{DEEPFACE}/{name}"))  # img47.jpg is really WebP: read by content
    scale = LONG_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def _height(image: np.ndarray, height: int) -> np.ndarray:
    return cv2.resize(image, (round(image.shape[1] * height / image.shape[0]), height), interpolation=cv2.INTER_AREA)


def _build_tree(root: Path) -> dict:
    groups = _identities()
    assert [len(g) for g in groups] == [8, 3, 2, 2, 2, 2, 2, 2, 2]
    truth: dict[str, str] = {}  # rel path -> "true" / "intruder" / "composite"
    for k, group in enumerate(groups):
        folder = root / f"id_{chr(ord('a') + k)}"
        folder.mkdir(parents=True)
        for name in group:
            cv2.imwrite(str(folder / name.replace(".jpg", ".png")), _small(name))
            truth[f"{folder.name}/{name.replace('.jpg', '.png')}"] = "true"
    members = set(groups[0]) | set(groups[1])
    for folder, names in INTRUDERS.items():
        for name in names:
            assert name not in members
            cv2.imwrite(str(root / folder / f"x_{name.replace('.jpg', '.png')}"), _small(name))
            truth[f"{folder}/x_{name.replace('.jpg', '.png')}"] = "intruder"
    composites = {}
    for k, (own, other, side) in enumerate(COMPOSITES):
        assert own in groups[0] and other not in members
        mine, theirs = _height(_small(own), 220), _height(_small(other), 480)
        canvas = np.full((480, mine.shape[1] + theirs.shape[1], 3), 128, np.uint8)
        x_mine, x_theirs = (0, mine.shape[1]) if side == "left" else (theirs.shape[1], 0)
        canvas[130:130 + mine.shape[0], x_mine:x_mine + mine.shape[1]] = mine
        canvas[:, x_theirs:x_theirs + theirs.shape[1]] = theirs
        rel = f"id_a/composite_{k}.png"
        cv2.imwrite(str(root / rel), canvas)
        truth[rel] = "composite"
        composites[rel] = (x_mine, x_mine + mine.shape[1])  # the identity's columns
    return {"truth": truth, "composites": composites}


def _job(src: Path, dst: Path, weights: Path, select: str) -> AlignJobConfig:
    recognizer = OnnxRecognizerConfig(model=asset(RECOGNIZER), preprocess=Preprocess(
        rgb=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    return AlignJobConfig(src=src, dst=dst, align=AlignConfig(select=select), recognizer=recognizer,
                          detector=DetectorSpec(weights=str(weights), runtime="torch"), num_workers=2,
                          batch_size=4, progress=False)


def _records(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory, ray_session, mobilenet_weights):
    root = tmp_path_factory.mktemp("identity")
    tree = _build_tree(root / "src")
    config = _job(root / "src", root / "dst", mobilenet_weights, "identity")
    summary = run_align_job(config)
    return {"root": root, "config": config, "summary": summary, "records": _records(root / "dst"), **tree}


def test_identity_outliers_on_the_deepface_tree(identity_run):
    records, truth = identity_run["records"], identity_run["truth"]
    assert identity_run["summary"].counts["ok"] == len(truth) == 34
    lines = []
    for rel in sorted(records):
        r = records[rel]
        assert r["identity"] == identity_of(rel)
        assert r["status"] == "ok" and r["identity_distance"] is not None
        lines.append(f"{truth[rel]:9s} {rel:28s} distance {r['identity_distance']:.3f} "
                     f"outlier {r['identity_outlier']}")
    centres = json.loads((identity_run["root"] / "dst" / "identity_centres.json").read_text())
    print("\nidentity distances (1 - cos to the identity's centre):\n" + "\n".join(lines))
    print("thresholds: " + ", ".join(f"{k} {v['threshold']:.3f} ({v['rule']})" for k, v in sorted(centres.items())))
    intruders = [rel for rel, kind in truth.items() if kind == "intruder"]
    assert all(records[rel]["identity_outlier"] for rel in intruders), [
        (rel, records[rel]["identity_distance"]) for rel in intruders]
    flagged_true = [rel for rel, kind in truth.items() if kind != "intruder" and records[rel]["identity_outlier"]]
    assert len(flagged_true) <= 1, flagged_true
    figures = identity_run["summary"].identity
    assert figures["photos"] == 34 and figures["identities"] == 9
    assert figures["outliers"] == len(intruders) + len(flagged_true)
    # the centre is a true photo of the identity
    for identity, figures in centres.items():
        assert truth[figures["centre_src"]] == "true" and figures["centre_src"].startswith(identity + "/")


def _in(box: list[float], columns: tuple[int, int]) -> bool:
    return columns[0] <= (box[0] + box[2]) / 2 < columns[1]


def test_select_identity_picks_the_identity_face_and_largest_does_not(identity_run):
    records = identity_run["records"]
    for rel, columns in identity_run["composites"].items():
        r = records[rel]
        assert len(r["faces"]) >= 2 and len(r["selected"]) == 1
        assert _in(r["faces"][r["selected"][0]]["box"], columns), (rel, r["faces"], columns)
        assert not r["identity_outlier"]
        print(f"{rel}: identity face selected, distance {r['identity_distance']:.3f}")
        # `largest` (the job's rule, on the same detections) takes the other person's face
        boxes = np.array([f["box"] for f in r["faces"]])
        scores = np.array([f["score"] for f in r["faces"]])
        largest = select_faces(boxes, scores, image_shape=(r["height"], r["width"]), mode="largest")
        assert not _in(r["faces"][int(largest[0])]["box"], columns), (rel, r["faces"], columns)


def test_crop_actor_selects_and_annotates_from_the_identity_column(identity_run, mobilenet_weights):
    """The crop-pass actor without Ray: its selection (identity / largest) and record fields from
    the per-photo JSON the driver ships (candidates matched by face index and box)."""
    from pipeline.job.identity import IdentityCropPredictor
    from pipeline.job.stages import read_images

    rel, columns = next(iter(identity_run["composites"].items()))
    faces = identity_run["records"][rel]["faces"]
    mine = [i for i, f in enumerate(faces) if _in(f["box"], columns)]
    assert len(mine) == 1
    # candidates listed in reverse order, with their face indices: matching must not rely on order
    candidates = [[i, 100 + i, 0.05 if i in mine else 0.9, *f["box"]] for i, f in reversed(list(enumerate(faces)))]
    info = json.dumps({"identity": "id_a", "threshold": 0.4, "faces": candidates})
    batch = {"src": np.array([rel.encode()], dtype=object), "stem": np.array([b"out"], dtype=object),
             "identity": np.array([info], dtype=object)}
    table = read_images(batch, src_root=str(identity_run["root"] / "src"), decode=False, max_pixels=None,
                        exif_orientation=True)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1)
    expected = {"identity": (mine[0], 0.05, False), "largest": (None, 0.9, True)}
    for select, (face, distance, outlier) in expected.items():
        out = IdentityCropPredictor(detector=spec, align=AlignConfig(select=select, on_error="record"))(rows)
        selected = json.loads(out.column("selected")[0].as_py())
        fields = json.loads(out.column("identity")[0].as_py())
        assert len(selected) == 1 and out.column("num_crops")[0].as_py() == 1
        assert len(out.column("crops")[0].as_py()) == 112 * 112 * 3
        if face is not None:
            assert selected == [face]
        assert fields == {"identity": "id_a", "identity_distance": distance, "identity_outlier": outlier,
                          "embedding_row": 100 + selected[0]}


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


def test_embeddings_match_their_index_and_a_rerun_does_nothing(identity_run):
    dst = identity_run["root"] / "dst"
    emb = np.load(dst / EMBEDDINGS_NAME)
    index = [json.loads(line) for line in (dst / EMBEDDINGS_INDEX_NAME).read_text().splitlines()]
    assert emb.dtype == np.float32 and emb.shape == (len(index), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert [e["row"] for e in index] == list(range(len(index)))
    assert identity_run["summary"].identity["embeddings"] == len(index)
    records = identity_run["records"]
    faces = {(e["src"], e["face"]): e for e in index}
    assert {e["src"] for e in index} == set(records)
    for rel, r in records.items():  # every candidate face has a row; the record names its face's row
        assert {f for s, f in faces if s == rel} == set(range(len(r["faces"])))
        row = index[r["embedding_row"]]
        assert (row["src"], row["face"], row["identity"]) == (rel, r["selected"][0], r["identity"])
    # the recorded distance is that of the row to the identity's centre
    centres = json.loads((dst / "identity_centres.json").read_text())
    for r in records.values():
        centre = emb[centres[r["identity"]]["centre_row"]]
        assert 1.0 - float(emb[r["embedding_row"]] @ centre) == pytest.approx(r["identity_distance"], abs=1e-4)
    again = run_align_job(identity_run["config"])
    assert again.processed == 0 and again.counts["ok"] == len(records)
    assert np.array_equal(np.load(dst / EMBEDDINGS_NAME), emb)
    # another normalisation makes other embeddings: the dst refuses to resume
    other = dataclasses.replace(identity_run["config"].recognizer, preprocess=Preprocess(rgb=False))
    with pytest.raises(JobConfigError, match="recognizer"):
        run_align_job(dataclasses.replace(identity_run["config"], recognizer=other))


class _Replay:
    """Stands for the embedding pass's Ray dataset: replays the rows of a finished run's part."""

    def __init__(self, rows: dict[str, tuple[list, np.ndarray]], asked: list):
        self.rows, self.asked = rows, asked

    def __call__(self, pairs):
        self.asked.extend(src for src, _ in pairs)
        return self

    def iter_batches(self, **_):
        for src in self.asked:
            faces, emb = self.rows[src]
            yield {"src": np.array([src.encode()], dtype=object), "status": np.array(["ok"]),
                   "candidates": np.array([json.dumps(faces)]), "num_faces": np.array([len(faces)]),
                   "dim": np.array([emb.shape[1]]), "embeddings": np.array([emb.tobytes()], dtype=object)}


def test_a_killed_embedding_pass_resumes_with_the_missing_photos_only(identity_run, tmp_path):
    """A run killed after its first part: the rerun embeds only the photos no part holds, and
    the centres, distances and thresholds come out as in the uninterrupted run."""
    from pipeline.job.identity import EmbeddingStore, prepare_identities

    done = EmbeddingStore(identity_run["root"] / "dst")
    (number,) = done.parts()
    photos, emb = list(done.iter_photos(number)), np.asarray(done.load(number))
    rows, start = {}, 0
    for photo in photos:
        rows[photo["src"]] = (photo["faces"], emb[start:start + len(photo["faces"])])
        start += len(photo["faces"])
    half = len(photos) // 2
    killed = EmbeddingStore(tmp_path)
    killed.write_part(photos[:half], emb[:sum(len(p["faces"]) for p in photos[:half])])
    asked: list[str] = []
    config = dataclasses.replace(identity_run["config"], dst=tmp_path)
    inputs = sorted(identity_run["records"])
    table = prepare_identities(config, inputs=inputs, crop_todo=inputs, dataset=_Replay(rows, asked))
    assert sorted(asked) == sorted(p["src"] for p in photos[half:])
    assert len(killed.parts()) == 2
    before = json.loads((identity_run["root"] / "dst" / "identity_centres.json").read_text())
    after = json.loads((tmp_path / "identity_centres.json").read_text())
    assert {k: (v["centre_src"], v["threshold"]) for k, v in after.items()} == {
        k: (v["centre_src"], v["threshold"]) for k, v in before.items()}
    for rel, r in identity_run["records"].items():
        info = json.loads(table.info[rel])
        assert info["identity"] == r["identity"]
        (face,) = [f for f in info["faces"] if f[0] == r["selected"][0]]
        assert face[2] == pytest.approx(r["identity_distance"], abs=1e-4)
