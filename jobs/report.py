#!/usr/bin/env python
"""``python jobs/report.py aligned/``: the ``faceprep report`` command (:mod:`pipeline.report_cli`)
for a checkout that is not installed. ``--help`` lists the options."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout: import the packages beside jobs/
    sys.path.insert(0, str(ROOT))

from pipeline.report_cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python jobs/report.py"))
