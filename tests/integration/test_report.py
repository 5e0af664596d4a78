"""The visual report (``pipeline.report``, ``jobs/report.py``): its pieces on exact inputs, paging and
the new manifest fields on a hand-written manifest, and a real job's report rendered by headless
Chromium (screenshot, console, DOM counts, every image loaded)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.job import AlignJobConfig, run_align_job
from tests.shared import asset
from tests.unit.test_report import _counts, _local_images, _tags

REPO = Path(__file__).resolve().parents[2]
DEEPFACE = "verification/deepface"


# ------------------------------------------------------------------------------ a real job, in Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to check the report: install Debian's package "
                "(apt-get install -y chromium; scripts/test.sh does it when it is missing)")


def _run_chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
           "--hide-scrollbars", *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no console message at all: no script error, no warning
    return proc


def _render(page: Path, tmp: Path, *, screenshot: Path | None = None) -> str:
    """The DOM after load (every image decoded or failed) as Chromium serialises it."""
    dom = _run_chromium(page, tmp / "profile", "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body, body
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    assert f'data-images-loaded="{total}"' in body and 'data-images-failed="0"' in body, body
    if screenshot is not None:
        _run_chromium(page, tmp / "profile", "--window-size=1280,2400", f"--screenshot={screenshot}")
    return dom


@pytest.mark.slow
def test_a_finished_job_writes_a_report_that_renders_in_headless_chromium(tmp_path, capsys, ray_session,
                                                                          mobilenet_weights):
    """Acceptance 4: counts, thumbnails, problem photos drawn; screenshot not blank; no console output."""
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    for ident, names in (("alice", ("img1.jpg", "img2.jpg", "img4.jpg")), ("bob", ("img20.jpg", "img21.jpg"))):
        (src / ident).mkdir(parents=True)
        for name in names:
            shutil.copyfile(asset(f"{DEEPFACE}/{name}"), src / ident / name)
    (src / "misc").mkdir()
    shutil.copyfile(asset("images/group_insightface_t1.jpg"), src / "misc" / "group.jpg")
    (src / "misc" / "notes.jpg").write_text("a text file named .jpg\n")
    import skimage.data

    cv2.imwrite(str(src / "misc" / "cat.jpg"), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    config = AlignJobConfig(src=src, dst=dst, progress=False, num_workers=1, batch_size=4,
                            detector=DetectorSpec(weights=str(mobilenet_weights), runtime="torch"))
    summary = run_align_job(config)
    assert {k: n for k, n in summary.counts.items() if n} == {"ok": 6, "no_face": 1, "error": 1}

    report = dst / "report.html"
    shot = tmp_path / "report.png"
    dom = _render(report, tmp_path, screenshot=shot)
    counts = _counts(dom)
    expected = {"ok": 6, "no_face": 1, "error": 1, "filtered": 0, "total": 8, "faces": 11, "crops": 6, "identities": 3}
    assert {k: counts.get(k) for k in expected} == expected and counts.get("landmarks given", 0) == 0
    sections = {a["id"]: int(a["data-count"]) for t, a in _tags(dom) if t == "section"}
    assert sections == {"problem-no_face": 1, "problem-error": 1}
    images = _local_images(report, dom)
    crops = [p for p in images if not p.is_relative_to(dst / "report_files")]
    assert len(crops) == 6 and all(p.is_file() for p in images)  # the sample grid: every crop
    drawn = [p for p in images if p.is_relative_to(dst / "report_files" / "thumbs")]
    assert len(drawn) == 1  # the cat with its (empty) detections; the text file is shown as text
    assert "not a supported image" in dom
    # the screenshot: a real page, not a blank or uniform image
    png = cv2.imread(str(shot))
    assert png is not None and png.shape == (2400, 1280, 3)
    assert png.std() > 20 and len(np.unique(png.reshape(-1, 3)[::7], axis=0)) > 500
    # the contact sheet page renders too, with every crop of its identities
    sheet = _render(dst / "report_files" / "identities-0001.html", tmp_path)
    idents = {a["data-identity"]: int(a["data-photos"]) for t, a in _tags(sheet) if t == "section"}
    assert idents == {"alice": 3, "bob": 2, "misc": 3}
    assert len(_local_images(dst / "report_files" / "identities-0001.html", sheet)) == 6

    # jobs/report.py rebuilds it from dst alone
    before = _counts(report.read_text())
    report.unlink()
    cli = _report_cli()
    assert cli.main([str(dst), "--no-progress", "--page-size", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(report) and _counts(report.read_text()) == before
    assert (dst / "report_files" / "identities-0002.html").is_file()
    assert cli.main([str(tmp_path)]) == 2 and "no manifest" in capsys.readouterr().err


def _report_cli():
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "jobs" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
