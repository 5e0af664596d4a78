"""benchmarks/bench_align_job.py: the loop / job / loop bench end to end on a tiny tree, and its ratios."""

from __future__ import annotations

import importlib.util

import pytest

from tests.shared import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "bench_align_job.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_align_job", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(kind: str, rate: float, steady: float | None) -> dict:
    return {"kind": kind, "photos_per_s": rate, "steady_photos_per_s": steady, "time_to_first_crop_s": 1.0,
            "fixed_cost_s": 2.0, "peak_pss_mb": 100.0, "seconds": 10.0}


def test_ratios_use_the_two_neighbouring_loops():
    bench = _bench()
    runs = [_run("loop", 10, 20), _run("job", 30, 60), _run("loop", 20, 40), _run("job", 10, None),
            _run("loop", 30, 40)]
    assert bench.round_ratios(runs) == [{"whole_process": 2.0, "steady": 2.0},  # 30 / 15, 60 / 30
                                        {"whole_process": 0.4, "steady": None}]  # 10 / 25; no steady rate
    summary = bench.summarize(runs)
    assert summary["ratio"] == {"whole_process": 1.2, "steady": 2.0}  # medians ignore the missing
    assert summary["loop"]["photos_per_s"] == 20 and summary["job"]["steady_photos_per_s"] == 60
    with pytest.raises(ValueError, match="alternate"):
        bench.round_ratios(runs[:2])
