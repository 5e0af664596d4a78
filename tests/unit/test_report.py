"""The visual report (``pipeline.report``, ``jobs/report.py``): its pieces on exact inputs, paging and
the new manifest fields on a hand-written manifest, and a real job's report rendered by headless
Chromium (screenshot, console, DOM counts, every image loaded)."""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from common.fsio import TEMP_MARKER
from pipeline.report import (
    MEASURES,
    Histogram,
    ReportConfig,
    ReportError,
    Reservoir,
    build_report,
    draw_detections,
    face_measures,
)


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(text: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _counts(page: str) -> dict[str, int]:
    """The status table: ``data-status`` / ``data-count`` row -> its number."""
    rows = re.findall(r'<tr data-(?:status|count)="([^"]+)"><th>[^<]*</th><td class="n">(\d+)</td>', page)
    return {key: int(n) for key, n in rows}


def _local_images(page_path: Path, text: str) -> list[Path]:
    """Files that the page's ``<img src>`` point to (all relative)."""
    out = []
    for tag, attrs in _tags(text):
        if tag == "img":
            src = attrs["src"]
            assert "://" not in src and not src.startswith("/"), src  # no external or absolute URL
            out.append((page_path.parent / unquote(src)).resolve())
    return out


# ------------------------------------------------------------------------------ pieces


def test_histogram_bins_are_half_open_and_clamped_at_the_ends():
    spec = next(m for m in MEASURES if m.key == "score")  # 0, 0.05, ..., 1
    h = Histogram(spec)
    assert len(h.all) == 20
    assert [h.bin_of(v) for v in (0.0, 0.0499, 0.05, 0.5, 0.9999, 1.0, 7.0, -3.0)] == [0, 0, 1, 10, 19, 19, 19, 0]
    for v, sel in ((0.2, True), (0.2, False), (0.97, True)):
        h.add(v, selected=sel)
    assert h.all[4] == 2 and h.selected[4] == 1 and h.all[19] == 1 and h.selected[19] == 1
    assert h.n == 3 and h.mean == pytest.approx((0.2 + 0.2 + 0.97) / 3) and (h.lo, h.hi) == (0.2, 0.97)
    size = Histogram(next(m for m in MEASURES if m.key == "box_size"))  # geometric: 4 * sqrt(2)^i
    assert size.spec.edges[:3] == (4.0, 5.657, 8.0)
    assert size.bin_of(8.0) == 2 and size.bin_of(7.9) == 1


def test_reservoir_keeps_everything_below_k_is_seeded_and_uniform():
    r = Reservoir(5, seed="x")
    for i in range(3):
        r.add(i)
    assert r.items == [0, 1, 2] and r.seen == 3

    def run(seed):
        r = Reservoir(3, seed=seed)
        for i in range(10):
            r.add(i)
        return r.items

    assert run("a") == run("a")
    hits = np.zeros(10)
    trials = 3000
    for t in range(trials):
        hits[run(str(t))] += 1
    np.testing.assert_allclose(hits / trials, 0.3, atol=0.04)  # each item kept with probability k/n


def test_face_measures_from_quality_or_from_box_and_landmarks():
    lm = [[30, 40], [60, 80], [45, 60], [35, 90], [55, 90]]
    face = {"box": [10, 20, 50, 120], "score": 0.9, "landmarks": lm}
    assert face_measures(face) == {"score": 0.9, "box_size": pytest.approx(math.sqrt(40 * 100)),
                                   "eye_distance": pytest.approx(50.0)}
    given = {"box": None, "score": None, "landmarks": lm,
             "quality": {"box_size": 70.0, "eye_distance": 49.0, "yaw": -12.5, "sharpness": 310.0, "roll": None}}
    assert face_measures(given) == {"box_size": 70.0, "eye_distance": 49.0, "yaw": -12.5, "sharpness": 310.0}


def test_draw_detections_draws_the_scaled_boxes_and_landmarks():
    image = np.zeros((400, 800, 3), np.uint8)
    faces = [{"box": [100, 100, 300, 300], "score": 0.99, "landmarks": [[150, 150], [250, 150], [200, 200],
                                                                          [160, 250], [240, 250]]},
             {"box": [500, 50, 700, 250], "score": 0.6, "landmarks": [[550, 100]] * 5}]
    thumb = draw_detections(image, faces, [0], max_side=400)  # scale 0.5
    assert thumb.shape == (200, 400, 3)
    assert tuple(thumb[100, 50]) == (40, 200, 40)  # left edge of the selected box (x 100 * 0.5), green
    assert tuple(thumb[75, 250]) == (0, 140, 255)  # left edge of the other box, orange
    assert tuple(thumb[75, 75]) == (0, 0, 255)  # its left eye, red (BGR)
    assert tuple(thumb[75, 125]) == (255, 0, 0)  # right eye, blue
    assert not thumb[150:170, 300:380].any()  # nothing drawn elsewhere
    assert draw_detections(image[:100, :100], [], [], max_side=400).shape == (100, 100, 3)  # never enlarged


# ------------------------------------------------------------------------------ hand-written manifest


def _crop(value: int) -> bytes:
    img = np.full((112, 112, 3), value, np.uint8)
    cv2.circle(img, (56, 56), 30, (255 - value, 128, value), -1)
    return cv2.imencode(".png", img)[1].tobytes()


def _quality(yaw: float) -> dict:
    return {"box_size": 120.0, "eye_distance": 40.0, "yaw": yaw, "pitch": 3.0, "roll": -2.0,
            "sharpness": 250.0, "brightness": 120.0}


def _synthetic_dst(root: Path) -> tuple[Path, list[dict]]:
    """A dst as the job would leave it with the new fields (given landmarks, quality, filtered,
    identities and outliers), one webdataset sample, unsorted with a superseded record."""
    src, dst = root / "raw", root / "out"
    for name in ("a/1.jpg", "a/2.jpg", "b/1.jpg", "top.jpg", "c/err.jpg", "c/cat.jpg", "c/side.jpg", "d/1.jpg",
                 "e/w.jpg"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        img = np.full((200, 300, 3), 90, np.uint8)
        if name == "c/err.jpg":
            os.mkfifo(src / name)  # an error record: reading it again would block forever
        else:
            (src / name).write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    face = {"box": [50, 40, 150, 160], "score": 0.98, "landmarks": [[80, 90], [120, 90], [100, 110], [85, 135],
                                                                     [115, 135]]}
    records = [
        {"src": "a/1.jpg", "status": "ok", "outputs": ["a/1.png"], "landmarks": "detected", "identity": "a",
         "identity_distance": 0.21, "identity_outlier": False, "embedding_row": 0,
         "faces": [dict(face, quality=_quality(10.0))]},
        {"src": "a/2.jpg", "status": "ok", "outputs": ["a/2.png"], "landmarks": "given", "identity": "a",
         "identity_distance": 0.93, "identity_outlier": True, "embedding_row": 1,
         "faces": [dict(face, score=None, box=None, quality=_quality(-20.0))]},
        {"src": "b/1.jpg", "status": "ok", "outputs": ["b/1.png"], "landmarks": "detected",
         "faces": [dict(face, quality=_quality(0.0)), dict(face, score=0.7, quality=_quality(50.0))]},
        {"src": "c/err.jpg", "status": "error", "error": "c/err.jpg: not a supported image", "outputs": [],
         "faces": []},
        {"src": "c/cat.jpg", "status": "no_face", "outputs": [], "faces": []},
        {"src": "c/side.jpg", "status": "filtered", "filtered": "face 0: yaw 63.1 > 45", "outputs": [],
         "landmarks": "detected", "faces": [dict(face, quality=_quality(63.1))]},
        {"src": "d/1.jpg", "status": "filtered", "filtered": "face 0: eye_distance 8.2 < 20", "outputs": [],
         "landmarks": "detected", "faces": [dict(face, quality=_quality(1.0))]},
        {"src": "top.jpg", "status": "ok", "outputs": ["top.png"], "landmarks": "detected", "faces": [face]},
        {"src": "e/w.jpg", "status": "ok", "outputs": ["shards/shard-000000.tar#000000-000001"],
         "landmarks": "detected", "faces": [face]},
    ]
    for r in records:
        r.setdefault("error", "")
        r.update(selected=[0] if r["status"] == "ok" else [], height=200, width=300)
        for out in r["outputs"]:
            if "#" not in out:
                (dst / out).parent.mkdir(parents=True, exist_ok=True)
                (dst / out).write_bytes(_crop(len(out) * 20))
    (dst / "shards").mkdir(parents=True)
    with tarfile.open(dst / "shards" / "shard-000000.tar", "w") as tar:
        for key, value in (("000000-000000", 10), ("000000-000001", 200)):
            for ext, data in (("png", _crop(value)), ("json", b"{}")):
                path = root / f"{key}.{ext}"
                path.write_bytes(data)
                tar.add(path, arcname=f"{key}.{ext}")
    superseded = dict(records[0], status="error", error="old")
    lines = [superseded] + records[::-1]  # unsorted, and a.1 appears twice (the later record wins)
    (dst / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (dst / "job.json").write_text(json.dumps({"settings": {"src": str(src), "ext": "png", "format": "folder"}}))
    return dst, records


def test_report_of_a_manifest_with_every_field_pages_counts_and_histograms(tmp_path):
    dst, records = _synthetic_dst(tmp_path)
    manifest_before = (dst / "manifest.jsonl").read_bytes()
    done = []
    worker = threading.Thread(target=lambda: done.append(build_report(
        dst, ReportConfig(page_size=2, list_page_size=1, problems=1, sample=3, seed=7))), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done, "build_report did not finish (blocked on the FIFO?)"
    path = done[0]
    page = path.read_text()
    assert (dst / "manifest.jsonl").read_bytes() == manifest_before  # read only, never compacted in place
    assert _counts(page) == {"ok": 5, "no_face": 1, "error": 1, "filtered": 2, "total": 9, "identity_outlier": 1,
                             "landmarks given": 1, "landmarks detected": 6, "faces": 8, "crops": 5, "identities": 6}
    # histograms: 8 faces, 7 with a score (not the given one), 6 with quality; faces per photo: 8 photos
    hists = {a["data-measure"]: int(a["data-n"]) for t, a in _tags(page) if t == "svg"}
    assert hists == {"score": 7, "box_size": 8, "eye_distance": 8, "yaw": 6, "pitch": 6, "roll": 6, "sharpness": 6,
                     "brightness": 6, "faces": 8, "identity_distance": 2}
    # problem sections: counts, one sampled thumbnail each, full lists paged one row a page
    sections = {a["id"]: int(a["data-count"]) for t, a in _tags(page) if t == "section"}
    assert sections == {"problem-no_face": 1, "problem-error": 1, "problem-filtered": 2, "problem-identity_outlier": 1}
    files = dst / "report_files"
    listed = []
    for n in (1, 2):
        text = (files / f"filtered-000{n}.html").read_text()
        listed += re.findall(r"<td>(face 0: [^<]*)</td>", text)
    assert sorted(listed) == ["face 0: eye_distance 8.2 &lt; 20", "face 0: yaw 63.1 &gt; 45"]
    assert 'href="filtered-0002.html"' in (files / "filtered-0001.html").read_text()
    assert 'filtered-0003' not in (files / "filtered-0002.html").read_text()
    assert "not a supported image" in (files / "error-0001.html").read_text()
    # identities: 6 folders (a, b, c, d, e, then the top-level photo) two a page, in order
    names = []
    for n in (1, 2, 3):
        text = (files / f"identities-000{n}.html").read_text()
        names += [(a["data-identity"], int(a["data-photos"])) for t, a in _tags(text) if t == "section"]
        for img in _local_images(files / "x.html", text):
            assert img.is_file(), img
    assert names == [("a", 2), ("b", 1), ("c", 3), ("d", 1), ("e", 1), ("(top level)", 1)]
    a_page = (files / "identities-0001.html").read_text()
    assert a_page.index("a/2.png") < a_page.index("a/1.png")  # the outlier first, framed
    assert re.search(r'<img src="../a/2.png" class="outlier"', a_page)
    # every image of the main page exists: crops by reference, drawn thumbnails, the shard crop copied out
    images = _local_images(path, page)
    assert all(p.is_file() for p in images), images
    shard_crop = files / "crops" / "shard-000000" / "000000-000001.png"
    assert shard_crop.read_bytes() == _crop(200)
    assert not (files / "crops" / "shard-000000" / "000000-000000.png").exists()  # only what is shown
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]
    # a rebuild with bigger pages replaces report_files/ (no stale pages) and is deterministic
    build_report(dst, ReportConfig(page_size=50, list_page_size=1000, problems=1, sample=3, seed=7))
    assert sorted(p.name for p in files.glob("*.html")) == [
        "error-0001.html", "filtered-0001.html", "identities-0001.html", "identity_outlier-0001.html",
        "no_face-0001.html"]
    with pytest.raises(ReportError, match="no manifest"):
        build_report(tmp_path / "nowhere")
