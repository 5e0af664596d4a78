"""The one place that locates ``../shared`` (real weights, photos, golden results).

Set ``FACEPREP_SHARED`` to point elsewhere. A missing folder or file is an error,
never a skip: the suite is meaningless without its real inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "FACEPREP_SHARED"


def shared_root() -> Path:
    root = Path(os.environ.get(ENV_VAR, REPO_ROOT.parent / "shared")).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"shared test data folder not found at {root}; set {ENV_VAR} to the folder "
            "that holds assets/ and golden/"
        )
    return root


def shared_path(relative: str) -> Path:
    """Path of ``relative`` under the shared folder; raises if it does not exist."""
    path = shared_root() / relative
    if not path.exists():
        raise FileNotFoundError(f"missing shared test file: {path}")
    return path


def asset(relative: str) -> Path:
    return shared_path(f"assets/{relative}")


def golden(relative: str) -> Path:
    return shared_path(f"golden/{relative}")


MOBILENET_WEIGHTS = "weights/retinaface_mobilenet0.25_biubug6.pth"
