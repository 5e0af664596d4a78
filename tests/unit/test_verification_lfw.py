"""LFW's protocol: the official pairs.txt reader and the 10-fold accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.verification.metrics import best_threshold, kfold_accuracy
from pipeline.verification.protocols import ProtocolError, lfw_image_name, read_lfw
from tests.shared import asset

# ------------------------------------------------------------------------------------------- pairs.txt


def test_official_pairs_file():
    root = asset("verification/lfw")
    p = read_lfw(root)
    assert p.summary()["pairs"] == 6000 and p.summary()["folds"] == 10
    assert len(p.images) == 7701  # the photos the shared README lists
    assert p.labels.sum() == 3000
    # each fold: 300 same-person pairs, then 300 different-person pairs
    for k in range(10):
        fold = p.labels[p.folds == k]
        assert fold.size == 600 and fold[:300].all() and not fold[300:].any()
    # first lines of the file: "Abel_Pacheco 1 4", and the first different-person line of fold 1
    a, b = p.pairs[0]
    assert (p.images[a], p.images[b]) == ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg")
    a, b = p.pairs[300]
    assert (p.images[a], p.images[b]) == ("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg",
                                          "Dean_Barker/Dean_Barker_0001.jpg")
    assert p.image_root.name == "images_deepfunneled"
    assert all(p.image_path(i).is_file() for i in range(0, len(p.images), 97))
    # same-person pairs name one person, different-person pairs two
    for (i, j), same in zip(p.pairs, p.labels):
        assert (p.images[i].split("/")[0] == p.images[j].split("/")[0]) == same


def test_image_name_padding():
    assert lfw_image_name("Zico", 3) == "Zico/Zico_0003.jpg"
    assert lfw_image_name("George_W_Bush", 530) == "George_W_Bush/George_W_Bush_0530.jpg"


def _write(tmp_path, text):
    (tmp_path / "pairs.txt").write_text(text)
    return tmp_path


GOOD = "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t2\t3\nC\t1\tD\t4\n"


def test_small_file_and_folds(tmp_path):
    p = read_lfw(_write(tmp_path, GOOD))
    assert p.folds.tolist() == [0, 0, 1, 1]
    assert p.labels.tolist() == [True, False, True, False]
    assert p.images[p.pairs[3, 1]] == "D/D_0004.jpg"
    assert p.image_root == tmp_path  # no known image folder: the person folders are under root


@pytest.mark.parametrize("text,line,match", [
    ("", None, "empty file"),
    ("10\n", 1, "first line"),
    ("x 1\nA 1 2\nA 1 B 1\n", 1, "number of folds must be an integer"),
    ("2\t1\nA\t1\tB\t1\nA\t1\tB\t1\nC\t2\t3\nC\t1\tD\t4\n", 2, "same-person line"),
    ("2\t1\nA\t1\t2\nA\t1\t2\nC\t2\t3\nC\t1\tD\t4\n", 3, "different-person line"),
    ("2\t1\nA\t1\t2\nA\t1\tB\tx\nC\t2\t3\nC\t1\tD\t4\n", 3, "image number must be an integer"),
    ("2\t1\nA\t0\t2\nA\t1\tB\t1\nC\t2\t3\nC\t1\tD\t4\n", 2, "1-based"),
    ("2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t2\t3\n", None, "3 pair lines, expected 2 folds x 2 x 1 = 4"),
    (GOOD + "E\t1\t2\n", 6, "more pair lines"),
])
def test_malformed_lines_are_named(tmp_path, text, line, match):
    _write(tmp_path, text)
    with pytest.raises(ProtocolError, match=match) as info:
        read_lfw(tmp_path)
    assert info.value.line == line
    assert str(tmp_path / "pairs.txt") in str(info.value)


def test_missing_pairs_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs.txt"):
        read_lfw(tmp_path)


# ---------------------------------------------------------------------------------------- 10-fold accuracy


def brute_best_threshold(scores, labels):
    """Every candidate threshold tried one by one, in plain Python; same tie rule (middle of the best)."""
    values = sorted(set(float(s) for s in scores))
    candidates = [values[0] - 1.0] + [(a + b) / 2.0 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    accuracy = []
    for t in candidates:
        correct = sum(1 for s, y in zip(scores, labels) if (s > t) == bool(y))
        accuracy.append(correct / len(scores))
    best = max(accuracy)
    tied = [t for t, a in zip(candidates, accuracy) if a == best]
    return tied[len(tied) // 2], best


def brute_kfold(scores, labels, folds):
    out = []
    for k in sorted(set(folds.tolist())):
        train = [i for i in range(len(scores)) if folds[i] != k]
        test = [i for i in range(len(scores)) if folds[i] == k]
        t, _ = brute_best_threshold([scores[i] for i in train], [labels[i] for i in train])
        out.append((t, sum(1 for i in test if (scores[i] > t) == bool(labels[i])) / len(test)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_kfold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_folds, per_fold = 10, 40
    labels = np.tile(np.r_[np.ones(per_fold // 2, bool), np.zeros(per_fold // 2, bool)], n_folds)
    scores = np.where(labels, rng.normal(0.6, 0.2, labels.size), rng.normal(0.2, 0.2, labels.size))
    if seed % 2:  # ties (scores on a coarse grid), as cosine scores of duplicate photos give
        scores = np.round(scores, 1)
    folds = np.repeat(np.arange(n_folds), per_fold)
    got = kfold_accuracy(scores, labels, folds)
    want = brute_kfold(scores, labels, folds)
    np.testing.assert_allclose(got.thresholds, [t for t, _ in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.accuracies, [a for _, a in want], rtol=0, atol=1e-12)
    assert got.mean == pytest.approx(np.mean([a for _, a in want]))
    assert got.std == pytest.approx(np.std([a for _, a in want]))
    assert got.pairs.tolist() == [per_fold] * n_folds


def test_best_threshold_known_cases():
    # separable: any threshold between 0.4 and 0.6 is perfect; the single gap midpoint is chosen
    t, acc = best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1]))
    assert (t, acc) == (pytest.approx(0.5), 1.0)
    # sorted 0.1 n, 0.3 p, 0.5 n, 0.9 p: thresholds 0.2 and 0.7 both give 3/4; the upper middle one is taken
    t, acc = best_threshold(np.array([0.1, 0.5, 0.3, 0.9]), np.array([0, 0, 1, 1]))
    assert acc == 0.75 and t == pytest.approx(0.7)
    # three tied thresholds (0.15, 0.4 and 0.75 each give 5/7): the middle one
    t, acc = best_threshold(np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.9, 0.95]), np.array([0, 1, 0, 1, 0, 1, 1]))
    assert acc == pytest.approx(5 / 7) and t == pytest.approx(0.4)
    with pytest.raises(ValueError, match="both positive and negative"):
        best_threshold(np.array([0.1, 0.2]), np.array([1, 1]))


def test_kfold_needs_two_folds_and_matching_shapes():
    scores, labels = np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy(scores, labels, np.zeros(4, int))
    with pytest.raises(ValueError, match="3 fold ids for 4 scores"):
        kfold_accuracy(scores, labels, np.zeros(3, int))


# ------------------------------------------------------------------------------ the study = plain evaluations


@pytest.fixture(scope="module")
def mini_lfw(tmp_path_factory):
    """Folds 1 and 2 of the official file, the first 6 same- and 6 different-person lines of each."""
    lines = asset("verification/lfw/pairs.txt").read_text().splitlines()
    out = ["2\t6"]
    for fold in range(2):
        first = 1 + 600 * fold
        out += lines[first:first + 6] + lines[first + 300:first + 306]
    root = tmp_path_factory.mktemp("mini_lfw")
    (root / "pairs.txt").write_text("\n".join(out) + "\n")
    return read_lfw(root, images=asset("verification/lfw/images_deepfunneled"))


def test_study_rows_equal_plain_evaluations(mini_lfw):
    """Each study row (one shared read / detection / embedding pass) scores exactly as a plain
    evaluation with that row's settings; the excluded-no-face row drops the same pairs."""
    import dataclasses

    from detector.api import PostprocessConfig
    from detector.spec import DetectorSpec
    from pipeline.config import AlignConfig
    from pipeline.verification import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        EvaluationConfig,
        OnnxRecognizerConfig,
        Preprocess,
        evaluate,
    )
    from pipeline.verification.study import StudyConfig, StudyVariant, run_study
    from tests.shared import MOBILENET_WEIGHTS

    recognizer = OnnxRecognizerConfig(model=asset("weights/mobilefacenet_arcface112.onnx"), threads=1,
                                      preprocess=Preprocess(rgb=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime="onnxruntime",
                        postprocess=PostprocessConfig(nms_threshold=0.4))
    align = AlignConfig(select="largest", min_score=0.5, resize="cap:1024")
    base = StudyVariant(name="base", detector=spec, align=align)
    strict = dataclasses.replace(align, min_score=0.9995)  # some photos lose their face: centre crop
    variants = [
        base,
        dataclasses.replace(base, name="central", align=dataclasses.replace(align, select="central")),
        dataclasses.replace(base, name="strict", align=strict),
        dataclasses.replace(base, name="strict, excluded", align=strict, use_fallbacks=False),
        dataclasses.replace(base, name="concat", fusion="concat"),
        dataclasses.replace(base, name="none", fusion="none"),
        dataclasses.replace(base, name="long640", align=dataclasses.replace(align, resize="long:640")),
        dataclasses.replace(base, name="box", source="box"),
    ]
    study = run_study(mini_lfw, recognizer=recognizer,
                      config=StudyConfig(variants=variants, num_workers=1, threads=1, progress=False))
    # cap:1024 at score 0.5 (base, central, concat, none, box), at 0.9995 (strict: with voting the
    # candidates above the minimum score vote, so it is a pass of its own), long:640 at 0.5
    assert study.throughput["detection_passes"] == 3
    rows = {r["variant"]: r for r in study.rows()}
    fallbacks = rows["strict"]["no_face_photos"]
    print(f"\nstrict threshold: {fallbacks} of {len(mini_lfw.images)} photos centre-cropped; "
          f"{rows['strict, excluded']['pairs']} of 24 pairs left when excluded")
    assert 0 < fallbacks < len(mini_lfw.images)
    assert rows["strict, excluded"]["pairs"] < 24 == rows["strict"]["pairs"]
    for v in variants:
        plain = evaluate(mini_lfw, recognizer=recognizer, config=EvaluationConfig(
            sources=(v.source,), aggregation=v.aggregation, align=v.align, detector=v.detector,
            on_no_face="center-crop", use_fallbacks=v.use_fallbacks, threads=1, progress=False))
        assert plain.config == v.evaluation_config(threads=1, progress=False)
        want, got = plain.sources[v.source], study.results[v.name].sources[v.source]
        np.testing.assert_array_equal(got.pair_mask, want.pair_mask)
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6, err_msg=v.name)
        assert got.kfold.mean == pytest.approx(want.kfold.mean, abs=1e-12), v.name
        assert rows[v.name]["pairs"] == int(want.pair_mask.sum())
    assert "| base | " in study.markdown() and study.markdown().count("\n") == len(variants) + 1


def test_missing_weights_or_model_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    """No FACEPREP_WEIGHTS, an empty cache and no internet: the command names the weights in one
    line and exits 2 before any photo is read or any Ray actor started (the align job's rule)."""
    import urllib.error

    import detector.hub
    import pipeline.verification.cli as cli

    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("FACEPREP_WEIGHTS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no internet (test)")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the checks")

    monkeypatch.setattr(detector.hub, "download", offline)
    monkeypatch.setattr(cli, "evaluate", no_work)
    monkeypatch.setattr(cli, "run_study", no_work)
    model = asset("weights/mobilefacenet_arcface112.onnx")
    common = ["--pairs", str(asset("verification/deepface/master.csv")), "--out", str(tmp_path / "out")]
    for extra in ([], ["--study"]):
        assert cli.main([*common, "--model", str(model), *extra]) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: detector weights not usable"), err
        assert "mobilenet0.25" in err and "FACEPREP_WEIGHTS" in err and "Traceback" not in err
    # an explicit weights file that does not exist, and a missing recogniser model
    assert cli.main([*common, "--model", str(model), "--weights", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pth" in err, err
    from tests.shared import MOBILENET_WEIGHTS

    assert cli.main([*common, "--model", str(tmp_path / "nope.onnx"), "--weights", str(asset(MOBILENET_WEIGHTS))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.onnx" in err and "--model" in err, err
