"""Bad inputs, checkpoint formats and errors, the weights resolver (incl. download over local HTTP)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import cv2
import numpy as np
import pytest
import torch

import detector.weights as weights_mod
from detector import CheckpointError, Detector, InputImageError, RetinaFace, get_preset, load_model, save_checkpoint
from detector.cli import main as cli_main
from tests.shared import MOBILENET_WEIGHTS, asset


# ----------------------------------------------------------------------------- images
def test_empty_array_is_refused(detector):
    with pytest.raises(InputImageError, match="image 0: empty"):
        detector.detect([np.zeros((0, 10, 3), np.uint8)])
    with pytest.raises(InputImageError, match="no images"):
        detector.detect([])


def test_one_pixel_image_gives_no_faces(detector):
    out = detector.detect([np.full((1, 1, 3), 128, np.uint8)])
    assert len(out) == 1 and len(out[0]) == 0


def test_grayscale_is_replicated_to_three_channels(detector):
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    a = detector.detect([gray], resize=640)[0]
    b = detector.detect([cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)], resize=640)[0]
    assert len(a) == len(b) and torch.equal(a.boxes, b.boxes)
    assert int((a.scores > 0.5).sum()) >= 5


def test_four_channels_drop_alpha(detector):
    img = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    bgra = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    a = detector.detect([bgra], resize=640)[0]
    b = detector.detect([img], resize=640)[0]
    assert torch.equal(a.boxes, b.boxes)


def test_float_image_is_refused_with_advice(detector):
    with pytest.raises(InputImageError, match="expected uint8.*float32"):
        detector.detect([np.zeros((20, 20, 3), np.float32)])
    with pytest.raises(InputImageError, match="shape"):
        detector.detect([np.zeros((20, 20, 2), np.uint8)])
    with pytest.raises(InputImageError, match="list of images"):
        detector.detect(np.zeros((20, 20, 3), np.uint8))


def test_fp16_refused_on_cpu():
    model = RetinaFace(get_preset("mobilenet0.25"))
    with pytest.raises(ValueError, match="CUDA"):
        Detector(model, device="cpu", fp16=True)


# ----------------------------------------------------------------------------- checkpoints
def test_resnet50_file_loaded_as_mobilenet_names_the_backbone(tmp_path):
    r50 = RetinaFace(get_preset("resnet50"))
    path = tmp_path / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in r50.state_dict().items()}, path)  # DataParallel-style
    with pytest.raises(CheckpointError) as err:
        load_model(path, preset="mobilenet0.25")
    msg = str(err.value)
    assert "looks like a resnet50" in msg and "missing keys" in msg and "unexpected keys" in msg
    # without a preset the architecture is recognised and the file loads
    m = load_model(path)
    assert m.config.backbone == "resnet50"
    assert all(torch.equal(m.state_dict()[k], v) for k, v in r50.state_dict().items())


def test_truncated_checkpoint(tmp_path):
    src = asset(MOBILENET_WEIGHTS).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(src[: len(src) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_model(path)
    path2 = tmp_path / "list.pth"
    torch.save([1, 2, 3], path2)
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_model(path2)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_wrapped_state_dict_and_our_checkpoint_round_trip(tmp_path):
    sd = torch.load(asset(MOBILENET_WEIGHTS), map_location="cpu", weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    m1 = load_model(wrapped)
    ours = save_checkpoint(tmp_path / "ours.pt", m1, step=7)
    obj = torch.load(ours, weights_only=True)
    assert obj["config"]["mean_bgr"] == (104.0, 117.0, 123.0) or obj["config"]["mean_bgr"] == [104.0, 117.0, 123.0]
    assert obj["config"]["channel_order"] == "BGR" and obj["step"] == 7
    m2 = load_model(ours)
    assert m2.config == m1.config
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.equal(m1(x).cls_logits, m2(x).cls_logits)


def test_stored_config_wins_over_guessing(tmp_path):
    cfg = get_preset("mobilenet0.25")
    import dataclasses

    rgb = dataclasses.replace(cfg, name="custom-rgb", channel_order="RGB", mean_bgr=(1.0, 2.0, 3.0))
    path = save_checkpoint(tmp_path / "rgb.pt", RetinaFace(rgb))
    assert load_model(path).config == rgb


# ----------------------------------------------------------------------------- resolver / download
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _register(monkeypatch, url: str, sha: str | None):
    known = weights_mod.KnownWeights(name="mobilenet0.25", preset="mobilenet0.25",
                                     filename="retinaface_mobilenet0.25_biubug6.pth", url=url, sha256=sha)
    monkeypatch.setitem(weights_mod.KNOWN_WEIGHTS, "mobilenet0.25", known)


def test_download_verified_then_cached(tmp_path, monkeypatch, http_root):
    root, base = http_root
    shutil.copyfile(asset(MOBILENET_WEIGHTS), root / "w.pth")
    sha = hashlib.sha256((root / "w.pth").read_bytes()).hexdigest()
    assert sha == weights_mod.KNOWN_WEIGHTS["mobilenet0.25"].sha256  # registry hash is the real one
    monkeypatch.setenv(weights_mod.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights_mod.WEIGHTS_ENV, raising=False)
    _register(monkeypatch, f"{base}/w.pth", sha)
    path = weights_mod.resolve_weights("mobilenet0.25", progress=False)
    assert path == tmp_path / "cache" / "retinaface_mobilenet0.25_biubug6.pth"
    assert weights_mod.sha256sum(path) == sha
    (root / "w.pth").unlink()  # second call must not need the server
    assert weights_mod.resolve_weights(None, progress=False) == path
    assert list((tmp_path / "cache").iterdir()) == [path]


def test_download_with_wrong_hash_leaves_nothing(tmp_path, monkeypatch, http_root):
    root, base = http_root
    (root / "w.pth").write_bytes(b"x" * 1000)
    monkeypatch.setenv(weights_mod.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights_mod.WEIGHTS_ENV, raising=False)
    _register(monkeypatch, f"{base}/w.pth", "0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        weights_mod.resolve_weights("mobilenet0.25", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_mod.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights_mod.WEIGHTS_ENV, raising=False)
    _register(monkeypatch, "http://127.0.0.1:9/nothing.pth", None)  # port 9: connection refused
    with pytest.raises(CheckpointError) as err:
        weights_mod.resolve_weights("mobilenet0.25", progress=False)
    msg = str(err.value)
    assert "could not download" in msg and str(tmp_path / "cache") in msg and weights_mod.WEIGHTS_ENV in msg


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_mod.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    cached = tmp_path / "cache" / "retinaface_mobilenet0.25_biubug6.pth"
    cached.write_bytes(b"cached")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "retinaface_mobilenet0.25_biubug6.pth").write_bytes(b"env")
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(b"explicit")
    monkeypatch.setenv(weights_mod.WEIGHTS_ENV, str(env_dir))
    assert weights_mod.resolve_weights(explicit) == explicit
    assert weights_mod.resolve_weights("mobilenet0.25") == env_dir / "retinaface_mobilenet0.25_biubug6.pth"
    monkeypatch.delenv(weights_mod.WEIGHTS_ENV)
    assert weights_mod.resolve_weights("mobilenet0.25") == cached
    with pytest.raises(CheckpointError, match="neither a file nor a known"):
        weights_mod.resolve_weights("mobilenet9")


# ----------------------------------------------------------------------------- CLI
def test_cli_detect_writes_sorted_json_and_drawing(tmp_path):
    img = asset("images/group_insightface_t1.jpg")
    rc = cli_main(["detect", str(img), "--weights", str(asset(MOBILENET_WEIGHTS)), "--out", str(tmp_path),
                   "--detect-resize", "long:640", "--runtime", "torch", "--draw"])
    assert rc == 0
    rec = json.loads((tmp_path / "group_insightface_t1.json").read_text())
    assert (rec["width"], rec["height"]) == (1280, 886)
    scores = [f["score"] for f in rec["faces"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(s >= 0.5 for s in scores) == 6  # the photo's six people
    face = rec["faces"][0]
    assert len(face["box"]) == 4 and np.asarray(face["landmarks"]).shape == (5, 2)
    lm = np.asarray(face["landmarks"])
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left eye / mouth corner first
    drawn = cv2.imread(str(tmp_path / "group_insightface_t1.jpg"))
    assert drawn is not None and drawn.shape == (886, 1280, 3)


def test_cli_bad_weights_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    rc = cli_main(["detect", str(asset("images/group_insightface_t1.jpg")), "--weights", str(bad),
                   "--runtime", "torch", "--out", str(tmp_path)])
    assert rc == 2 and "not a readable torch checkpoint" in capsys.readouterr().err


def test_cli_detect_never_loses_a_result_to_a_name_collision(tmp_path):
    """Same file names in different folders mirror their folders; a collision that would remain
    (x.jpg and x.png side by side) is an error before anything is written."""
    photo = asset("images/group_insightface_t1.jpg")
    for person in ("alex", "rose"):
        (tmp_path / "ids" / person).mkdir(parents=True)
        shutil.copy(photo, tmp_path / "ids" / person / "img1.jpg")
    for draw in ([], ["--draw"]):
        out = tmp_path / f"det{len(draw)}"
        rc = cli_main(["detect", str(tmp_path / "ids/alex/img1.jpg"), str(tmp_path / "ids/rose/img1.jpg"),
                       "--weights", str(asset(MOBILENET_WEIGHTS)), "--runtime", "torch", "--out", str(out), *draw])
        assert rc == 0
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        expected = ["alex/img1.json", "rose/img1.json"] + (["alex/img1.jpg", "rose/img1.jpg"] if draw else [])
        assert written == sorted(expected)
        assert json.loads((out / "rose/img1.json").read_text())["image"].endswith("rose/img1.jpg")
    shutil.copy(photo, tmp_path / "ids/alex/img1.png")
    clash = tmp_path / "clash"
    rc = cli_main(["detect", str(tmp_path / "ids/alex/img1.jpg"), str(tmp_path / "ids/alex/img1.png"),
                   "--weights", str(asset(MOBILENET_WEIGHTS)), "--runtime", "torch", "--out", str(clash)])
    assert rc == 2 and not clash.exists()
