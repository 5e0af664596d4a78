#!/usr/bin/env python
"""The align job against a plain insightface loop: whole processes, same photos, interleaved.

    python benchmarks/bench_align_job.py [--src DIR] [--limit N] [--rounds 1] [--json runs/bench_align_job.json]
    python benchmarks/bench_align_job.py --src ../shared/assets/verification/lfw/images_deepfunneled --limit 3000

Photos: every image file under ``--src`` (recursive; what the job lists: ``list_inputs``, sorted
relative paths). Default ``--src``: ``--photos`` (2000) copies of the deepface verification photos
(cycled, one sub-folder per 20), built in a temporary folder (``$TMPDIR``). ``--limit N`` keeps
the first N; the job then gets a temporary tree of symlinks to exactly those, so that the loop
and the job see the same photos.

Runs, each a fresh child process timed from its spawn to its exit (interpreter start, imports,
model load, Ray's start and shutdown all included), in the order loop, job, loop (``--rounds R``:
loop, job, loop, job, ..., loop: R jobs, R + 1 loops, each job between two loops, because the
machine's speed drifts):

``loop``
    the plain insightface recipe, one photo at a time: ``cv2.imread``, SCRFD-500M
    (``weights/peers/scrfd_500m_bnkps.onnx``) through ``insightface.model_zoo.scrfd.SCRFD``
    on onnxruntime with its default threads, ``prepare(ctx_id=-1, input_size=(640, 640))``,
    ``detect``, the largest face (box area) with score >= 0.5,
    ``insightface.utils.face_align.norm_crop(img, kps, 112)``, ``cv2.imwrite`` JPEG quality 95
    into a mirrored tree (``rel`` -> ``dst/rel`` with a ``.jpg`` suffix). The child prints its own
    timestamps (imports done, model loaded, first crop, end) as JSON.
``job``
    the command line with its defaults: ``python jobs/align_dataset.py --src S --dst D
    --no-progress --summary-json F`` (plus ``--job-args``), ``FACEPREP_WEIGHTS`` set to the shared
    weights folder and this checkout first on ``PYTHONPATH``. Its exit code 3 (finished, some
    photos failed, e.g. unreadable) is accepted: those photos count, as the loop's unreadable ones do.

Reported per run and as the median over rounds:

* ``photos_per_s``: photos / whole-process seconds;
* ``steady_photos_per_s``: the loop's rate after its model load (its own timestamps); the job's
  ``steady_photos_per_s`` from its summary (the rate after its first records arrive). ``None``
  when the job's first batch brought half of the photos or more (as the job's own summary does,
  which then prints no steady rate). The job's records reach its driver a chunk at a time, and
  the other actors' first chunks, done during the warm-up, count as steady: on a run of a few
  chunks per actor this rate is too high; judge it on thousands of photos;
* ``time_to_first_crop_s``: from spawn to the first crop on disk (the loop's timestamp; for the
  job, the earliest modification time of a crop under ``dst``). The job's summary counts its
  own ``time_to_first_crop_s`` from the ``run_align_job`` call to the first records at the driver
  (no interpreter start, imports, or argument checks), with ``ray_start_s`` its part; both are
  kept (``summary_time_to_first_crop_s``, ``summary_ray_start_s``) when the summary has them;
* ``fixed_cost_s``: whole-process seconds minus photos / steady rate (what a run costs besides
  its photos: start-up, model load, warm-up, shutdown);
* ``peak_pss_mb``: the peak summed proportional set size (PSS: pages shared between processes,
  such as Ray's object store, counted once) of the child and its descendants (Ray's GCS, raylet,
  workers), read from /proc (Linux) every ``--sample-s`` seconds; for the loop also at its end
  (the child reads its own PSS), so that a short loop is not judged by a sample at its start. A
  sample of a Ray process tree costs ~0.13 s of CPU, hence the 5 s default on this 2-core machine;
* the ratios job / loop, per round against the mean of the job's two neighbouring loops:
  ``whole_process`` (photos_per_s) and ``steady`` (steady_photos_per_s); their medians.

The table goes to stdout; ``--json`` also writes every run (with the job's summary) and the medians.
Outputs are written under the temporary folder and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.shared import asset  # noqa: E402  (the one locator of ../shared)

PHOTOS_PER_IDENTITY = 20
SCRFD_FILE = "weights/peers/scrfd_500m_bnkps.onnx"
JOB_SCRIPT = REPO / "jobs" / "align_dataset.py"
CROP_SUFFIXES = (".jpg", ".png")  # the job's --ext choices


# ------------------------------------------------------------------------------- photos


def build_source(root: Path, count: int) -> None:
    """``count`` copies of the deepface photos (cycled) under ``root/idXXX/``."""
    photos = sorted(p for p in asset("verification/deepface").iterdir() if p.suffix == ".jpg")
    for i in range(count):
        p = photos[i % len(photos)]
        dst = root / f"id{i // PHOTOS_PER_IDENTITY:03d}" / f"{i:05d}_{p.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)


def link_tree(src: Path, rels: list[str], root: Path) -> None:
    """``root/rel`` -> ``src/rel`` (absolute symlinks; the job lists symlinked files)."""
    for rel in rels:
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((src / rel).resolve())


# ------------------------------------------------------------------------------- loop child


def _own_pss_mb() -> float:
    return round(_pss(os.getpid()) / 2**20, 1)


def run_loop(src: Path, photo_list: Path, dst: Path) -> dict:
    """insightface's recipe on the photos listed (relative paths) in ``photo_list``. Timestamps:
    ``time.time()``, for the parent to subtract its spawn time."""
    import cv2
    import numpy as np
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils.face_align import norm_crop

    t_imports = time.time()
    model = SCRFD(model_file=str(asset(SCRFD_FILE)))
    model.prepare(ctx_id=-1, input_size=(640, 640))
    t_model = time.time()
    rels = photo_list.read_text().splitlines()
    faces = unreadable = 0
    t_first_crop = None
    for rel in rels:
        img = cv2.imread(str(src / rel))
        if img is None:
            unreadable += 1
            continue
        det, kpss = model.detect(img, input_size=(640, 640))
        ok = np.flatnonzero(det[:, 4] >= 0.5)
        if len(ok):
            area = (det[ok, 2] - det[ok, 0]) * (det[ok, 3] - det[ok, 1])
            crop = norm_crop(img, kpss[ok[int(np.argmax(area))]], 112)
            out = (dst / rel).with_suffix(".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
            faces += 1
            t_first_crop = t_first_crop or time.time()
    t_end = time.time()
    return {"photos": len(rels), "faces": faces, "unreadable": unreadable, "t_imports": t_imports,
            "t_model": t_model, "t_first_crop": t_first_crop, "t_end": t_end,
            "threads": model.session.get_session_options().intra_op_num_threads or "default",
            "providers": model.session.get_providers(), "final_pss_mb": _own_pss_mb()}


# ------------------------------------------------------------------------------- processes and memory


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _pss(pid: int) -> int:
    """PSS (bytes) of one process, from /proc (Linux); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_pss(pid: int) -> int:
    """Summed PSS (bytes) of ``pid`` and its descendants."""
    children = _children_map()
    stack, total = [pid], 0
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, ()))
        total += _pss(p)
    return total


def measure(cmd: list[str], *, env: dict[str, str], log: Path, sample_s: float, ok_codes: tuple[int, ...] = (0,)
            ) -> dict:
    """Run ``cmd`` (stderr to ``log``); its stdout, spawn time (``time.time()``), whole-process
    seconds and PSS samples of its process tree. An exit code not in ``ok_codes`` raises."""
    with open(log, "w") as err:
        spawn = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while proc.poll() is None and not stop.is_set():
                samples.append((round(time.perf_counter() - t0, 1), round(_tree_pss(proc.pid) / 2**20, 1)))
                stop.wait(sample_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        out, _ = proc.communicate()
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
    if proc.returncode not in ok_codes:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{shlex.join(cmd[1:3])} failed with exit code {proc.returncode}:\n{out[-2000:]}{tail}")
    return {"stdout": out, "spawn": spawn, "seconds": seconds, "pss_mb_trace": samples,
            "peak_pss_mb": max((v for _, v in samples), default=0.0)}


def first_crop_mtime(dst: Path) -> float | None:
    """Earliest modification time (``time.time()`` clock) of a crop file under ``dst``."""
    times = [p.stat().st_mtime for p in dst.rglob("*") if p.suffix in CROP_SUFFIXES and p.is_file()]
    return min(times, default=None)


def _rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def loop_run(src: Path, photo_list: Path, dst: Path, *, tmp: Path, sample_s: float) -> dict:
    m = measure([sys.executable, str(Path(__file__).resolve()), "loop", "--src", str(src), "--photo-list",
                 str(photo_list), "--dst", str(dst)], env=dict(os.environ), log=tmp / "loop.log", sample_s=sample_s)
    res = json.loads(m["stdout"].strip().splitlines()[-1])
    n, spawn, seconds = res["photos"], m["spawn"], m["seconds"]
    steady = n / (res["t_end"] - res["t_model"])
    return {"kind": "loop", "photos": n, "faces": res["faces"], "seconds": round(seconds, 3),
            "photos_per_s": round(n / seconds, 3), "steady_photos_per_s": round(steady, 3),
            "imports_s": round(res["t_imports"] - spawn, 3), "model_loaded_s": round(res["t_model"] - spawn, 3),
            "time_to_first_crop_s": _rounded(res["t_first_crop"] and res["t_first_crop"] - spawn),
            "fixed_cost_s": round(seconds - n / steady, 3),
            "peak_pss_mb": max(m["peak_pss_mb"], res["final_pss_mb"]), "pss_mb_trace": m["pss_mb_trace"],
            "unreadable": res["unreadable"], "threads": res["threads"], "providers": res["providers"]}


def job_run(src: Path, dst: Path, *, job_args: list[str], tmp: Path, sample_s: float) -> dict:
    summary_file = tmp / "job_summary.json"
    summary_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(JOB_SCRIPT), "--src", str(src), "--dst", str(dst), "--no-progress",
           "--summary-json", str(summary_file), *job_args]
    env = {**os.environ, "FACEPREP_WEIGHTS": str(asset("weights")),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    m = measure(cmd, env=env, log=tmp / "job.log", sample_s=sample_s, ok_codes=(0, 3))  # 3: some photos failed
    s = json.loads(summary_file.read_text())
    n, seconds = s["processed"], m["seconds"]
    # a steady rate means something only when it covers most of the run (the summary's own rule)
    steady = s["steady_photos_per_s"] if 2 * s["warmup_photos"] < n and s["steady_photos_per_s"] > 0 else None
    first = first_crop_mtime(dst)
    return {"kind": "job", "photos": n, "faces": s["crops_written"], "seconds": round(seconds, 3),
            "photos_per_s": round(n / seconds, 3), "steady_photos_per_s": steady,
            "time_to_first_crop_s": _rounded(first and first - m["spawn"]),
            "summary_time_to_first_crop_s": s.get("time_to_first_crop_s"),
            "summary_ray_start_s": s.get("ray_start_s"),
            "fixed_cost_s": _rounded(steady and seconds - n / steady),
            "peak_pss_mb": m["peak_pss_mb"], "pss_mb_trace": m["pss_mb_trace"],
            "command": shlex.join(["python", "jobs/align_dataset.py", "--src", "S", "--dst", "D", "--no-progress",
                                   "--summary-json", "F", *job_args]),
            "summary": s}


# ------------------------------------------------------------------------------- results


def _ratio(job: float | None, loops: list[float | None]) -> float | None:
    if job is None or any(v is None for v in loops):
        return None
    return round(job / statistics.fmean(loops), 3)


def round_ratios(runs: list[dict]) -> list[dict]:
    """Per job run (``runs`` alternate loop, job, loop, ..., loop): its rates over the mean of its
    two neighbouring loops' rates, whole process and steady state."""
    kinds = [r["kind"] for r in runs]
    if len(runs) % 2 == 0 or any(k != ("job" if i % 2 else "loop") for i, k in enumerate(kinds)):
        raise ValueError(f"runs must alternate loop, job, ..., loop; got {kinds}")
    out = []
    for i in range(1, len(runs), 2):
        job, loops = runs[i], (runs[i - 1], runs[i + 1])
        out.append({key: _ratio(job[f"{rate}photos_per_s"], [r[f"{rate}photos_per_s"] for r in loops])
                    for key, rate in (("whole_process", ""), ("steady", "steady_"))})
    return out


MEDIAN_KEYS = ("photos_per_s", "steady_photos_per_s", "time_to_first_crop_s", "fixed_cost_s", "peak_pss_mb", "seconds")


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict]) -> dict:
    """Medians per kind over the runs, and the medians of the per-round ratios."""
    ratios = round_ratios(runs)
    out = {kind: {key: _median([r[key] for r in runs if r["kind"] == kind]) for key in MEDIAN_KEYS}
           for kind in ("loop", "job")}
    out["ratio"] = {key: _median([r[key] for r in ratios]) for key in ("whole_process", "steady")}
    out["ratio_per_round"] = ratios
    return out


def _cell(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def table(runs: list[dict], summary: dict) -> str:
    head = (f"{'run':<12}{'photos':>7}{'crops':>7}{'whole s':>9}{'photos/s':>10}{'steady/s':>10}"
            f"{'1st crop s':>11}{'fixed s':>9}{'peak MB':>9}")
    rows = [head, "-" * len(head)]
    count = {"loop": 0, "job": 0}

    def row(name: str, r: dict) -> str:
        return (f"{name:<12}{r.get('photos', ''):>7}{r.get('faces', ''):>7}{_cell(r['seconds'], '.1f'):>9}"
                f"{_cell(r['photos_per_s'], '.2f'):>10}{_cell(r['steady_photos_per_s'], '.2f'):>10}"
                f"{_cell(r['time_to_first_crop_s'], '.2f'):>11}{_cell(r['fixed_cost_s'], '.2f'):>9}"
                f"{_cell(r['peak_pss_mb'], '.0f'):>9}")

    for r in runs:
        count[r["kind"]] += 1
        rows.append(row(f"{r['kind']} {count[r['kind']]}", r))
    rows += ["-" * len(head), row("median loop", summary["loop"]), row("median job", summary["job"])]
    per_round = "; ".join(f"{_cell(x['whole_process'], '.2f')}x / {_cell(x['steady'], '.2f')}x"
                          for x in summary["ratio_per_round"])
    rows.append(f"job / loop: {_cell(summary['ratio']['whole_process'], '.2f')}x whole process, "
                f"{_cell(summary['ratio']['steady'], '.2f')}x steady state (per round, whole / steady: {per_round})")
    return "\n".join(rows)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "loop"), help=argparse.SUPPRESS)
    p.add_argument("--src", type=Path, help="photo tree (recursive); default: --photos deepface copies")
    p.add_argument("--photos", type=int, default=2000, help="deepface copies to build when --src is not given")
    p.add_argument("--limit", type=int, help="only the first N photos (sorted relative paths)")
    p.add_argument("--rounds", type=int, default=1, help="jobs, each between two loops (loop, job, loop, ...)")
    p.add_argument("--job-args", default="", help="extra flags for jobs/align_dataset.py (default: none)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--photo-list", type=Path, help=argparse.SUPPRESS)  # loop child: relative paths, one a line
    p.add_argument("--dst", type=Path, help=argparse.SUPPRESS)  # loop child: output tree
    args = p.parse_args(argv)

    if args.mode == "loop":
        print(json.dumps(run_loop(args.src, args.photo_list, args.dst)))
        return 0
    for name in ("photos", "limit", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.src is not None and not args.src.is_dir():
        p.error(f"--src {args.src}: not a folder")

    from pipeline.job.resume import list_inputs  # what the job counts as a photo

    with tempfile.TemporaryDirectory(prefix="bench_align_job_") as tmp_name:
        tmp = Path(tmp_name)
        src = args.src.resolve() if args.src is not None else tmp / "deepface"
        if args.src is None:
            build_source(src, args.photos)
        rels = list_inputs(src)
        if not rels:
            p.error(f"no photos under {src}")
        if args.limit is not None and args.limit < len(rels):
            rels = rels[: args.limit]
            link_tree(src, rels, tmp / "src")
            src = tmp / "src"
        photo_list = tmp / "photos.txt"
        photo_list.write_text("\n".join(rels) + "\n")
        job_args = shlex.split(args.job_args)
        results: dict = {"src": str(args.src or f"{args.photos} deepface copies"), "limit": args.limit,
                         "photos": len(rels), "rounds": args.rounds, "cpus": os.cpu_count(),
                         "job_args": job_args, "load_avg_start": os.getloadavg(), "runs": []}
        print(f"{len(rels)} photos from {results['src']}; loop / job / loop x {args.rounds} round(s)", flush=True)

        def record(r: dict) -> None:
            if r["photos"] != len(rels):
                raise RuntimeError(f"the {r['kind']} processed {r['photos']} photos, not the {len(rels)} listed")
            results["runs"].append(r)
            print(f"{r['kind']}: {r['photos']} photos in {r['seconds']:.1f} s, {r['photos_per_s']:.2f} photos/s "
                  f"(steady {_cell(r['steady_photos_per_s'], '.2f')}), {r['faces']} crops, "
                  f"peak {r['peak_pss_mb']:.0f} MB", flush=True)
            if r["kind"] == "job":
                s = r["summary"]
                own, ray = r["summary_time_to_first_crop_s"], r["summary_ray_start_s"]
                print(f"  its summary: {s['photos_per_s']:.2f} photos/s from the dataset's start, warm-up "
                      f"{s['warmup_s']:.1f} s"
                      + ("" if own is None else f", first crop {own:.2f} s after the job's call")
                      + ("" if ray is None else f" (Ray up after {ray:.2f} s)") + f"; {s['plan']}", flush=True)

        def fresh(folder: Path) -> Path:
            shutil.rmtree(folder, ignore_errors=True)
            return folder

        record(loop_run(src, photo_list, fresh(tmp / "out_loop"), tmp=tmp, sample_s=args.sample_s))
        for _ in range(args.rounds):
            record(job_run(src, fresh(tmp / "out_job"), job_args=job_args, tmp=tmp, sample_s=args.sample_s))
            record(loop_run(src, photo_list, fresh(tmp / "out_loop"), tmp=tmp, sample_s=args.sample_s))
    results["load_avg_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"])
    print()
    print(table(results["runs"], results["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
