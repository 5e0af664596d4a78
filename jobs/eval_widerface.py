#!/usr/bin/env python
"""``python jobs/eval_widerface.py --pred DIR | --images DIR --gt DIR``: the ``faceprep eval-widerface``
command (:mod:`detector.evaluation.cli`) for a checkout that is not installed. ``--help`` lists the options."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout: import the packages beside jobs/
    sys.path.insert(0, str(ROOT))

from detector.evaluation.cli import build_parser, config_from_args, main  # noqa: E402

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python jobs/eval_widerface.py"))
