"""``faceprep detect IMG [IMG ...] --out DIR`` (also ``python -m detector detect``): detect faces, write JSON
(and drawings); ``faceprep export`` writes the detector as ONNX."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common.fsio import atomic_write_bytes

from .api import Detections, PostprocessConfig
from .hub import CheckpointError
from .spec import add_detector_arguments, spec_from_args

__all__ = [
    "build_detect_parser", "build_export_parser", "build_parser", "detect_main", "detections_to_json",
    "draw_detections", "export_main", "main",
]


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


def output_stems(paths: Sequence[Path]) -> list[Path]:
    """Output names that cannot collide: each input's path relative to the inputs' common folder,
    without its suffix (``ids/a/img1.jpg``, ``ids/b/img1.jpg`` -> ``a/img1``, ``b/img1``).

    Raises:
        ValueError: two inputs still map to one name (``x.jpg`` and ``x.png`` in one folder, or
            the same file given twice), before anything is written.
    """
    resolved = [Path(os.path.abspath(p)) for p in paths]
    if not resolved:
        return []
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    stems = [p.relative_to(common).with_suffix("") for p in resolved]
    seen: dict[Path, Path] = {}
    for path, stem in zip(paths, stems):
        if stem in seen:
            raise ValueError(f"{path} and {seen[stem]} would both be written as {stem}.json; "
                             "rename one or run them separately")
        seen[stem] = path
    return stems


DETECT_DESCRIPTION = (
    "Detect faces and write one JSON per image: DIR/<the image's path relative to the images' common "
    "folder, without its suffix>.json (a.jpg b.jpg -> DIR/a.json DIR/b.json; ids/x/1.jpg ids/y/1.jpg -> "
    "DIR/x/1.json DIR/y/1.json), holding the image's width and height and its faces sorted by score: box "
    "(x1, y1, x2, y2 in original pixels), score and five landmarks (left eye, right eye, nose, left and "
    "right mouth corner, image left first). Exit codes: 0 all written; 1 some images unreadable; 2 nothing "
    "done (weights or runtime missing, two images mapping to one name)."
)
EXPORT_DESCRIPTION = (
    "Write the BN-fused RetinaFace as ONNX with a dynamic batch, height and width: input 'input' (float32 "
    "NCHW, already preprocessed: the preset's channel order minus its mean), outputs 'cls_logits', "
    "'bbox_deltas', 'landmark_deltas' (raw heads); the preset's anchors and preprocessing are stored in the "
    "file's metadata."
)


def build_parser(prog: str = "python -m detector") -> argparse.ArgumentParser:
    """``detect`` and ``export`` as sub-commands (``python -m detector``)."""
    parser = argparse.ArgumentParser(prog=prog, description="RetinaFace face detection (biubug6-compatible weights).")
    sub = parser.add_subparsers(dest="command", required=True)
    add_detect_arguments(sub.add_parser("detect", help="detect faces in images and write one JSON per image",
                                        description=DETECT_DESCRIPTION))
    add_export_arguments(sub.add_parser("export", help="export RetinaFace weights to ONNX (for --runtime "
                                                       "onnxruntime / openvino)", description=EXPORT_DESCRIPTION))
    return parser


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_detector_arguments(p)
    p.add_argument("--conf", type=float, default=0.02, help="keep detections with score above this (default 0.02)")
    p.add_argument("--nms", type=float, default=0.4, help="NMS IoU threshold (default 0.4)")
    p.add_argument("--top-k", type=int, default=5000, help="best candidates kept before NMS (default 5000)")
    p.add_argument("--keep-top-k", type=int, default=750, help="detections kept after NMS (default 750)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--draw", action="store_true",
                   help="also write DIR/<name>.jpg (beside its .json) with the detections drawn")
    p.add_argument("--draw-min-score", type=float, default=0.5, help="faces drawn with --draw (default 0.5)")


def _detect(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    paths: list[Path] = list(args.images)
    try:
        stems = output_stems(paths)
        postprocess = PostprocessConfig(conf_threshold=args.conf, nms_threshold=args.nms, top_k=args.top_k,
                                        keep_top_k=args.keep_top_k)
        detector = spec_from_args(args, postprocess=postprocess).build()
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with tqdm(total=len(paths), unit="img", desc="detect") as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk, images = [], []
            for path, stem in zip(paths[start:start + args.batch_size], stems[start:start + args.batch_size]):
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if img is None:
                    print(f"error: {path}: not a readable image", file=sys.stderr)
                    failed += 1
                    bar.update(1)
                    continue
                chunk.append((path, stem))
                images.append(img)
            if not images:
                continue
            for (path, stem), img, det in zip(chunk, images, detector.detect(images)):
                record = detections_to_json(str(path), img.shape[1], img.shape[0], det)
                atomic_write_bytes(args.out / f"{stem}.json", json.dumps(record, indent=1).encode())
                if args.draw:
                    ok, buf = cv2.imencode(".jpg", draw_detections(img, det, min_score=args.draw_min_score))
                    atomic_write_bytes(args.out / f"{stem}.jpg", buf.tobytes())
                bar.update(1)
    return 1 if failed else 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None,
                   help="checkpoint file or known name (mobilenet0.25, resnet50); default mobilenet0.25, found via "
                        "$FACEPREP_WEIGHTS, the cache, or downloaded")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--preset", default=None, help="force an architecture preset (default: from the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx
    from .hub import CheckpointError as _CheckpointError
    from .onnx_models import inspect_onnx

    try:
        path = export_onnx(args.weights, args.out, preset=args.preset, opset=args.opset)
        info = inspect_onnx(path)
    except _CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    print(f"input: {info.input_name} {list(info.input_shape)} float32 "
          f"({info.model_config.channel_order}, minus mean {list(info.model_config.mean_bgr)})")
    for name, shape in zip(info.output_names, info.output_shapes):
        print(f"output: {name} {list(shape)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detector detect|export ...``."""
    args = build_parser().parse_args(argv)
    if args.command == "detect":
        return _detect(args)
    if args.command == "export":
        return _export(args)
    raise AssertionError(args.command)


def build_detect_parser(prog: str = "faceprep detect") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DETECT_DESCRIPTION)
    add_detect_arguments(p)
    return p


def build_export_parser(prog: str = "faceprep export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=EXPORT_DESCRIPTION)
    add_export_arguments(p)
    return p


def detect_main(argv: Sequence[str] | None = None, *, prog: str = "faceprep detect") -> int:
    """The detect command on its own (``faceprep detect``)."""
    return _detect(build_detect_parser(prog).parse_args(argv))


def export_main(argv: Sequence[str] | None = None, *, prog: str = "faceprep export") -> int:
    """The export command on its own (``faceprep export``)."""
    return _export(build_export_parser(prog).parse_args(argv))
