"""The report's problem thumbnails (see :mod:`pipeline.report`): a source photo with its
detections drawn (:func:`draw_detections`), written as a small JPEG into ``report_files/thumbs/``."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.fsio import atomic_write_bytes
from pipeline.images import DEFAULT_MAX_PIXELS, read_image
from pipeline.records import REPORT_FILES_NAME, STATUS_ERROR, FaceRecord, PhotoRecord
from pipeline.report.render import escape, file_url
from pipeline.report.shards import CropLinks
from pipeline.report.stats import OUTLIER, number

__all__ = ["ProblemThumbs", "draw_detections"]

_LANDMARK_COLORS = ((0, 0, 255), (255, 0, 0), (0, 200, 0), (255, 0, 255), (0, 255, 255))  # BGR, in point order
_SELECTED = (40, 200, 40)
_OTHER = (0, 140, 255)


def draw_detections(image: np.ndarray, faces: Sequence[FaceRecord | Mapping[str, Any]], selected: Sequence[int], *,
                    max_side: int = 256) -> np.ndarray:
    """A thumbnail of ``image`` with the detections drawn.

    Args:
        image: ``[H, W, 3]`` uint8 BGR, the photo in the pixels the manifest's coordinates refer to.
        faces: manifest faces (:class:`pipeline.records.FaceRecord`, or their JSON objects: ``box``
            ``[x1, y1, x2, y2]`` or ``None``, ``landmarks`` ``[[x, y] * 5]``, ``score`` or ``None``).
        selected: indices of the selected faces (drawn green and thicker; the others orange).
        max_side: the thumbnail's longer side (never enlarged).

    Returns:
        ``[h, w, 3]`` uint8 BGR with ``max(h, w) <= max_side``.
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else image.copy()
    chosen = set(int(i) for i in selected)
    for index, face in enumerate(faces):
        if not isinstance(face, FaceRecord):
            face = FaceRecord.from_json(face)
        color = _SELECTED if index in chosen else _OTHER
        thick = 2 if index in chosen else 1
        if face.box is not None:
            x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in face.box)
            cv2.rectangle(thumb, (x1, y1), (x2, y2), color, thick, cv2.LINE_8)
            label = str(index) if number(face.score) is None else f"{index}:{float(face.score):.2f}"
            cv2.putText(thumb, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
        for point, c in zip(face.landmarks, _LANDMARK_COLORS):
            x, y = int(round(float(point[0]) * scale)), int(round(float(point[1]) * scale))
            cv2.circle(thumb, (x, y), 2 if thick > 1 else 1, c, -1, cv2.LINE_8)
    return thumb


class ProblemThumbs:
    """Draws the problem photos of the main page.

    Args:
        src: the folder of the source photos (``None``: unknown; no thumbnail is drawn).
        settings: the job's settings (``max_pixels``, ``exif_orientation``: how the job read the photos).
        work: the folder being built (it becomes ``dst/report_files``).
        thumb_side: the thumbnails' longer side.
        crops: where the crops are (an identity outlier shows its crop beside the photo).
    """

    def __init__(self, *, src: Path | None, settings: Mapping[str, Any], work: Path, thumb_side: int,
                 crops: CropLinks) -> None:
        self.src, self.settings, self.work, self.thumb_side, self.crops = src, settings, work, thumb_side, crops

    def _draw(self, record: PhotoRecord, kind: str) -> tuple[np.ndarray | None, str]:
        """The thumbnail, or ``None`` and why not."""
        if kind == STATUS_ERROR:  # the job could not read it: nothing to draw, and never re-read
            return None, "the job could not read it"  # (a FIFO would block, a huge file would be read again)
        if self.src is None:
            return None, "source folder unknown"
        path = self.src / record.src
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise ValueError("not a regular file")
            image = read_image(path, max_pixels=self.settings.get("max_pixels", DEFAULT_MAX_PIXELS) or None,
                               exif_orientation=bool(self.settings.get("exif_orientation", True)))
            return draw_detections(image, record.faces, record.selected, max_side=self.thumb_side), ""
        except (OSError, ValueError) as e:
            return None, str(e)

    def figure(self, record: PhotoRecord, kind: str, reason: str, index: int) -> str:
        """The ``<figure>`` of a problem photo (its thumbnail written as ``thumbs/<kind>-<index>.jpg``)."""
        caption = (f'<figcaption title="{escape(record.src)}">{escape(record.src)}</figcaption>'
                   f'<figcaption class="muted" title="{escape(reason)}">{escape(reason)}</figcaption>')
        thumb, why = self._draw(record, kind)
        if thumb is None:
            return (f'<figure class="wide"><div class="missing" title="{escape(why)}">photo not shown:<br>'
                    f'{escape(why[:80])}</div>{caption}</figure>')
        ok, buf = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])
        rel = f"thumbs/{kind}-{index:04d}.jpg"
        atomic_write_bytes(self.work / rel, buf.tobytes())
        crop = ""
        if kind == OUTLIER and record.outputs:
            crop_url = self.crops.url(record.outputs[0], depth=0)
            if crop_url:
                crop = f'<img src="{crop_url}" alt="crop" style="width:72px">'
        return (f'<figure class="wide"><a href="{file_url(self.src / record.src)}">'
                f'<img src="{REPORT_FILES_NAME}/{rel}" '
                f'alt="{escape(record.src)}"></a>{crop}{caption}</figure>')
