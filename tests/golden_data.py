"""Readers for the golden reference detections (../shared/golden/retinaface)."""

from __future__ import annotations

import json
from functools import lru_cache

import cv2
import numpy as np

from tests.shared import asset, golden

GOLDEN_DETECTIONS = "retinaface/biubug6_mobilenet0.25_reference_detections.json"


@lru_cache(maxsize=1)
def golden_detections() -> dict:
    return json.loads(golden(GOLDEN_DETECTIONS).read_text())


def golden_image(entry: dict) -> np.ndarray:
    img = cv2.imread(str(asset(entry["image"])), cv2.IMREAD_COLOR)
    assert img is not None, entry["image"]
    return img

