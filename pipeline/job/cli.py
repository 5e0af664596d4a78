"""Align a folder of face photos into ArcFace crops, on Ray (resumable, never half-written).

    faceprep align --src raw/ --dst aligned/        (or: python jobs/align_dataset.py --src raw/ --dst aligned/)

``raw/`` is usually one sub-folder per identity; ``aligned/`` mirrors it with one crop per photo
(``--select all``: ``name_0.jpg``, ``name_1.jpg``...), plus ``manifest.jsonl`` (one record per photo),
``summary.json`` and ``job.json``. Rerunning the same command resumes; ``--overwrite`` redoes
everything. ``--demo`` first builds a small ``raw/`` from photos shipped with scikit-image and insightface.

Exit codes: 0 every photo has an ok/no_face/filtered record; 2 nothing done (bad arguments, missing
source or weights, dst made with other settings); 3 finished, but some photos failed (their
manifest records have "status": "error"); 75 stopped after losing a Ray node (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.fsio import atomic_write_text
from detector.spec import add_detector_arguments, spec_from_args
from pipeline.config import AlignConfig
from pipeline.curation.identity import OutlierRule
from pipeline.curation.quality import QualityFilter
from pipeline.job import EXIT_USAGE, AlignJobConfig, JobConfigError, run_align_job
from pipeline.job.config import EXIT_NODE_LOST
from pipeline.job.nodes import NodeLostError
from pipeline.verification.recognizer import OnnxRecognizerConfig, add_preprocess_arguments, preprocess_from_args
from pipeline.writers import FORMATS

__all__ = ["EXIT_INTERRUPTED", "build_parser", "config_from_args", "main"]

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
DEFAULTS = AlignConfig()  # the one set of defaults (pipeline.config)

EPILOG = """\
examples:
  %(prog)s --demo                          # build raw/ from bundled photos, align into aligned/
  %(prog)s --src raw/ --dst aligned/       # align (rerun to resume)
  %(prog)s --src raw/ --dst rec/ --format recordio --size 112
  %(prog)s --src raw/ --dst aligned/ --address ray://head:10001

weights: --weights, else $FACEPREP_WEIGHTS (a file or a folder holding it), else the cache
($FACEPREP_CACHE or ~/.cache/faceprep), else a download.

exit codes: 0 all photos ok, no_face or filtered; 2 nothing done (usage, missing src/weights, settings
differ from the existing dst: use --overwrite); 3 finished but some photos failed (their
manifest records say "status": "error"); 75 a Ray node died and the job stalled (rerun to
resume on the nodes left); 130 interrupted (rerun to resume).
"""


def build_parser(prog: str = "faceprep align") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\nExit codes")[0].strip(), epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input / output")
    io.add_argument("--src", type=Path, help="folder of photos (default with --demo: raw/)")
    io.add_argument("--dst", type=Path, help="output folder (default with --demo: aligned/)")
    io.add_argument("--ext", choices=("jpg", "png"), default="jpg", help="crop file format (default jpg)")
    io.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    io.add_argument("--format", choices=tuple(FORMATS), default="folder",
                    help="folder: crop files; recordio: also train.rec/.idx/property (arcface_torch); webdataset: "
                         "dst/shards/*.tar (KEY.jpg + KEY.json); label = top-level folder's index (default folder)")
    io.add_argument("--shard-bytes", type=int, default=1 << 30,
                    help="webdataset: close a shard at about this many bytes (default 1 GiB)")
    io.add_argument("--limit", type=int, help="only the first N photos (sorted paths)")
    io.add_argument("--overwrite", action="store_true",
                    help="trust no manifest record: redo every photo (also after changing settings)")
    io.add_argument("--dry-run", action="store_true", help="list and count what would be done; write nothing")
    io.add_argument("--demo", action="store_true",
                    help="build a small sample tree in --src (default raw/) first, then run on it")

    al = p.add_argument_group("detection and alignment")
    al.add_argument("--size", type=int, default=112, help="crop side: a multiple of 112 or 128 (default 112)")
    al.add_argument("--select", choices=("largest", "center", "central", "score", "all", "identity"),
                    default=DEFAULTS.select,
                    help="which face of a photo: largest box, central (area minus twice the squared offset "
                         "from the photo's centre; 'center' is the same), score (most confident), all (one "
                         "crop per face), or identity (nearest to the identity's centre; needs --recognizer) "
                         f"(default {DEFAULTS.select}: the best choice of the LFW study, see docs/results.md)")
    al.add_argument("--min-score", type=float, default=DEFAULTS.min_score,
                    help=f"minimum detection score (default {DEFAULTS.min_score}, from the LFW study)")
    al.add_argument("--min-face-size", type=float, default=0.0,
                    help="minimum shorter box side in photo pixels (default 0)")
    al.add_argument("--on-no-face", choices=("skip", "center-crop"), default="skip",
                    help="photos without a face: no output, or a centred crop (default skip)")
    al.add_argument("--exact", action="store_true",
                    help="decode every photo at full size: crops bit-identical to norm_crop of the detections "
                         "(default: JPEGs the detector shrinks 2x or more are decoded as faster drafts)")
    add_detector_arguments(p, resize_default=DEFAULTS.resize.to_string(), device_default="auto",
                           precision_default="auto")
    al.add_argument("--refine-size", type=int, default=DEFAULTS.refine_size, metavar="PX",
                    help="faces are found at --detect-resize (never enlarged); a kept face seen smaller than PX "
                         "pixels there is detected again around itself at PX pixels for its landmarks; 0: off "
                         f"(default {DEFAULTS.refine_size})")
    al.add_argument("--retry-resize", default=DEFAULTS.retry_resize.to_string(), metavar="POLICY",
                    help="a photo with no face at --detect-resize is detected again at this size; 'none': off "
                         f"(default {DEFAULTS.retry_resize.to_string()})")
    al.add_argument("--vote-iou", type=float, default=DEFAULTS.vote_iou, metavar="IOU",
                    help="each face's box and landmarks are the score-weighted mean of the detector's candidates "
                         "overlapping it by this IoU (steadier landmarks); 0: the plain NMS survivor "
                         f"(default {DEFAULTS.vote_iou})")

    cu = p.add_argument_group(
        "curation: given landmarks, quality filters",
        "Every face gets quality measures in the manifest (box_size, eye_distance, yaw/pitch/roll, sharpness, "
        "brightness; see pipeline/curation/quality.py). A filter decides which faces may be selected; a photo "
        "whose faces all fail gets the status 'filtered' with the reasons, and no crop. Filters are off by default.")
    cu.add_argument("--landmarks", type=Path, metavar="FILE",
                    help="CSV 'path,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4' (path relative to --src; left eye, right eye, "
                         "nose, left and right mouth corners, image left first, in photo pixels): listed photos are "
                         "aligned from these points without detection")
    cu.add_argument("--landmarks-only", action="store_true",
                    help="process only the photos --landmarks lists (default: detect the others)")
    cu.add_argument("--min-eye-distance", type=float, metavar="PX", help="inter-ocular distance >= PX photo pixels")
    cu.add_argument("--min-box-size", type=float, metavar="PX", help="sqrt(box area) >= PX photo pixels")
    cu.add_argument("--max-yaw", type=float, metavar="DEG", help="|yaw| <= DEG degrees (head turned left/right)")
    cu.add_argument("--max-pitch", type=float, metavar="DEG", help="|pitch| <= DEG degrees (head tilted up/down)")
    cu.add_argument("--max-roll", type=float, metavar="DEG", help="|roll| <= DEG degrees (head tilted in the image)")
    cu.add_argument("--min-sharpness", type=float, metavar="V",
                    help="variance of the Laplacian of the grey 112x112 crop >= V")
    cu.add_argument("--min-brightness", type=float, metavar="V", help="mean grey of the 112x112 crop >= V (0-255)")
    cu.add_argument("--max-brightness", type=float, metavar="V", help="mean grey of the 112x112 crop <= V (0-255)")

    ic = p.add_argument_group("identity consistency (top-level folder = identity)")
    ic.add_argument("--recognizer", type=Path, metavar="MODEL.onnx",
                    help="ArcFace-style ONNX recogniser: embed every candidate face, record each photo's cosine "
                         "distance to its identity's centre and outliers; writes embeddings.npy + "
                         "embeddings_index.jsonl")
    add_preprocess_arguments(ic)
    rule = OutlierRule()
    ic.add_argument("--outlier-k", type=float, default=rule.k,
                    help=f"outlier: distance > median + K * 1.4826 * MAD of the folder (default {rule.k})")
    ic.add_argument("--outlier-floor", type=float, default=rule.floor,
                    help=f"outlier: that threshold is at least this distance (default {rule.floor})")
    ic.add_argument("--outlier-min-photos", type=int, default=rule.min_photos,
                    help=f"outlier: folders with fewer photos use --outlier-fixed (default {rule.min_photos})")
    ic.add_argument("--outlier-fixed", type=float, default=rule.fixed,
                    help=f"outlier: the distance threshold of small folders (default {rule.fixed})")

    rs = p.add_argument_group("resources (defaults from what Ray sees)")
    rs.add_argument("--batch-size", type=int, help="photos per actor call at most, and per detector call on "
                                                    "GPU (default 64 on CPU, 32 on GPU)")
    rs.add_argument("--num-workers", type=int, help="detector actors (default: one per GPU, or per CPU left "
                                                     "after a reserve for reading/writing)")
    rs.add_argument("--decode", choices=("auto", "tasks", "actors"), default="auto",
                    help="where photos are decoded (default auto: read tasks for GPU actors, else the actors)")
    rs.add_argument("--address", help="Ray cluster address (default: start a local Ray); src and dst "
                                      "must then be on a file system every node sees")
    rs.add_argument("--no-progress", action="store_true", help="no progress bar")
    rs.add_argument("--durable", action="store_true", help="fsync every output and manifest line")
    rs.add_argument("--verbose", action="store_true", help="show Ray's own log lines and warnings")
    rs.add_argument("--stall-timeout", type=float, default=120.0, metavar="S",
                    help="after a Ray node dies, stop (exit 75, rerun to resume) once no photo has finished "
                         "for S seconds (default 120)")
    rs.add_argument("--summary-json", type=Path, help="also write the summary to this file")
    return p


def config_from_args(args: argparse.Namespace) -> AlignJobConfig:
    align = AlignConfig(
        image_size=args.size, select="central" if args.select == "center" else args.select,
        min_score=args.min_score, min_face_size=args.min_face_size, resize=args.detect_resize,
        refine_size=args.refine_size or None,
        retry_resize=None if str(args.retry_resize).lower() in ("none", "off", "") else args.retry_resize,
        vote_iou=args.vote_iou or None, on_error="record",
    )
    detector = spec_from_args(args, device="cpu" if args.device == "auto" else args.device)
    quality_filter = QualityFilter(
        min_eye_distance=args.min_eye_distance, min_box_size=args.min_box_size, max_yaw=args.max_yaw,
        max_pitch=args.max_pitch, max_roll=args.max_roll, min_sharpness=args.min_sharpness,
        min_brightness=args.min_brightness, max_brightness=args.max_brightness,
    )
    recognizer = None
    if args.recognizer is not None:
        recognizer = OnnxRecognizerConfig(
            model=args.recognizer,
            preprocess=preprocess_from_args(args),
        )
    outlier = OutlierRule(k=args.outlier_k, floor=args.outlier_floor, min_photos=args.outlier_min_photos,
                          fixed=args.outlier_fixed)
    return AlignJobConfig(
        src=args.src, dst=args.dst, align=align, device=args.device, detector=detector, on_no_face=args.on_no_face,
        exact=args.exact, ext=args.ext, quality=args.quality, format=args.format, shard_bytes=args.shard_bytes,
        batch_size=args.batch_size, num_workers=args.num_workers, threads=args.threads, limit=args.limit,
        dry_run=args.dry_run, overwrite=args.overwrite, address=args.address, progress=not args.no_progress,
        durable=args.durable, decode=args.decode, verbose=args.verbose, recognizer=recognizer, outlier=outlier,
        stall_timeout_s=args.stall_timeout,
        landmarks=args.landmarks, landmarks_only=args.landmarks_only, quality_filter=quality_filter,
    )


def main(argv: list[str] | None = None, *, prog: str = "faceprep align") -> int:
    """The align command: parse ``argv`` (default ``sys.argv[1:]``), run the job, return the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.demo:
        args.src, args.dst = args.src or Path("raw"), args.dst or Path("aligned")
    if args.src is None or args.dst is None:
        parser.error("--src and --dst are required (or --demo)")
    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        if args.demo and not args.dry_run:
            from pipeline.demo import build_demo_tree

            files = build_demo_tree(config.src)
            print(f"demo: {len(files)} photos in {config.src}/", file=sys.stderr)
        summary = run_align_job(config)
    except JobConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NodeLostError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NODE_LOST
    except KeyboardInterrupt:
        print("\ninterrupted: finished photos are recorded; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.text())
    report = config.dst / "report.html"
    if not config.dry_run and report.is_file():
        print(f"report: {report}")
    if args.summary_json:
        atomic_write_text(args.summary_json, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary.exit_code
