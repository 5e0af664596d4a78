"""benchmarks/bench_gpu.py keeps working where there is no GPU: its dry run takes every step on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_device_benchmark_dry_run_measures_every_step_on_the_cpu():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["dry_run"] is True and result["environment"]["torch"]
    torch_fp16 = result["detector"]["torch-fp16"]
    assert torch_fp16["device"] == "cpu" and set(torch_fp16["images_per_s"]) == {"1", "2"}
    assert all(isinstance(v, float) and v > 0 for v in torch_fp16["images_per_s"].values())
    assert all(v > 0 for v in torch_fp16["network_images_per_s"].values())
    # the CPU's padded path, and the CUDA input path (batches of one shape) run on the CPU
    assert torch_fp16["input_path"] == "padded" and torch_fp16["shape_batches_images_per_s"]["2"] > 0
    ort = result["detector"]["onnxruntime-cuda"]  # on the CPU in the dry run
    assert ort["providers"] == ["CPUExecutionProvider"] and ort["images_per_s"]["2"] > 0
    job = result["job"]
    assert job["counts"]["ok"] + job["counts"]["no_face"] == job["photos"] == 6 and job["photos_per_s"] > 0
    assert job["gpu_utilisation"]["samples"] == 0  # no nvidia-smi here
    assert result["targets"]["fp16_vga_batch64_images_per_s"]["measured"] is None
