"""benchmarks/bench_align_job.py: the loop / job / loop bench end to end on a tiny tree, and its ratios."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.shared import asset
from tests.unit.test_bench_align_job import SCRIPT


def test_bench_end_to_end_on_a_small_tree(tmp_path):
    photos = sorted(p for p in asset("verification/deepface").iterdir() if p.suffix == ".jpg")[:8]
    src = tmp_path / "src"
    for i, p in enumerate(photos):  # two identities; --limit 6 keeps a:4 photos and b:2 (sorted paths)
        (src / "ab"[i // 4]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, src / "ab"[i // 4] / p.name)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--src", str(src), "--limit", "6", "--rounds", "1",
                           "--sample-s", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "job / loop:" in proc.stdout
    result = json.loads(out.read_text())
    assert result["photos"] == 6 and result["rounds"] == 1
    assert [r["kind"] for r in result["runs"]] == ["loop", "job", "loop"]
    for r in result["runs"]:
        assert r["photos"] == 6, r["kind"]  # the job saw only the linked 6, as the loops did
        assert r["faces"] > 0 and r["photos_per_s"] > 0 and r["peak_pss_mb"] > 0
        assert 0 < r["time_to_first_crop_s"] < r["seconds"]
    loop, job = result["runs"][0], result["runs"][1]
    assert loop["steady_photos_per_s"] > loop["photos_per_s"] and 0 < loop["fixed_cost_s"] < loop["seconds"]
    assert job["summary"]["inputs"] == 6 and job["command"].startswith("python jobs/align_dataset.py --src S")
    # the job's own clock starts at its run_align_job call, after the interpreter's start and imports
    assert 0 < job["summary_time_to_first_crop_s"] < job["time_to_first_crop_s"]
    s = result["summary"]
    assert s["loop"]["photos_per_s"] > 0 and s["job"]["photos_per_s"] > 0
    expected = job["photos_per_s"] / ((loop["photos_per_s"] + result["runs"][2]["photos_per_s"]) / 2)
    assert s["ratio"]["whole_process"] == pytest.approx(expected, abs=1e-3)
