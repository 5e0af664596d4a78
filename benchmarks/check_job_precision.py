#!/usr/bin/env python
"""Deepface verification through the align job, per runtime / precision / decode mode.

    python benchmarks/check_job_precision.py [--json runs/check_job_precision.json]

Runs ``run_align_job`` on the 62 deepface photos once per configuration (default: torch fp32 exact,
the reference; OpenVINO fp32; OpenVINO bf16; OpenVINO bf16 with JPEG drafts, the job's defaults; all at ``long:640``),
embeds every crop with the MobileFaceNet ONNX recogniser (RGB, ImageNet mean/std), scores the
300 ``master.csv`` pairs by cosine similarity and prints AUC and TAR@FAR=1% for each, with the
difference to the reference (the bound of issue 15's line 2 is 0.005). A pair whose photo has no
crop scores -1. The job's face choice is its default (``job_align_defaults``: central face, score
>= 0.8); only the detector input size differs between configurations.

The manifests are compared with the reference's too: the share of the reference's selected faces
that the configuration selected as well (box IoU >= 0.7), and the landmark error of those (mean of
the five point distances, in % of the reference box width), median and p95 (line 2's bounds:
>= 99.5 %, <= 0.5 %, <= 1.5 %).
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
    "torch-fp32-exact": ("torch", "fp32", "long:640", True),
    "openvino-fp32": ("openvino", "fp32", "long:640", True),
    "openvino-bf16": ("openvino", "bf16", "long:640", True),
    "openvino-bf16-drafts": ("openvino", "bf16", "long:640", False),  # the job's defaults
}


def run(name: str, src: Path, dst: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Crops (BGR 112x112) and the selected face (``[15]``: box, then five landmarks) by file name."""
    from detector.spec import DetectorSpec
    from pipeline.job import AlignJobConfig, run_align_job
    from pipeline.job.config import job_align_defaults
    from pipeline.writers import load_manifest

    runtime, precision, resize, exact = CONFIGS[name]
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime=runtime, precision=precision)
    run_align_job(AlignJobConfig(src=src, dst=dst, align=job_align_defaults(resize=resize), detector=spec,
                                 exact=exact, ext="png", progress=False))
    crops, faces = {}, {}
    for rel, record in load_manifest(dst / "manifest.jsonl").items():
        if record["outputs"]:
            crops[Path(rel).name] = cv2.imread(str(dst / record["outputs"][0]))
            face = record["faces"][record["selected"][0]]
            faces[Path(rel).name] = np.array(face["box"] + sum(face["landmarks"], []), np.float64)
    return crops, faces


def agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Selected faces of ``ref`` found in ``got`` (IoU >= 0.7) and their landmark error (% of box width)."""
    found, errors = 0, []
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            continue
        ix = max(0.0, min(r[2], g[2]) - max(r[0], g[0]))
        iy = max(0.0, min(r[3], g[3]) - max(r[1], g[1]))
        union = (r[2] - r[0]) * (r[3] - r[1]) + (g[2] - g[0]) * (g[3] - g[1]) - ix * iy
        if ix * iy / union < 0.7:
            continue
        found += 1
        dist = np.linalg.norm((g[4:] - r[4:]).reshape(5, 2), axis=1)
        errors.append(100 * dist.mean() / (r[2] - r[0]))
    return {"found_pct": 100.0 * found / max(1, len(ref)),
            "landmark_err_median_pct": float(np.median(errors)) if errors else float("nan"),
            "landmark_err_p95_pct": float(np.percentile(errors, 95)) if errors else float("nan")}


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
    selected: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="check_job_precision_") as tmp:
        src = Path(tmp) / "raw" / "deepface"
        src.mkdir(parents=True)
        for photo in deepface.glob("*.jpg"):
            (src / photo.name).symlink_to(photo)
        for name in args.configs:
            crops, selected[name] = run(name, src.parent, Path(tmp) / name)
            names = sorted(crops)
            emb = recognizer.embed(np.stack([crops[n] for n in names]))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            index = {n: i for i, n in enumerate(names)}
            scores = np.array([float(emb[index[r["file_x"]]] @ emb[index[r["file_y"]]])
                               if r["file_x"] in index and r["file_y"] in index else -1.0 for r in pairs])
            m = VerificationMetrics.compute(scores, labels, fars=(0.01,))
            results[name] = {"crops": len(crops), "auc": m.auc, "tar_at_far_1e-2": m.tar_at_far[0.01]}
    ref = results.get("torch-fp32-exact")
    print(f"{'configuration':32s} crops      AUC   TAR@1%   dAUC   dTAR  found%  lmk med%  lmk p95%")
    for name, r in results.items():
        d_auc = r["auc"] - ref["auc"] if ref else float("nan")
        d_tar = r["tar_at_far_1e-2"] - ref["tar_at_far_1e-2"] if ref else float("nan")
        r.update(d_auc=d_auc, d_tar=d_tar)
        if ref:
            r.update(agreement(selected["torch-fp32-exact"], selected[name]))
        print(f"{name:32s} {r['crops']:5d} {r['auc']:8.4f} {r['tar_at_far_1e-2']:8.4f} {d_auc:+.4f} {d_tar:+.4f}"
              f"  {r.get('found_pct', float('nan')):6.1f}  {r.get('landmark_err_median_pct', float('nan')):8.3f}"
              f"  {r.get('landmark_err_p95_pct', float('nan')):8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
