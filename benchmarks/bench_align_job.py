#!/usr/bin/env python
"""Throughput and memory of the align job against a plain sequential loop.

    python benchmarks/bench_align_job.py --photos 248 --json runs/bench_align_job.json

Builds a source tree of ``--photos`` copies of the deepface verification photos (one
sub-folder per 20 photos) in a temporary folder, then, each in a fresh child process:

* ``loop``: for each photo, read and decode it, detect (one photo per detector call), pick the
  largest face, ``norm_crop`` it, encode and write it. Variants (``--loops``): ``plain`` uses
  the library's defaults (torch's thread count, ``Detector``'s own input size: the original
  photo); ``matched`` detects at the job's input size (``AlignConfig().resize``, long side capped
  at 1024), so that only the execution differs; ``matched-1thread`` also uses one torch thread;
* ``job``: ``run_align_job`` with a local Ray started by the job, default plan (flags override),
  at ``--photos`` and at half as many, to show that memory does not grow with the photo count.

The job and the loops share the alignment settings (``AlignConfig()``: score >= 0.5, largest face,
112x112 ArcFace crop, JPEG q95); the job detects at ``AlignConfig().resize`` (long side capped at
1024 px). Memory is the peak of the summed proportional set size (PSS: shared pages such as
Ray's object store counted once) of the child and all its descendants (Ray's GCS, raylet and
workers), read from /proc (Linux) every 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

PHOTOS_PER_IDENTITY = 20


def build_source(root: Path, count: int) -> list[Path]:
    """``count`` copies of the deepface photos (cycled) under ``root/idXXX/``."""
    photos = sorted(p for p in asset("verification/deepface").iterdir() if p.suffix == ".jpg")
    out = []
    for i in range(count):
        p = photos[i % len(photos)]
        dst = root / f"id{i // PHOTOS_PER_IDENTITY:03d}" / f"{i:05d}_{p.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        out.append(dst)
    return out


# ------------------------------------------------------------------------------- child modes


LOOPS = {
    # name: (torch threads, 0 = torch's default; detector resize, None = the Detector's default)
    "plain": (0, None),
    "matched": (0, "job"),
    "matched-1thread": (1, "job"),
}


def run_loop(src: Path, dst: Path, weights: str, variant: str) -> dict:
    """Read, detect one photo, pick the largest face >= 0.5, norm_crop, encode, write."""
    import cv2
    import torch

    from detector.inference import Detector
    from pipeline.align import norm_crop
    from pipeline.images import read_image
    from pipeline.select import select_faces
    from pipeline.stage import AlignConfig

    threads, resize = LOOPS[variant]
    if threads:
        torch.set_num_threads(threads)
    cfg = AlignConfig()
    detector = Detector.from_weights(weights)
    resize = cfg.resize if resize == "job" else None  # None: the detector's own default
    photos = sorted(p for p in src.rglob("*.jpg"))
    faces = 0
    t0 = time.perf_counter()
    for path in photos:
        img = read_image(path)
        det = detector.detect([img], resize=resize, conf_threshold=cfg.min_score)[0].numpy()
        keep = select_faces(det.boxes, det.scores, image_shape=img.shape, mode=cfg.select,
                            min_score=cfg.min_score)
        if len(keep):
            crop = norm_crop(img, det.landmarks[keep[0]], cfg.image_size)
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
            faces += 1
    elapsed = time.perf_counter() - t0
    return {"variant": variant, "photos": len(photos), "faces": faces, "seconds": round(elapsed, 3),
            "photos_per_s": round(len(photos) / elapsed, 3), "torch_threads": torch.get_num_threads(),
            "detector_resize": _policy(detector.resize if resize is None else resize)}


def _policy(policy) -> str:
    return policy.mode if policy.size is None else f"{policy.mode}:{policy.size}"


def run_job(src: Path, dst: Path, weights: str, num_workers: int | None, batch_size: int | None,
            torch_threads: int | None, decode: str) -> dict:
    from pipeline.job import AlignJobConfig, run_align_job

    t0 = time.perf_counter()
    summary = run_align_job(AlignJobConfig(src=src, dst=dst, weights=weights, num_workers=num_workers,
                                           batch_size=batch_size, torch_threads=torch_threads,
                                           decode=decode, progress=False))
    return {"photos": summary.processed, "faces": summary.crops_written,
            "seconds_processing": summary.process_s, "seconds_end_to_end": round(time.perf_counter() - t0, 3),
            "photos_per_s": summary.photos_per_s, "warmup_s": summary.warmup_s,
            "steady_photos_per_s": summary.steady_photos_per_s,
            "photos_per_s_end_to_end": round(summary.processed / (time.perf_counter() - t0), 3),
            "counts": summary.counts, "plan": summary.plan}


# ------------------------------------------------------------------------------- parent


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


def _tree_pss(pid: int) -> int:
    """Summed PSS (bytes) of ``pid`` and its descendants, from /proc (Linux)."""
    children = _children_map()
    stack, total = [pid], 0
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, ()))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def measure(cmd: list[str]) -> tuple[dict, dict]:
    """Run a child mode; returns (its JSON result, memory stats)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def sample() -> None:
        while proc.poll() is None:
            samples.append((time.perf_counter() - t0, _tree_pss(proc.pid)))
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2]} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    values = [v for _, v in samples] or [0]
    half = len(values) // 2
    memory = {
        "peak_pss_mb": round(max(values) / 2**20, 1),
        "peak_pss_first_half_mb": round(max(values[:half] or [0]) / 2**20, 1),
        "peak_pss_second_half_mb": round(max(values[half:]) / 2**20, 1),
        "samples": len(values),
    }
    return result, memory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "loop", "job"), help=argparse.SUPPRESS)
    p.add_argument("--photos", type=int, default=248, help="photos in the source tree (default 248)")
    p.add_argument("--weights", default=None, help="RetinaFace weights (default: the shared MobileNet file)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--decode", choices=("auto", "tasks", "actors"), default="auto")
    p.add_argument("--skip-loop", action="store_true")
    p.add_argument("--loops", nargs="*", choices=sorted(LOOPS), default=["plain", "matched"],
                   help="loop variants to run (default: plain matched)")
    p.add_argument("--no-half", action="store_true", help="skip the half-size job run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    weights = args.weights or str(asset(MOBILENET_WEIGHTS))

    if args.mode == "loop":
        print(json.dumps(run_loop(args.src, args.dst, weights, args.loops[0])))
        return 0
    if args.mode == "job":
        print(json.dumps(run_job(args.src, args.dst, weights, args.num_workers, args.batch_size,
                                 args.torch_threads, args.decode)))
        return 0

    results: dict = {"photos": args.photos, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_align_job_") as tmp:
        tmp = Path(tmp)
        build_source(tmp / "raw", args.photos)
        build_source(tmp / "raw_half", args.photos // 2)
        base = [sys.executable, str(Path(__file__).resolve())]
        extra = [f"--weights={weights}", f"--decode={args.decode}"]
        for flag in ("num_workers", "batch_size", "torch_threads"):
            if getattr(args, flag) is not None:
                extra.append(f"--{flag.replace('_', '-')}={getattr(args, flag)}")
        for variant in [] if args.skip_loop else args.loops:
            loop, mem = measure([*base, "loop", "--src", str(tmp / "raw"), "--dst", str(tmp / f"out_{variant}"),
                                 "--loops", variant, *extra])
            results.setdefault("loops", []).append({**loop, **mem})
            print(f"loop {variant} ({loop['torch_threads']} torch threads, detector resize "
                  f"{loop['detector_resize']}): {loop['photos_per_s']:.2f} photos/s, peak {mem['peak_pss_mb']} MB",
                  flush=True)
        job, mem = measure([*base, "job", "--src", str(tmp / "raw"), "--dst", str(tmp / "out_job"), *extra])
        results["job"] = {**job, **mem}
        print(f"job: {job['photos_per_s']:.2f} photos/s ({job['photos_per_s_end_to_end']:.2f} with Ray start, "
              f"{job['steady_photos_per_s']:.2f} after a {job['warmup_s']:.1f} s warm-up), "
              f"peak {mem['peak_pss_mb']} MB; {job['plan']}", flush=True)
        if not args.no_half:
            half, mem = measure([*base, "job", "--src", str(tmp / "raw_half"), "--dst", str(tmp / "out_half"), *extra])
            results["job_half"] = {**half, **mem}
            print(f"job on {half['photos']} photos: {half['photos_per_s']:.2f} photos/s, peak {mem['peak_pss_mb']} MB",
                  flush=True)
    for loop in results.get("loops", []):
        loop["job_speedup"] = round(results["job"]["photos_per_s"] / loop["photos_per_s"], 3)
        loop["job_speedup_end_to_end"] = round(results["job"]["photos_per_s_end_to_end"] / loop["photos_per_s"], 3)
        loop["job_speedup_steady"] = round(results["job"]["steady_photos_per_s"] / loop["photos_per_s"], 3)
        print(f"job vs loop {loop['variant']}: {loop['job_speedup']:.2f}x "
              f"({loop['job_speedup_end_to_end']:.2f}x counting Ray's start, "
              f"{loop['job_speedup_steady']:.2f}x after the job's warm-up)")
    results["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
