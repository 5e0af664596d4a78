"""A small ``raw/`` tree built only from photos that installed dependencies ship.

Laid out like an ArcFace training source (one sub-folder per identity, here per photo source)
so that ``python jobs/align_dataset.py --demo`` runs end to end on a fresh machine:

* ``eileen_collins/``: scikit-image's ``astronaut`` (NASA portrait of Eileen Collins) as PNG, a
  mirrored JPEG and a half-size JPEG;
* ``cameraman/``: scikit-image's grayscale ``camera`` (a small face, single channel PNG);
* ``group/``: insightface's sample group photo ``t1.jpg`` (six faces; ``--select`` picks one, or
  ``--select all`` writes one crop per face);
* ``tom_hanks/``: insightface's already-aligned 112x112 ``Tom_Hanks_54745.png``;
* ``no_face/``: scikit-image's ``chelsea`` (a cat) and ``coffee`` (a cup): ``no_face`` records.

(insightface's ``mask_*.jpg`` are flat face-mask textures for its mask renderer, not photos.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.writers import atomic_write_bytes

__all__ = ["DEMO_FILES", "build_demo_tree", "insightface_images_dir"]


def insightface_images_dir() -> Path:
    """The sample-photo folder of the installed ``insightface`` package."""
    import insightface

    folder = Path(insightface.__file__).resolve().parent / "data" / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"insightface sample images not found at {folder}")
    return folder


def _skimage(name: str, *, flip: bool = False, scale: float = 1.0) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        rgb = np.asarray(getattr(skimage.data, name)())
        img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if flip:
            img = img[:, ::-1]
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img)

    return load


def _insightface(filename: str) -> Callable[[], bytes]:
    def load() -> bytes:
        return (insightface_images_dir() / filename).read_bytes()  # shipped bytes, unchanged

    return load


#: relative path in the demo tree -> loader (an image to encode, or the file's bytes to copy)
DEMO_FILES: dict[str, Callable[[], np.ndarray | bytes]] = {
    "eileen_collins/astronaut.png": _skimage("astronaut"),
    "eileen_collins/astronaut_mirrored.jpg": _skimage("astronaut", flip=True),
    "eileen_collins/astronaut_half.jpg": _skimage("astronaut", scale=0.5),
    "cameraman/camera.png": _skimage("camera"),
    "group/t1.jpg": _insightface("t1.jpg"),
    "tom_hanks/Tom_Hanks_54745.png": _insightface("Tom_Hanks_54745.png"),
    "no_face/chelsea_cat.jpg": _skimage("chelsea"),
    "no_face/coffee.jpg": _skimage("coffee"),
}


def build_demo_tree(root: str | os.PathLike, *, overwrite: bool = False) -> list[str]:
    """Write the demo photos under ``root``; returns their relative paths.

    Files that already exist are kept unless ``overwrite``. Every file is written atomically.
    """
    root = Path(root)
    written = []
    for rel, load in DEMO_FILES.items():
        path = root / rel
        if path.exists() and not overwrite:
            written.append(rel)
            continue
        data = load()
        if isinstance(data, np.ndarray):
            ext = path.suffix.lower()
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
            ok, encoded = cv2.imencode(ext, data, params)
            if not ok:
                raise RuntimeError(f"could not encode demo image {rel}")
            data = encoded.tobytes()
        atomic_write_bytes(path, data)
        written.append(rel)
    return written
