"""``python -m detector detect IMG [IMG ...] --weights W --out DIR``: detect faces, write JSON (and drawings)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .inference import Detections, Detector, ResizePolicy
from .weights import CheckpointError

__all__ = ["main", "detections_to_json", "draw_detections"]


def detections_to_json(image: str, width: int, height: int, det: Detections) -> dict:
    d = det.numpy()
    return {
        "image": image,
        "width": int(width),
        "height": int(height),
        "faces": [
            {"box": [round(float(v), 4) for v in d.boxes[i]],
             "score": round(float(d.scores[i]), 6),
             "landmarks": [[round(float(x), 4), round(float(y), 4)] for x, y in d.landmarks[i]]}
            for i in range(len(d))
        ],
    }


def draw_detections(image: np.ndarray, det: Detections, *, min_score: float = 0.5) -> np.ndarray:
    """A copy of ``image`` with boxes, scores and the five landmarks drawn (faces >= ``min_score``)."""
    out = image.copy()
    d = det.numpy()
    colours = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]
    thick = max(1, round(max(image.shape[:2]) / 600))
    for box, score, lm in zip(d.boxes, d.scores, d.landmarks):
        if score < min_score:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 200, 0), thick)
        cv2.putText(out, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (255, 255, 255), thick)
        for (x, y), c in zip(lm, colours):
            cv2.circle(out, (int(round(x)), int(round(y))), thick + 1, c, -1)
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector",
        description="RetinaFace face detection (biubug6-compatible weights).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "detect",
        help="detect faces in images and write one JSON per image",
        description="Detect faces and write DIR/<image stem>.json with boxes (x1, y1, x2, y2 in original "
                    "pixels), scores and five landmarks (left eye, right eye, nose, left and right mouth "
                    "corner, image left first), faces sorted by score.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--weights", default=None,
                   help="checkpoint file or known name (mobilenet0.25, resnet50); default: mobilenet0.25, "
                        "found via $FACEPREP_WEIGHTS, the cache, or downloaded")
    p.add_argument("--preset", default=None, help="force an architecture preset (normally inferred)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--conf", type=float, default=0.02, help="keep detections with score above this")
    p.add_argument("--nms", type=float, default=0.4, help="NMS IoU threshold")
    p.add_argument("--top-k", type=int, default=5000, help="best candidates kept before NMS")
    p.add_argument("--keep-top-k", type=int, default=750, help="detections kept after NMS")
    p.add_argument("--long-side", type=int, default=None,
                   help="resize so the long side is N pixels (results are in original pixels); default: "
                        "original size")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--fp16", action="store_true", help="half precision (CUDA only)")
    p.add_argument("--draw", action="store_true", help="also write DIR/<stem>.jpg with the detections drawn")
    p.add_argument("--draw-min-score", type=float, default=0.5, help="faces drawn with --draw")
    return parser


def _detect(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    try:
        detector = Detector.from_weights(
            args.weights, preset=args.preset, device=args.device, fp16=args.fp16,
            resize=ResizePolicy.long_side(args.long_side) if args.long_side else None,
            conf_threshold=args.conf, nms_threshold=args.nms, top_k=args.top_k, keep_top_k=args.keep_top_k,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    paths: list[Path] = list(args.images)
    with tqdm(total=len(paths), unit="img", desc="detect") as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk, images = [], []
            for path in paths[start:start + args.batch_size]:
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if img is None:
                    print(f"error: {path}: not a readable image", file=sys.stderr)
                    failed += 1
                    bar.update(1)
                    continue
                chunk.append(path)
                images.append(img)
            if not images:
                continue
            for path, img, det in zip(chunk, images, detector.detect(images)):
                record = detections_to_json(str(path), img.shape[1], img.shape[0], det)
                _write_atomic(args.out / f"{path.stem}.json", json.dumps(record, indent=1).encode())
                if args.draw:
                    ok, buf = cv2.imencode(".jpg", draw_detections(img, det, min_score=args.draw_min_score))
                    _write_atomic(args.out / f"{path.stem}.jpg", buf.tobytes())
                bar.update(1)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "detect":
        return _detect(args)
    raise AssertionError(args.command)
