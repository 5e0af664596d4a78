"""Build (or rebuild) the visual report of a finished align job from its manifest.

    faceprep report aligned/        (or: python jobs/report.py aligned/)

Writes ``aligned/report.html`` (open it in a browser; no server) and ``aligned/report_files/``:
counts per status, quality histograms, the no_face / error / filtered / identity-outlier photos
with their detections drawn, a contact sheet per identity (paged) and a random sample of crops.
The align job writes the same report when it finishes.

Exit codes: 0 written; 2 nothing written (no manifest in DST, bad arguments, or an align job is
writing to DST).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.job.config import LOCK_NAME, JobConfigError
from pipeline.job.resume import exclusive
from pipeline.report import ReportConfig, ReportError, build_report

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_USAGE = 0, 2


def build_parser(prog: str = "faceprep report") -> argparse.ArgumentParser:
    defaults = ReportConfig()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\nExit codes")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dst", type=Path, help="the --dst folder of an align job (holds manifest.jsonl)")
    p.add_argument("--page-size", type=int, default=defaults.page_size,
                   help=f"identities per contact-sheet page (default {defaults.page_size})")
    p.add_argument("--sample", type=int, default=defaults.sample,
                   help=f"crops in the random sample grid (default {defaults.sample})")
    p.add_argument("--problems", type=int, default=defaults.problems,
                   help=f"drawn thumbnails per problem kind on the main page (default {defaults.problems})")
    p.add_argument("--per-identity", type=int, default=defaults.per_identity,
                   help=f"crop thumbnails per identity (default {defaults.per_identity})")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help=f"seed of the random samples (default {defaults.seed})")
    p.add_argument("--src", type=Path, default=None,
                   help="folder of the source photos, if it moved (default: the one in DST/job.json)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None, *, prog: str = "faceprep report") -> int:
    """The report command: parse ``argv`` (default ``sys.argv[1:]``), write the report, return the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        config = ReportConfig(page_size=args.page_size, sample=args.sample, problems=args.problems,
                              per_identity=args.per_identity, seed=args.seed, src=args.src, progress=args.progress)
    except ValueError as e:
        parser.error(str(e))
    if not (args.dst / "manifest.jsonl").is_file():
        print(f"error: no manifest at {args.dst / 'manifest.jsonl'}: is {args.dst} the --dst of an align job?",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        with exclusive(args.dst / LOCK_NAME):
            path = build_report(args.dst, config)
    except (JobConfigError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK
