"""``jobs/train_detector.py``: DDP over two CPU workers through Ray Train, then the detector CLI
loads the checkpoint it wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from detector.weights import read_checkpoint
from tests.shared import REPO_ROOT, asset


def load_job():
    spec = importlib.util.spec_from_file_location("train_detector_job", REPO_ROOT / "jobs" / "train_detector.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_two_worker_ddp_run_writes_a_checkpoint_the_cli_loads(ray_session, tmp_path: Path):
    job = load_job()
    out = tmp_path / "run"
    summary = job.main([
        "--labels", str(asset("widerface_mini/train/label.txt")),
        "--preset", "reference",
        "--init-backbone", str(asset("weights/mobilenetV1X0.25_imagenet_pretrain.tar")),
        "--max-steps", "3", "--batch-size", "1", "--image-size", "128",
        "--num-workers", "2", "--loader-workers", "0", "--log-every", "1", "--checkpoint-every", "2",
        "--out", str(out), "--no-progress",
    ])
    assert summary["num_workers"] == 2 and summary["last_log"]["step"] == 3
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt", "step_0000002.pt"]
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs] == [1, 2, 3]
    assert all(log["images_per_second"] > 0 for log in logs)
    _, _, extra = read_checkpoint(out / "last.pt")
    training = extra["training"]
    assert training["world_size"] == 2 and training["step"] == 3 and len(training["rng_state"]) == 2
    # 6 images over 2 ranks x batch 1: 3 steps per epoch
    assert training["steps_per_epoch"] == 3

    detections = tmp_path / "detections"
    completed = subprocess.run(
        [sys.executable, "-m", "detector", "detect", str(asset("images/group_insightface_t1.jpg")),
         "--weights", str(out / "last.pt"), "--out", str(detections)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads((detections / "group_insightface_t1.json").read_text())
    assert result["width"] == 1280 and isinstance(result["faces"], list)
