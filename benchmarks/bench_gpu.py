#!/usr/bin/env python
"""One-shot device benchmark: the detector's images/s on an NVIDIA GPU, and the align job's photos/s.

    python benchmarks/bench_gpu.py [--json runs/bench_gpu.json]      # on a machine with a GPU (< 8 minutes)
    python benchmarks/bench_gpu.py --dry-run                         # the same steps on the CPU, tiny counts

Needs only what ``scripts/setup.sh`` installs, and ``../shared`` (the MobileNet-0.25 weights and
real photos). Prints one JSON object on stdout:

* ``environment``: torch and its CUDA, the GPU (``nvidia-smi``), onnxruntime's providers, TensorRT.
* ``detector``: images/s of :meth:`FaceDetector.detect` at batch 1, 16 and 64 on same-size VGA
  (640x480) photos (a real group photo, resized), for each backend that runs here: ``torch-fp16``
  (eager torch, CUDA), ``onnxruntime-cuda`` (fp32, the CUDA provider; with TensorRT installed
  onnxruntime puts it first, and the providers the session got are listed), ``tensorrt-fp16``
  (onnxruntime's TensorRT provider in fp16, where TensorRT is installed). ``network_images_per_s``
  (torch only) times the network alone on a batch already on the GPU: the gap to the
  ``detect`` rate is the host-side pre- and post-processing; ``input_path`` names the torch
  detector's input path and ``padded_images_per_s`` / ``shape_batches_images_per_s`` time the
  other one (:class:`detector.inference.Detector`'s ``group_shapes``). Backends that cannot run say why
  (the align job's GPU check, :func:`detector.probe.check_device`).
* ``job``: the align job (Ray, one GPU, its default GPU plan) on ``--photos`` photos (2,000
  copies of the real deepface photos, cycled): photos/s, the plan, and the GPU utilisation sampled
  with ``nvidia-smi`` every 0.5 s while it runs (mean, median and max %), with a verdict on what
  limits it (``gpu`` when busy most of the time, else the CPU side: decoding, alignment, Ray).
  Skipped, with the reason, when Ray is not installed.
* the target of issue 22: >= 5,000 VGA images/s at batch 64 in fp16 (``targets``).

``--dry-run`` runs every step on the CPU (torch fp32, onnxruntime CPU; the job with ``--device
cpu``) with tiny counts, so that tests/integration/test_bench_gpu.py keeps the script working where there is
no GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tests.shared import asset  # noqa: E402

VGA = (480, 640)
TARGET_FP16_B64 = 5000.0


def environment() -> dict[str, Any]:
    import importlib.metadata

    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        env["onnxruntime"] = None
    for dist in ("onnxruntime-gpu", "tensorrt", "ray"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    env["nvidia_smi"] = _nvidia_smi(["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return env


def _nvidia_smi(args: list[str]) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def vga_photo() -> np.ndarray:
    image = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    return cv2.resize(image, (VGA[1], VGA[0]), interpolation=cv2.INTER_AREA)


def _rate(detect, images: list[np.ndarray], seconds: float, min_calls: int, sync=None) -> float:
    """Images/s of ``detect(images)`` over at least ``seconds`` and ``min_calls`` calls (after 2 untimed)."""
    for _ in range(2):
        detect(images)
    if sync:
        sync()
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        detect(images)
        calls += 1
    if sync:
        sync()
    return calls * len(images) / (time.perf_counter() - t0)


def bench_detector(*, dry: bool, batches: list[int], seconds: float, weights: str) -> dict[str, Any]:
    from detector.probe import check_device
    from detector.spec import DetectorSpec

    photo = vga_photo()
    device = "cpu" if dry else "cuda"
    backends = {
        "torch-fp16": DetectorSpec(weights=weights, runtime="torch", precision="fp32" if dry else "fp16",
                                   device=device, resize="original"),
        "onnxruntime-cuda": DetectorSpec(weights=weights, runtime="onnxruntime", precision="fp32", device=device,
                                         resize="original"),
    }
    try:
        import onnxruntime as ort

        if "TensorrtExecutionProvider" in ort.get_available_providers() and not dry:
            backends["tensorrt-fp16"] = DetectorSpec(weights=weights, runtime="onnxruntime", precision="fp16",
                                                     device=device, resize="original")
    except ImportError:
        pass
    results: dict[str, Any] = {}
    for name, spec in backends.items():
        entry: dict[str, Any] = {"device": device, "precision": spec.precision}
        results[name] = entry
        try:
            spec = spec.resolved()
            problem = check_device(spec)
            if problem:
                entry["skipped"] = problem
                continue
            detector = spec.build()
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        from detector.probe import session_providers

        entry["providers"] = session_providers(detector)
        sync = None
        if spec.runtime == "torch" and not dry:
            import torch

            sync = torch.cuda.synchronize
        entry["images_per_s"] = {}
        for b in batches:
            try:
                entry["images_per_s"][str(b)] = round(_rate(detector.detect, [photo] * b, seconds,
                                                            1 if dry else 5, sync), 1)
            except Exception as exc:
                entry["images_per_s"][str(b)] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        if spec.runtime == "torch":
            entry["network_images_per_s"] = _network_rate(detector, photo, batches, seconds, sync, dry)
            entry["input_path"] = _PATHS[detector.group_shapes]
            detector.group_shapes = not detector.group_shapes  # the other input path, for comparison
            entry[f"{_PATHS[detector.group_shapes]}_images_per_s"] = {
                str(b): round(_rate(detector.detect, [photo] * b, seconds, 1 if dry else 5, sync), 1) for b in batches}
    return results


_PATHS = {True: "shape_batches", False: "padded"}
"""The torch detector's input paths (:class:`detector.inference.Detector`'s ``group_shapes``): uint8
batches of one shape, one pinned copy, normalised on the device (the CUDA default); or one padded
float batch resized on the host (the CPU default)."""


def _network_rate(detector, photo: np.ndarray, batches: list[int], seconds: float, sync, dry: bool) -> dict[str, Any]:
    """The torch network alone on a preprocessed batch already on the device."""
    rates = {}
    for b in batches:
        batch, _, sizes = detector.preprocess([photo] * b)
        rates[str(b)] = round(_rate(lambda _, batch=batch, sizes=sizes: detector.forward(batch, sizes),
                                    [photo] * b, seconds, 1 if dry else 5, sync), 1)
    return rates


class GpuSampler:
    """``nvidia-smi`` utilisation (%) every ``period_s`` in a thread, while the block runs."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = _nvidia_smi(["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"])
            if out is None:
                return
            try:
                self.samples.append(float(out.splitlines()[0]))
            except (ValueError, IndexError):
                pass
            self._stop.wait(self.period_s)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0, "note": "nvidia-smi not available"}
        return {"samples": len(self.samples), "mean_pct": round(statistics.fmean(self.samples), 1),
                "median_pct": statistics.median(self.samples), "max_pct": max(self.samples)}


def build_tree(root: Path, photos: int) -> Path:
    sources = sorted(p for p in asset("verification/deepface").glob("*.jpg") if p.name != "img47.jpg")
    src = root / "raw"
    for i in range(photos):
        folder = src / f"id{i // 20:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.jpg")
    return src


def bench_job(*, dry: bool, photos: int, weights: str) -> dict[str, Any]:
    if importlib.util.find_spec("ray") is None:
        return {"skipped": "ray is not installed"}
    from detector.spec import DetectorSpec
    from pipeline.job import AlignJobConfig, run_align_job

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        src = build_tree(Path(tmp), photos)
        config = AlignJobConfig(src=src, dst=Path(tmp) / "aligned", device="cpu" if dry else "cuda",
                                detector=DetectorSpec(weights=weights, precision="auto"), progress=False,
                                num_workers=1)
        with GpuSampler() as sampler:
            t0 = time.perf_counter()
            summary = run_align_job(config)
            wall = time.perf_counter() - t0
        result = {"photos": photos, "photos_per_s": summary.photos_per_s, "elapsed_s": round(wall, 1),
                  "steady_photos_per_s": summary.steady_photos_per_s, "counts": dict(summary.counts),
                  "plan": summary.plan, "gpu_utilisation": sampler.summary()}
    util = result["gpu_utilisation"].get("median_pct")
    result["limited_by"] = (None if util is None else "gpu" if util >= 80 else
                            "the CPU side (decoding, alignment, Ray's per-task work): the GPU idles "
                            f"{100 - util:.0f}% of the time")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny counts")
    parser.add_argument("--photos", type=int, help="photos for the job (default 2000; dry run 6)")
    parser.add_argument("--seconds", type=float, help="seconds per detector measurement (default 4; dry run 0)")
    parser.add_argument("--batches", default=None, help="detector batch sizes (default 1,16,64; dry run 1,2)")
    parser.add_argument("--no-job", action="store_true", help="skip the align job")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    dry = args.dry_run
    batches = [int(b) for b in (args.batches or ("1,2" if dry else "1,16,64")).split(",")]
    weights = str(asset("weights/retinaface_mobilenet0.25_biubug6.pth"))
    os.environ.setdefault("FACEPREP_WEIGHTS", str(asset("weights")))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"dry_run": dry, "environment": environment()}
    out["detector"] = bench_detector(dry=dry, batches=batches, seconds=args.seconds if args.seconds is not None
                                     else (0.0 if dry else 4.0), weights=weights)
    out["job"] = {"skipped": "--no-job"} if args.no_job else bench_job(
        dry=dry, photos=args.photos or (6 if dry else 2000), weights=weights)
    fp16 = out["detector"].get("torch-fp16", {}).get("images_per_s", {}).get("64")
    out["targets"] = {"fp16_vga_batch64_images_per_s": {"target": TARGET_FP16_B64, "measured": fp16,
                                                        "met": isinstance(fp16, float) and fp16 >= TARGET_FP16_B64}}
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
