#!/usr/bin/env python
"""Which detection sizes: landmark agreement with a full-resolution fp32 detection, per setting.

    python benchmarks/study_detection_sizes.py [--lfw-every 20] [--wider DIR --wider-every 16] [--json F]

The reference is the detector at each photo's original size in fp32 (OpenVINO fp32, which the
parity tests hold equal to the eager torch path within 1e-3 px), no refinement, no retry, and no
voting unless ``--reference-vote`` (the aligner's default ``vote_iou`` moves landmarks ~1 % of the box
from the plain NMS survivor: docs/widerface.md). Each
setting runs :class:`pipeline.stage.FaceAligner` the way the align job does (encoded photos, JPEG
drafts, OpenVINO bf16 unless ``--precision``), and is compared face by face:

* single-face sets (deepface, LFW, the golden photos) with the job's choice (central face, score
  >= 0.8): the selected face of the reference is found when the setting selected a face with box
  IoU >= 0.7; its error is the mean of the five landmark distances in % of the reference box width;
* WIDER FACE val photos (``--wider``: the images folder of the full validation set, every Nth
  photo; faces >= 64 px wide and score >= 0.8 in the reference), with ``select="all"``: every such
  reference face is matched to the setting's faces by IoU >= 0.7.

Prints, per set and setting, the faces found (%), median / p95 / p99 / max error (% of the box
width) and the time per photo; writes the whole table as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.select import box_iou  # noqa: E402
from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

SETTINGS = {
    # name: AlignConfig fields (resize, refine_size, retry_resize, vote_iou; the rest: AlignConfig's defaults)
    "long:640 (before)": dict(resize="long:640", refine_size=None, retry_resize=None, vote_iou=None),
    "defaults": {},
    "defaults without voting": dict(vote_iou=None),
    "cap:640": dict(resize="cap:640", refine_size=None, retry_resize=None),
    "cap:640 + refine 160": dict(resize="cap:640", refine_size=160),
    "cap:640 + refine 224": dict(resize="cap:640", refine_size=224),
    "cap:640 + refine 320": dict(resize="cap:640", refine_size=320),
    "cap:480 + refine 224": dict(resize="cap:480", refine_size=224),
    "cap:480 + refine 160": dict(resize="cap:480", refine_size=160),
    "cap:320 + refine 224": dict(resize="cap:320", refine_size=224),
    "cap:320 + refine 160": dict(resize="cap:320", refine_size=160),
}


def photo_sets(args: argparse.Namespace) -> dict[str, list[Path]]:
    sets = {"deepface": sorted(asset("verification/deepface").glob("*.jpg"))}
    lfw = sorted(asset("verification/lfw/images_deepfunneled").rglob("*.jpg"))
    sets["lfw"] = lfw[:: args.lfw_every]
    sets["golden"] = [asset("images/crowd_biubug6_curve_test.jpg"), asset("images/group_insightface_t1.jpg"),
                      *sorted(asset("widerface/val/images").rglob("*.jpg"))]
    if args.wider is not None:
        sets["wider"] = sorted(Path(args.wider).rglob("*.jpg"))[:: args.wider_every]
    return sets


def faces_of(choice, every: bool, min_width: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, landmarks) of the selected faces, or of every face >= min_width wide with score >= 0.8."""
    if choice.error:
        return []
    idx = range(len(choice.boxes)) if every else choice.selected
    out = []
    for i in idx:
        b = choice.boxes[i]
        if every and (choice.scores[i] < 0.8 or b[2] - b[0] < min_width):
            continue
        out.append((np.asarray(b, np.float64), np.asarray(choice.landmarks[i], np.float64)))
    return out


def compare(ref: list, got: list) -> tuple[int, int, list[float]]:
    found, errors = 0, []
    boxes = np.array([b for b, _ in got]).reshape(-1, 4)
    for box, lm in ref:
        if not len(boxes):
            continue
        ious = box_iou(box, boxes)[0]
        j = int(np.argmax(ious))
        if ious[j] < 0.7:
            continue
        found += 1
        errors.append(float(np.linalg.norm(got[j][1] - lm, axis=1).mean() / (box[2] - box[0]) * 100))
    return len(ref), found, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lfw-every", type=int, default=20, help="every Nth LFW photo (sorted paths)")
    p.add_argument("--wider", type=Path, help="WIDER FACE val images folder (optional)")
    p.add_argument("--wider-every", type=int, default=16, help="every Nth WIDER val photo")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="precision of the settings")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), help="which settings")
    p.add_argument("--reference-vote", type=float, default=None, metavar="IOU",
                   help="the reference's score-weighted voting (AlignConfig.vote_iou; default: none, the plain "
                        "NMS survivor of the full-size detection)")
    p.add_argument("--json", type=Path, help="write the table here")
    args = p.parse_args(argv)

    from detector.spec import DetectorSpec
    from pipeline.config import AlignConfig
    from pipeline.stage import FaceAligner, PhotoInput

    weights = str(asset(MOBILENET_WEIGHTS))
    ref_det = DetectorSpec(weights=weights, runtime="openvino", precision="fp32").build()
    det = DetectorSpec(weights=weights, runtime="openvino", precision=args.precision).build()
    table: dict[str, dict] = {}
    for set_name, files in photo_sets(args).items():
        every = set_name == "wider"
        select = dict(select="all") if every else {}
        data = [PhotoInput(data=f.read_bytes(), source=str(f)) for f in files]
        reference = FaceAligner(detector=ref_det, config=AlignConfig(resize="original", refine_size=None,
                                                                     retry_resize=None, vote_iou=args.reference_vote,
                                                                     **select), draft=False)
        refs = [faces_of(c, every, 64.0) for c in reference.run(data)]
        for name in args.settings:
            aligner = FaceAligner(detector=det, config=AlignConfig(**SETTINGS[name], **select))
            t0 = time.perf_counter()
            choices = [aligner.run([x])[0] for x in data]
            dt = time.perf_counter() - t0
            total, found, errors = 0, 0, []
            for ref, c in zip(refs, choices):
                n, f, e = compare(ref, faces_of(c, every))
                total, found = total + n, found + f
                errors += e
            e = np.array(errors) if errors else np.array([np.nan])
            row = {"photos": len(files), "faces": total, "found_pct": 100.0 * found / max(total, 1),
                   "median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
                   "p99": float(np.percentile(e, 99)), "max": float(e.max()), "ms_per_photo": 1000 * dt / len(files),
                   "refined": int(sum(int(c.refined.sum()) for c in choices if not c.error))}
            table.setdefault(set_name, {})[name] = row
            print(f"{set_name:9s} {name:24s} faces {total:5d} found {row['found_pct']:6.2f}%  "
                  f"median {row['median']:.3f}  p95 {row['p95']:.3f}  p99 {row['p99']:.3f}  max {row['max']:.3f}  "
                  f"refined {row['refined']:4d}  {row['ms_per_photo']:.1f} ms/photo", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
