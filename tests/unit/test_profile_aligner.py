"""benchmarks/profile_aligner.py: the split of FaceAligner.run's time adds up, and --set reaches AlignConfig."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from benchmarks.profile_aligner import PARTS, main, parse_setting
from tests.shared import asset


def test_settings_are_parsed_to_alignconfig_values():
    assert parse_setting("refine_size=160") == ("refine_size", 160)
    assert parse_setting("vote_iou=0.5") == ("vote_iou", 0.5)
    assert parse_setting("resize=cap:320") == ("resize", "cap:320")
    assert parse_setting("retry_resize=none") == ("retry_resize", None)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_setting("refine_size")


def test_the_split_covers_the_whole_time(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("img1.jpg", "img2.jpg"):  # a baseline and a progressive JPEG
        shutil.copy(asset("verification/deepface") / name, src / name)
    out = tmp_path / "split.json"
    assert main(["--src", str(src), "--warm", "1", "--reps", "1", "--set", "refine_size=160",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ms = result["ms_per_photo"]
    assert result["photos"] == 2 and result["settings"] == {"refine_size": 160}
    assert set(ms) == {"total", "other", *PARTS}
    assert ms["infer"] > 0 and ms["decode"] > 0
    assert sum(ms[p] for p in PARTS) + ms["other"] == pytest.approx(ms["total"])
    assert ms["infer"] + ms["decode"] < ms["total"]
    assert "ms/photo" in capsys.readouterr().out
