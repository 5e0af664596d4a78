#!/usr/bin/env python
"""Throughput and memory of the align job against plain sequential loops, insightface's among them.

    python benchmarks/bench_align_job.py [--photos 2000] [--rounds 1] [--json runs/bench_align_job.json]

Builds a source tree of ``--photos`` copies of the 62 deepface verification photos (cycled, one
sub-folder per 20 photos) in a temporary folder, then runs, each in a fresh child process:

* loops, on the first ``--loop-photos`` photos (whole cycles of the 62, so their photos/s is a
  rate over the same mix of photos as the job's), one photo at a time. A loop's clock starts after
  its imports and its model load; its whole-process rate (interpreter start to exit) is reported
  too. Variants (``--loops``; default ``insightface matched``):

  ``insightface``
      the plain insightface recipe: ``cv2.imread``, SCRFD-500M
      (``peers/scrfd_500m_bnkps.onnx``) through ``insightface.model_zoo.scrfd.SCRFD`` on
      onnxruntime with its default threads, ``prepare(ctx_id=-1, input_size=(640, 640))``,
      ``detect(img, input_size=(640, 640))``, the largest face (box area) with score >= 0.5,
      ``insightface.utils.face_align.norm_crop(img, kps)`` (112x112), ``cv2.imwrite`` (jpg, quality 95).
  ``matched``
      our detector with the job's settings (the same :class:`DetectorSpec`: ``--weights``,
      ``--runtime``, ``--precision``, and ``--detect-resize``, the job's ``AlignConfig.resize``,
      default ``cap:1024``) and the runtime's default threads, then our selection (largest face >=
      0.5), ``norm_crop`` and JPEG encode + write, so that only the execution differs;
  ``matched-1thread``
      the same on one thread;
  ``plain``
      our eager torch detector at its own default resize (the original photo, as the reference
      detect.py does), on ``--plain-photos`` photos only, because it is ~10x slower;

* the job: ``run_align_job(AlignJobConfig(detector=DetectorSpec(weights, runtime, precision),
  align=AlignConfig(resize=--detect-resize), ...))`` with a local Ray started by the job and its
  default plan (flags override), on all ``--photos``. Its ``photos_per_s`` runs from the dataset's
  start (Ray already up) to the last manifest record, so it includes starting the actors and
  loading the model; ``photos_per_s_end_to_end`` runs from the ``run_align_job`` call to its
  return (Ray's start included); ``photos_per_s_wall`` is the whole child process, as for the loops;
* with ``--rounds N`` the loops (but ``plain``) and the job run N times, interleaved (the machine's
  speed drifts), and the medians are reported;
* the job once more on half as many photos, to show that memory does not grow with their number
  (``--no-half`` skips it).

Targets printed: the job >= 2x the insightface loop, judged on the job's end-to-end rate (Ray's
start included) against the loop's rate after its model load; and, as before, >= 1.5x the
settings-matched loops (processing rate). ``summary.photos_per_s`` in the JSON holds every rate.

Memory is the peak summed proportional set size (PSS: pages shared between processes, such as
Ray's object store and the torch libraries, counted once) of the child and all its descendants
(Ray's GCS, raylet and workers), read from /proc (Linux) every ``--sample-s`` seconds. One sample
of a Ray process tree costs ~0.13 s of CPU; sampling every 0.25 s took a sixth of this 2-core
machine from the job, hence the 5 s default. Growth is judged within the full-size run after its warm-up
(peak of the first half against the second half: a trend, not the luck of which sample lands on a
12-megapixel photo in flight) and between the half-size and the full-size runs.
"""

from __future__ import annotations

import argparse
import json
import os
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

from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

PHOTOS_PER_IDENTITY = 20
TARGET_SPEEDUP = 1.5  # job / settings-matched loop (processing rate)
TARGET_VS_INSIGHTFACE = 2.0  # job (end to end, Ray's start included) / insightface loop
SCRFD_FILE = "weights/peers/scrfd_500m_bnkps.onnx"
DEFAULT_LOOPS = ["insightface", "matched"]


def source_photos() -> list[Path]:
    return sorted(p for p in asset("verification/deepface").iterdir() if p.suffix == ".jpg")


def build_source(root: Path, count: int) -> list[Path]:
    """``count`` copies of the deepface photos (cycled) under ``root/idXXX/``; sorted paths are in
    cycle order, so the first ``k * 62`` photos are ``k`` whole cycles."""
    photos = source_photos()
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
    # name: (threads, 0 = the runtime's default; detector resize: "job" = --detect-resize, None = the
    # eager torch Detector's own default; runtime: "job" = --runtime/--precision, else that runtime)
    "insightface": (0, "640x640", "insightface"),
    "matched": (0, "job", "job"),
    "matched-1thread": (1, "job", "job"),
    "plain": (0, None, "torch"),
}


def _photos(src: Path, limit: int | None) -> list[Path]:
    return sorted(p for p in src.rglob("*.jpg"))[:limit]


def run_insightface_loop(src: Path, dst: Path, limit: int | None) -> dict:
    """insightface's recipe: imread, SCRFD-500M at 640x640, largest face >= 0.5, norm_crop, imwrite."""
    import cv2
    import numpy as np
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils.face_align import norm_crop

    model = SCRFD(model_file=str(asset(SCRFD_FILE)))
    model.prepare(ctx_id=-1, input_size=(640, 640))
    photos = _photos(src, limit)
    faces = unreadable = 0
    t0 = time.perf_counter()
    for path in photos:
        img = cv2.imread(str(path))
        if img is None:
            unreadable += 1
            continue
        det, kpss = model.detect(img, input_size=(640, 640))
        ok = np.flatnonzero(det[:, 4] >= 0.5)
        if len(ok):
            area = (det[ok, 2] - det[ok, 0]) * (det[ok, 3] - det[ok, 1])
            crop = norm_crop(img, kpss[ok[int(np.argmax(area))]])
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), crop)
            faces += 1
    elapsed = time.perf_counter() - t0
    threads = model.session.get_session_options().intra_op_num_threads
    return {"variant": "insightface", "photos": len(photos), "faces": faces, "unreadable": unreadable,
            "seconds_processing": round(elapsed, 3), "photos_per_s": round(len(photos) / elapsed, 3),
            "threads": threads or "default", "providers": model.session.get_providers(),
            "detector": "insightface SCRFD-500M, onnxruntime", "detector_resize": "640x640 (letterbox)"}


def run_loop(src: Path, dst: Path, weights: str, variant: str, limit: int | None, runtime: str, precision: str,
             detect_resize: str) -> dict:
    """Read, detect one photo, pick the largest face >= 0.5, norm_crop, encode, write."""
    if variant == "insightface":
        return run_insightface_loop(src, dst, limit)
    import cv2
    import torch

    from detector.spec import DetectorSpec
    from pipeline.align import norm_crop
    from pipeline.config import AlignConfig
    from pipeline.images import read_image
    from pipeline.select import select_faces

    threads, resize, loop_runtime = LOOPS[variant]
    cfg = AlignConfig(resize=detect_resize)
    if loop_runtime == "job":
        spec = DetectorSpec(weights=weights, runtime=runtime, precision=precision, threads=threads or None,
                            resize=cfg.resize)
    else:  # plain: the eager torch detector at its own default size
        spec = DetectorSpec(weights=weights, runtime=loop_runtime, threads=threads or None)
    spec = spec.resolved()
    detector = spec.build()
    photos = _photos(src, limit)
    faces = 0
    t0 = time.perf_counter()
    for path in photos:
        img = read_image(path)
        det = detector.detect([img], conf_threshold=cfg.min_score)[0].numpy()
        keep = select_faces(det.boxes, det.scores, image_shape=img.shape, mode=cfg.select,
                            min_score=cfg.min_score)
        if len(keep):
            crop = norm_crop(img, det.landmarks[keep[0]], cfg.image_size)
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
            faces += 1
    elapsed = time.perf_counter() - t0
    return {"variant": variant, "photos": len(photos), "faces": faces, "seconds_processing": round(elapsed, 3),
            "photos_per_s": round(len(photos) / elapsed, 3), "threads": spec.threads or "default",
            "torch_threads": torch.get_num_threads(), "detector": spec.describe(),
            "detector_resize": detector.resize.to_string()}


def run_job(src: Path, dst: Path, weights: str, runtime: str, precision: str, detect_resize: str,
            num_workers: int | None, batch_size: int | None, threads: int | None, decode: str,
            recognizer: str | None = None) -> dict:
    from detector.spec import DetectorSpec
    from pipeline.job import AlignJobConfig, run_align_job
    from pipeline.job.config import job_align_defaults
    from pipeline.verification.recognizer import IMAGENET_MEAN, IMAGENET_STD, OnnxRecognizerConfig, Preprocess

    # --recognizer: the identity pass with --select identity (MobileFaceNet's normalisation)
    rec = None if recognizer is None else OnnxRecognizerConfig(
        model=recognizer, preprocess=Preprocess(rgb=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    align = job_align_defaults(resize=detect_resize, **({"select": "identity"} if rec is not None else {}))
    config = AlignJobConfig(src=src, dst=dst, align=align,
                            detector=DetectorSpec(weights=weights, runtime=runtime, precision=precision),
                            num_workers=num_workers, batch_size=batch_size, threads=threads, decode=decode,
                            recognizer=rec, progress=False)
    t0 = time.perf_counter()
    summary = run_align_job(config)
    end_to_end = time.perf_counter() - t0
    return {"photos": summary.processed, "faces": summary.crops_written,
            "seconds_processing": summary.process_s, "seconds_end_to_end": round(end_to_end, 3),
            "photos_per_s": summary.photos_per_s, "warmup_s": summary.warmup_s,
            "steady_photos_per_s": summary.steady_photos_per_s,
            "photos_per_s_end_to_end": round(summary.processed / end_to_end, 3),
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


def measure(cmd: list[str], sample_s: float) -> tuple[dict, dict]:
    """Run a child mode; returns (its JSON result, memory stats)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while proc.poll() is None and not stop.is_set():
            samples.append((time.perf_counter() - t0, _tree_pss(proc.pid)))
            stop.wait(sample_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    mb = [(round(t, 1), round(v / 2**20, 1)) for t, v in samples] or [(0.0, 0.0)]
    return result, {"peak_pss_mb": max(v for _, v in mb), "samples": len(samples),
                    "seconds": round(time.perf_counter() - t0, 3), "pss_mb_trace": mb}


def steady_halves(res: dict) -> tuple[float, float]:
    """Peak PSS in the first and second half of a job run after its warm-up (when the first
    records arrive, every process is up and has met its first photos)."""
    start = res["seconds"] - res["seconds_processing"] + res["warmup_s"]  # processing ends as the child does
    trace = [(t, v) for t, v in res["pss_mb_trace"] if t >= start]
    if len(trace) < 2:
        return 0.0, 0.0
    middle = (start + res["seconds"]) / 2
    first = [v for t, v in trace if t < middle] or [0.0]
    second = [v for t, v in trace if t >= middle] or [0.0]
    return max(first), max(second)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "loop", "job"), help=argparse.SUPPRESS)
    p.add_argument("--photos", type=int, default=2000, help="photos in the job's source tree")
    p.add_argument("--loop-photos", type=int, default=496,
                   help="photos the insightface and matched loops process (8 cycles)")
    p.add_argument("--plain-photos", type=int, default=124, help="photos the plain loop processes (2 cycles)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the loops (but plain) and the job")
    p.add_argument("--loops", nargs="*", choices=sorted(LOOPS), default=list(DEFAULT_LOOPS),
                   help="loop variants (none: the job alone)")
    p.add_argument("--weights", default=None, help="RetinaFace weights (default: the shared MobileNet file)")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="job and matched loops: detector runtime (auto: the job's default choice)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="job and matched loops: detector precision (bf16: openvino)")
    p.add_argument("--detect-resize", default=None, metavar="POLICY",
                   help="job and matched loops: detector input size (default: the job's, long:640)")
    p.add_argument("--num-workers", type=int, help="job: detector actors (default: the job's plan)")
    p.add_argument("--batch-size", type=int, help="job: largest chunk (default: the job's plan)")
    p.add_argument("--threads", "--torch-threads", dest="threads", type=int,
                   help="job: intra-op threads per actor (default: the job's plan)")
    p.add_argument("--decode", choices=("auto", "tasks", "actors"), default="auto", help="job: where to decode")
    p.add_argument("--recognizer", help="job: also run the identity pass with this ArcFace ONNX (MobileFaceNet "
                                        "normalisation) and --select identity")
    p.add_argument("--no-half", action="store_true", help="skip the half-size job run (memory check)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    weights = args.weights or str(asset(MOBILENET_WEIGHTS))
    if args.detect_resize is None:
        from pipeline.job.config import JOB_RESIZE

        args.detect_resize = JOB_RESIZE

    if args.mode == "loop":
        print(json.dumps(run_loop(args.src, args.dst, weights, args.loops[0], args.limit, args.runtime,
                                  args.precision, args.detect_resize)))
        return 0
    if args.mode == "job":
        print(json.dumps(run_job(args.src, args.dst, weights, args.runtime, args.precision, args.detect_resize,
                                 args.num_workers, args.batch_size, args.threads, args.decode, args.recognizer)))
        return 0

    cycle = len(source_photos())
    results: dict = {"photos": args.photos, "cpus": os.cpu_count(), "rounds": args.rounds,
                     "settings": {"runtime": args.runtime, "precision": args.precision,
                                  "detect_resize": args.detect_resize, "weights": Path(weights).name,
                                  "num_workers": args.num_workers, "batch_size": args.batch_size,
                                  "threads": args.threads, "decode": args.decode, "recognizer": args.recognizer},
                     "load_avg_start": os.getloadavg(), "loops": {}, "jobs": []}
    with tempfile.TemporaryDirectory(prefix="bench_align_job_") as tmp:
        tmp = Path(tmp)
        build_source(tmp / "raw", args.photos)
        if not args.no_half:
            build_source(tmp / "raw_half", args.photos // 2)
        base = [sys.executable, str(Path(__file__).resolve())]
        extra = [f"--weights={weights}", f"--decode={args.decode}", f"--runtime={args.runtime}",
                 f"--precision={args.precision}", f"--detect-resize={args.detect_resize}"]
        for flag in ("num_workers", "batch_size", "threads", "recognizer"):
            if getattr(args, flag) is not None:
                extra.append(f"--{flag.replace('_', '-')}={getattr(args, flag)}")

        def loop(variant: str) -> None:
            limit = args.plain_photos if variant == "plain" else args.loop_photos
            shutil.rmtree(tmp / f"out_{variant}", ignore_errors=True)
            res, mem = measure([*base, "loop", "--src", str(tmp / "raw"), "--dst", str(tmp / f"out_{variant}"),
                                "--loops", variant, f"--limit={limit}", *extra], args.sample_s)
            res = {**res, **mem}  # mem["seconds"]: the whole child process
            res["photos_per_s_wall"] = round(res["photos"] / mem["seconds"], 3)
            results["loops"].setdefault(variant, []).append(res)
            print(f"loop {variant} ({res['photos']} photos, {res['detector']}, threads {res['threads']}, detector "
                  f"resize {res['detector_resize']}): {res['photos_per_s']:.2f} photos/s after its model load "
                  f"({res['photos_per_s_wall']:.2f} for the whole process), {res['faces']} crops, "
                  f"peak {mem['peak_pss_mb']} MB", flush=True)
            if limit % cycle:
                print(f"  note: {limit} is not a multiple of {cycle}: a different mix of photos than the job's",
                      flush=True)

        def job(src: Path, key: str) -> dict:
            shutil.rmtree(tmp / "out_job", ignore_errors=True)
            res, mem = measure([*base, "job", "--src", str(src), "--dst", str(tmp / "out_job"), *extra], args.sample_s)
            res = {**res, **mem}
            res["photos_per_s_wall"] = round(res["photos"] / mem["seconds"], 3)
            res["peak_pss_first_half_mb"], res["peak_pss_second_half_mb"] = steady_halves(res)
            print(f"{key} on {res['photos']} photos: {res['photos_per_s']:.2f} photos/s "
                  f"({res['photos_per_s_end_to_end']:.2f} counting Ray's start, {res['photos_per_s_wall']:.2f} for "
                  f"the whole process; {res['steady_photos_per_s']:.2f} after a {res['warmup_s']:.1f} s warm-up), "
                  f"{res['faces']} crops, peak {mem['peak_pss_mb']} MB; {res['plan']}", flush=True)
            return res

        for _ in range(args.rounds):
            for variant in [v for v in args.loops if v != "plain"]:
                loop(variant)
            results["jobs"].append(job(tmp / "raw", "job"))
        if "plain" in args.loops:
            loop("plain")
        if not args.no_half:
            results["job_half"] = job(tmp / "raw_half", "job (memory check)")

    median = statistics.median
    job_rate = median(j["photos_per_s"] for j in results["jobs"])
    job_e2e = median(j["photos_per_s_end_to_end"] for j in results["jobs"])
    job_steady = median(j["steady_photos_per_s"] for j in results["jobs"])
    job_wall = median(j["photos_per_s_wall"] for j in results["jobs"])
    rates = {"job": job_rate, "job_end_to_end": job_e2e, "job_steady": job_steady, "job_wall": job_wall}
    summary = {"photos_per_s": rates, "job_photos_per_s": job_rate, "job_photos_per_s_end_to_end": job_e2e,
               "job_steady_photos_per_s": job_steady, "job_photos_per_s_wall": job_wall, "speedup": {}}
    print(f"\njob on {args.photos} photos (median of {len(results['jobs'])}): {job_rate:.2f} photos/s, "
          f"{job_e2e:.2f} counting Ray's start, {job_wall:.2f} for the whole process, {job_steady:.2f} after "
          f"its warm-up")
    for variant, runs in results["loops"].items():
        rate = median(r["photos_per_s"] for r in runs)
        wall = median(r["photos_per_s_wall"] for r in runs)
        rates[f"{variant}_loop"] = rate
        rates[f"{variant}_loop_wall"] = wall
        speedup = {"processing": round(job_rate / rate, 3), "end_to_end": round(job_e2e / rate, 3),
                   "steady": round(job_steady / rate, 3), "wall": round(job_wall / wall, 3)}
        summary["speedup"][variant] = {"loop_photos_per_s": rate, "loop_photos_per_s_wall": wall, **speedup}
        print(f"job vs loop {variant} ({rate:.2f} photos/s; {wall:.2f} whole process): {speedup['processing']:.2f}x "
              f"({speedup['end_to_end']:.2f}x counting Ray's start, {speedup['steady']:.2f}x after the warm-up, "
              f"{speedup['wall']:.2f}x whole process against whole process)")
    if "insightface" in summary["speedup"]:
        s = summary["speedup"]["insightface"]
        met = s["end_to_end"] >= TARGET_VS_INSIGHTFACE
        summary["target_vs_insightface"] = {"target": TARGET_VS_INSIGHTFACE, "ratio_end_to_end": s["end_to_end"],
                                            "ratio_processing": s["processing"], "ratio_wall": s["wall"], "met": met}
        print(f"target job >= {TARGET_VS_INSIGHTFACE}x the insightface loop: {'met' if met else 'NOT met'} "
              f"({s['end_to_end']:.2f}x: the job's end-to-end rate, Ray's start included, against the loop's rate "
              f"after its model load; {s['processing']:.2f}x on the job's processing rate, {s['wall']:.2f}x whole "
              f"process against whole process)")
    matched = [summary["speedup"][v]["processing"] for v in ("matched", "matched-1thread") if v in summary["speedup"]]
    if matched:
        worst = min(matched)
        verdict = "met" if worst >= TARGET_SPEEDUP else "NOT met"
        summary["target_vs_matched"] = {"target": TARGET_SPEEDUP, "ratio_processing": worst,
                                        "met": worst >= TARGET_SPEEDUP}
        print(f"target >= {TARGET_SPEEDUP}x the settings-matched loop: {verdict} "
              f"({worst:.2f}x against the faster matched loop)")
    first = median(j["peak_pss_first_half_mb"] for j in results["jobs"])
    second = median(j["peak_pss_second_half_mb"] for j in results["jobs"])
    full = median(j["peak_pss_mb"] for j in results["jobs"])
    summary["memory_mb"] = {"full": full, "first_half_of_run": first, "second_half_of_run": second}
    line = (f"peak memory on {args.photos} photos: {full:.0f} MB; after the warm-up, first half of the run "
            f"{first:.0f} MB, second half {second:.0f} MB")
    if "job_half" in results:
        half = results["job_half"]["peak_pss_mb"]
        summary["memory_mb"]["half_size_run"] = half
        line += f"; {half:.0f} MB on {args.photos // 2} photos"
    if not first:  # no samples after the warm-up (a short run): nothing to judge
        print(f"{line} (too few samples after the warm-up to judge growth)")
    else:
        print(f"{line} ({'GROWS' if second > 1.05 * first else 'no growth'} with the photos processed)")
    for variant, runs in results["loops"].items():
        summary["memory_mb"][f"{variant}_loop"] = median(r["peak_pss_mb"] for r in runs)
    results["summary"] = summary
    results["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
