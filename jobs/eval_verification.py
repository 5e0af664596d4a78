#!/usr/bin/env python
"""``python jobs/eval_verification.py --pairs CSV | --lfw DIR | --ijbc DIR --model M.onnx --out DIR``: the
``faceprep eval-verification`` command (:mod:`pipeline.verification.cli`) for a checkout that is not
installed. ``--help`` lists the options."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout: import the packages beside jobs/
    sys.path.insert(0, str(ROOT))

from pipeline.verification.cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python jobs/eval_verification.py"))
