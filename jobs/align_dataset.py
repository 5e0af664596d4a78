#!/usr/bin/env python
"""Align a folder of face photos into ArcFace crops, on Ray (resumable, never half-written).

    python jobs/align_dataset.py --src raw/ --dst aligned/

``raw/`` is usually one sub-folder per identity; ``aligned/`` mirrors it with one crop per photo
(``--select all``: ``name_0.jpg``, ``name_1.jpg``...), plus ``manifest.jsonl`` (one record per photo),
``summary.json`` and ``job.json``. Rerunning the same command resumes; ``--overwrite`` redoes
everything. ``--demo`` first builds a small ``raw/`` from photos shipped with scikit-image and insightface.

Exit codes: 0 every photo has an ok/no_face record; 2 nothing done (bad arguments, missing
source or weights, dst made with other settings); 3 finished, but some photos failed (their
manifest records have "status": "error").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

try:
    import pipeline.job  # noqa: F401  (installed editable)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.fsio import atomic_write_text
from detector.spec import add_detector_arguments, spec_from_args
from pipeline.config import AlignConfig
from pipeline.job import EXIT_USAGE, AlignJobConfig, JobConfigError, run_align_job
from pipeline.writers import FORMATS

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
DEFAULT_RESIZE = "cap:1024"

EPILOG = """\
examples:
  python jobs/align_dataset.py --demo                          # build raw/ from bundled photos, align into aligned/
  python jobs/align_dataset.py --src raw/ --dst aligned/       # align (rerun to resume)
  python jobs/align_dataset.py --src raw/ --dst rec/ --format recordio --size 112
  python jobs/align_dataset.py --src raw/ --dst aligned/ --address ray://head:10001

weights: --weights, else $FACEPREP_WEIGHTS (a file or a folder holding it), else the cache
($FACEPREP_CACHE or ~/.cache/faceprep), else a download.

exit codes: 0 all photos ok or no_face; 2 nothing done (usage, missing src/weights, settings
differ from the existing dst: use --overwrite); 3 finished but some photos failed (their
manifest records say "status": "error"); 130 interrupted (rerun to resume).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="align_dataset.py", description=__doc__.split("\nExit codes")[0].strip(), epilog=EPILOG,
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
    al.add_argument("--select", choices=("largest", "center", "central", "score", "all"), default="largest",
                    help="which face of a photo: largest box, center (largest near the centre), "
                         "score (most confident), or all (one crop per face) (default largest)")
    al.add_argument("--min-score", type=float, default=0.5, help="minimum detection score (default 0.5)")
    al.add_argument("--min-face-size", type=float, default=0.0,
                    help="minimum shorter box side in photo pixels (default 0)")
    al.add_argument("--on-no-face", choices=("skip", "center-crop"), default="skip",
                    help="photos without a face: no output, or a centred crop (default skip)")
    al.add_argument("--exact", action="store_true",
                    help="decode every photo at full size: crops bit-identical to norm_crop of the detections "
                         "(default: JPEGs the detector shrinks 2x or more are decoded as faster drafts)")
    add_detector_arguments(p, resize_default=DEFAULT_RESIZE, device_default="auto", precision_default="auto")

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
    rs.add_argument("--summary-json", type=Path, help="also write the summary to this file")
    return p


def config_from_args(args: argparse.Namespace) -> AlignJobConfig:
    align = AlignConfig(
        image_size=args.size, select="central" if args.select == "center" else args.select,
        min_score=args.min_score, min_face_size=args.min_face_size, resize=args.detect_resize,
        on_error="record",
    )
    detector = spec_from_args(args, device="cpu" if args.device == "auto" else args.device)
    return AlignJobConfig(
        src=args.src, dst=args.dst, align=align, device=args.device, detector=detector, on_no_face=args.on_no_face,
        exact=args.exact, ext=args.ext, quality=args.quality, format=args.format, shard_bytes=args.shard_bytes,
        batch_size=args.batch_size, num_workers=args.num_workers, threads=args.threads, limit=args.limit,
        dry_run=args.dry_run, overwrite=args.overwrite, address=args.address, progress=not args.no_progress,
        durable=args.durable, decode=args.decode, verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt:
        print("\ninterrupted: finished photos are recorded; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.text())
    if args.summary_json:
        atomic_write_text(args.summary_json, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
