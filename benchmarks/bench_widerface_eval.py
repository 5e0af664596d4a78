#!/usr/bin/env python
"""Benchmark the WIDER FACE evaluator on a full 3,226-image prediction set.

Measures (1) the whole ``jobs/eval_widerface.py --pred`` process (Python start-up, imports,
.mat loading, reading the submission, scoring, JSON and PR-curve PNGs), median of ``--repeat``
runs, against the reference port's time on the same set, and (2) an in-process breakdown.

    python benchmarks/bench_widerface_eval.py                      # seed-1 golden set from ../shared
    python benchmarks/bench_widerface_eval.py --pred DIR --gt DIR  # any submission folder

The reference figure (``--reference-seconds``, default 31 s) is the time the widely used Python
port (biubug6/Pytorch_Retinaface widerface_evaluate/evaluation.py, with its Cython bbox_overlaps)
takes for one such set on the project's development machine; the acceptance bar is 1/10 of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _default_paths() -> tuple[Path, Path, dict | None]:
    from tests.shared import asset, golden

    return (golden("widerface_eval/predictions_seed1.tar.gz"), asset("widerface/ground_truth"),
            json.loads(golden("widerface_eval/expected_ap.json").read_text())["predictions_seed1.tar.gz"])


def _time_process(cmd: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + sys of the child) of each run."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def _breakdown(pred_dir: Path, gt_dir: Path, out_dir: Path) -> dict[str, float]:
    stages: dict[str, float] = {}
    t = time.perf_counter()
    from detector.evaluation import widerface as wf

    stages["import"] = time.perf_counter() - t
    stages["_torch"] = "torch" in sys.modules  # type: ignore[assignment]
    t = time.perf_counter()
    gt = wf.load_ground_truth(gt_dir)
    stages["load .mat"] = time.perf_counter() - t
    t = time.perf_counter()
    preds = wf.read_submission(pred_dir, progress=False)
    stages["read submission"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = wf.WiderFaceEvaluator(ground_truth=gt)
    ev.process_submission(preds)
    result = ev.compute()
    stages["score (3 settings)"] = time.perf_counter() - t
    t = time.perf_counter()
    wf.plot_pr_curves(result, out_dir)
    stages["plot 3 PNGs"] = time.perf_counter() - t
    stages["_ap"] = result.to_dict()  # type: ignore[assignment]
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", type=Path,
                   help="submission folder or .tar.gz holding predictions/ (default: golden seed 1)")
    p.add_argument("--gt", type=Path, help="ground-truth .mat folder (default: ../shared)")
    p.add_argument("--repeat", type=int, default=3, help="process runs; the median is reported (default: %(default)s)")
    p.add_argument("--reference-seconds", type=float, default=31.0,
                   help="reference port's time for one set on this machine (default: %(default)s)")
    a = p.parse_args(argv)

    expected = None
    if a.pred is None or a.gt is None:
        default_pred, default_gt, expected = _default_paths()
        pred, gt_dir = a.pred or default_pred, a.gt or default_gt
    else:
        pred, gt_dir = a.pred, a.gt

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if pred.is_file():
            with tarfile.open(pred) as tar:
                tar.extractall(tmp / "extracted", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            pred = next((tmp / "extracted").rglob("predictions"), tmp / "extracted")
        out = tmp / "out"
        cmd = [sys.executable, str(REPO / "jobs" / "eval_widerface.py"), "--pred", str(pred), "--gt", str(gt_dir),
               "--out", str(out), "--json", str(out / "ap.json"), "--quiet"]
        times, cpus = _time_process(cmd, a.repeat)
        job_ap = json.loads((out / "ap.json").read_text())
        stages = _breakdown(pred, gt_dir, tmp / "plots")

    med = statistics.median(times)
    print(f"prediction set: {pred if not str(pred).startswith(str(tmp)) else 'extracted archive'}")
    print(f"jobs/eval_widerface.py --pred (whole process, incl. JSON + 3 PNGs): median {med:.3f} s "
          f"over {len(times)} runs [{', '.join(f'{t:.3f}' for t in times)}]")
    print(f"reference port: {a.reference_seconds:.1f} s -> speed-up {a.reference_seconds / med:.1f}x "
          f"(target >= 10x, i.e. <= {a.reference_seconds / 10:.2f} s): "
          f"{'PASS' if med <= a.reference_seconds / 10 else 'FAIL'}")
    print(f"  CPU time (user + sys) of the process: median {statistics.median(cpus):.3f} s "
          f"[{', '.join(f'{c:.3f}' for c in cpus)}]; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs (wall time inflates when the machine is shared)")
    print("in-process breakdown:")
    ap = stages.pop("_ap")
    if stages.pop("_torch"):
        print("  note: importing detector.evaluation imported torch (detector/__init__.py imports its "
              "torch modules eagerly); that import dominates the start-up")
    for name, sec in stages.items():
        print(f"  {name:<20s} {sec:7.3f} s")
    for s in ("easy", "medium", "hard"):
        line = f"  AP {s:<6s} {job_ap[s]:.16f}"
        if expected is not None:
            line += f"  expected {expected[s]:.16f}  |diff| {abs(job_ap[s] - expected[s]):.1e}"
        print(line)
    assert ap["easy"] == job_ap["easy"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
