#!/usr/bin/env python
"""``python jobs/train_detector.py --labels label.txt --init-backbone B.tar --out runs/x``: the
``faceprep train`` command (:mod:`detector.training.cli`) for a checkout that is not installed.
``--help`` lists the options."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout: import the packages beside jobs/
    sys.path.insert(0, str(ROOT))

from detector.training.cli import build_parser, command, config_from_args, main, train_config_from_args  # noqa: E402

__all__ = ["build_parser", "config_from_args", "main", "train_config_from_args"]

if __name__ == "__main__":
    sys.exit(command(prog="python jobs/train_detector.py"))
