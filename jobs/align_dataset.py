#!/usr/bin/env python
"""``python jobs/align_dataset.py --src raw/ --dst aligned/``: the ``faceprep align`` command
(:mod:`pipeline.job.cli`) for a checkout that is not installed. ``--help`` lists the options."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout: import the packages beside jobs/
    sys.path.insert(0, str(ROOT))

from pipeline.job.cli import build_parser, config_from_args, main  # noqa: E402

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python jobs/align_dataset.py"))
