#!/usr/bin/env python
"""Deepface verification through the align job, per runtime / precision / decode mode.

    python benchmarks/check_job_precision.py [--json runs/check_job_precision.json]

Runs ``run_align_job`` on the 62 deepface photos once per configuration (default: torch fp32 exact,
the reference; OpenVINO fp32; OpenVINO bf16; OpenVINO bf16 with JPEG drafts at ``long:640``),
embeds every crop with the MobileFaceNet ONNX recogniser (RGB, ImageNet mean/std), scores the
300 ``master.csv`` pairs by cosine similarity and prints AUC and TAR@FAR=1% for each, with the
difference to the reference (the bound of issue 15's line 2 is 0.005). A pair whose photo has no
crop scores -1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

CONFIGS = {
    # name: (runtime, precision, resize, exact)
    "torch-fp32-exact": ("torch", "fp32", "cap:1024", True),
    "openvino-fp32": ("openvino", "fp32", "cap:1024", False),
    "openvino-bf16": ("openvino", "bf16", "cap:1024", False),
    "openvino-bf16-long640-drafts": ("openvino", "bf16", "long:640", False),
}


def run(name: str, src: Path, dst: Path) -> dict[str, np.ndarray]:
    """Crops (BGR 112x112) by source file name."""
    from detector.spec import DetectorSpec
    from pipeline.config import AlignConfig
    from pipeline.job import AlignJobConfig, run_align_job
    from pipeline.writers import load_manifest

    runtime, precision, resize, exact = CONFIGS[name]
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime=runtime, precision=precision)
    run_align_job(AlignJobConfig(src=src, dst=dst, align=AlignConfig(resize=resize), detector=spec, exact=exact,
                                 ext="png", progress=False))
    crops = {}
    for rel, record in load_manifest(dst / "manifest.jsonl").items():
        if record["outputs"]:
            crops[Path(rel).name] = cv2.imread(str(dst / record["outputs"][0]))
    return crops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    from pipeline.verification.metrics import VerificationMetrics
    from pipeline.verification.recognizer import IMAGENET_MEAN, IMAGENET_STD, OnnxRecognizerConfig, Preprocess

    deepface = asset("verification/deepface")
    pairs = list(csv.DictReader(open(deepface / "master.csv", newline="")))
    labels = np.array([row["Decision"] == "Yes" for row in pairs])
    recognizer = OnnxRecognizerConfig(model=asset("weights/mobilefacenet_arcface112.onnx"),
                                      preprocess=Preprocess(rgb=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)).build()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="check_job_precision_") as tmp:
        src = Path(tmp) / "raw" / "deepface"
        src.mkdir(parents=True)
        for photo in deepface.glob("*.jpg"):
            (src / photo.name).symlink_to(photo)
        for name in args.configs:
            crops = run(name, src.parent, Path(tmp) / name)
            names = sorted(crops)
            emb = recognizer.embed(np.stack([crops[n] for n in names]))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            index = {n: i for i, n in enumerate(names)}
            scores = np.array([float(emb[index[r["file_x"]]] @ emb[index[r["file_y"]]])
                               if r["file_x"] in index and r["file_y"] in index else -1.0 for r in pairs])
            m = VerificationMetrics.compute(scores, labels, fars=(0.01,))
            results[name] = {"crops": len(crops), "auc": m.auc, "tar_at_far_1e-2": m.tar_at_far[0.01]}
    ref = results.get("torch-fp32-exact")
    print(f"{'configuration':32s} crops      AUC   TAR@1%   dAUC   dTAR")
    for name, r in results.items():
        d_auc = r["auc"] - ref["auc"] if ref else float("nan")
        d_tar = r["tar_at_far_1e-2"] - ref["tar_at_far_1e-2"] if ref else float("nan")
        r.update(d_auc=d_auc, d_tar=d_tar)
        print(f"{name:32s} {r['crops']:5d} {r['auc']:8.4f} {r['tar_at_far_1e-2']:8.4f} {d_auc:+.4f} {d_tar:+.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
