"""The Ray Data stages of the align job: read files, detect-select-align in an actor pool, write.

* :func:`read_images` - CPU tasks: read (and, for GPU actors, decode) the files of a chunk.
* :class:`FaceCropPredictor` - the actor pool: builds its detector once from the job's
  :class:`detector.spec.DetectorSpec` (only the runtime that spec names is imported), then
  detects, selects and aligns each chunk.
* :func:`write_crops` - CPU tasks: encode the crops and hand them to the job's
  :class:`pipeline.writers.CropWriter`; one manifest line per photo.

Images of different sizes travel as plain Arrow binary columns (the file's bytes, or decoded
pixels with their height and width beside them), never as tensor columns; the same holds for the
crops.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from detector.spec import DetectorSpec
from pipeline.align import center_crop
from pipeline.config import AlignConfig
from detector.api import Detections
from pipeline.images import ImageReadError, decode_image, draft_factor, probe_image
from pipeline.job.config import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK
from pipeline.writers import CropWriter

__all__ = ["FaceCropPredictor", "read_images", "write_crops"]


def _text(message: str) -> str:
    """A message safe for Arrow/JSON UTF-8 (file names that are not UTF-8 are escaped)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _unchunk(column: Sequence[Any]) -> list[bytes]:
    """Names of a per-photo column, or of a per-chunk column of sequences, as one flat list."""
    out: list[bytes] = []
    for value in column:
        if isinstance(value, (bytes, str)):
            out.append(os.fsencode(value))
        else:
            out.extend(os.fsencode(v) for v in value)
    return out


def read_images(batch: dict[str, np.ndarray], *, src_root: str, decode: bool, max_pixels: int | None,
                exif_orientation: bool) -> pa.Table:
    """Read (and, with ``decode``, decode) one batch of files: a CPU task; never raises for a
    bad file.

    ``batch`` holds one row per photo (``src``, ``stem``: file-system names as bytes), or one
    row per chunk whose ``src`` / ``stem`` are sequences of them (how the job ships its chunks).

    Returns an Arrow batch, one row per photo: ``src``, ``stem`` (binary file-system names),
    ``data`` (decoded ``HxWx3`` BGR pixels as raw bytes when ``decode``, else the file's bytes;
    empty on error),
    ``height``/``width`` (0 when not decoded) and ``error`` ("" or the reason). Pixels travel
    as a plain binary column with their shape beside it, never as an Arrow tensor column.
    """
    sources, stems = _unchunk(batch["src"]), _unchunk(batch["stem"])
    data: list[bytes] = []
    heights: list[int] = []
    widths: list[int] = []
    errors: list[str] = []
    for src in sources:
        rel = os.fsdecode(src)
        path = os.path.join(src_root, rel)
        try:
            st = os.stat(path)  # follows symlinks: a dangling link fails here
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block a read forever
                raise ImageReadError(rel, "not a regular file")
            with open(path, "rb") as f:
                raw = f.read()
            if decode:
                image = decode_image(raw, source=rel, max_pixels=max_pixels, exif_orientation=exif_orientation)
                raw, (h, w) = image.tobytes(), image.shape[:2]
            else:
                h = w = 0
            data.append(raw)
            heights.append(h)
            widths.append(w)
            errors.append("")
            continue
        except ImageReadError as e:
            message = e.reason
        except OSError as e:
            message = f"cannot read file ({e.strerror or e})"
        except Exception as e:  # a decoder bug on one file must not fail the batch: record it
            message = f"unexpected {type(e).__name__} while reading: {e}"
        data.append(b"")
        heights.append(0)
        widths.append(0)
        errors.append(_text(message))
    return pa.table({
        "src": pa.array(sources, pa.binary()),
        "stem": pa.array(stems, pa.binary()),
        "data": pa.array(data, pa.large_binary()),
        "height": pa.array(heights, pa.int32()),
        "width": pa.array(widths, pa.int32()),
        "error": pa.array(errors, pa.string()),
    })


def _faces_json(dets: Any) -> list[dict[str, Any]]:
    return [
        {"box": [round(float(v), 2) for v in dets.boxes[i]],
         "score": round(float(dets.scores[i]), 5),
         "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in dets.landmarks[i]]}
        for i in range(len(dets))
    ]


class FaceCropPredictor:
    """Ray Data actor: detects, selects and aligns a batch of photos.

    The model is built once per actor in ``__init__`` (the Ray batch-inference pattern).
    ``__call__`` takes a :func:`read_images` batch as ``dict[str, np.ndarray]`` (decoding the
    rows that arrive as file bytes) and returns an Arrow batch, one row per photo: ``src``,
    ``stem``, ``status``, ``error``, ``faces`` (JSON: every detection with score >=
    ``min_score``), ``selected`` (JSON: indices into ``faces``, one per crop), ``height``,
    ``width``, ``num_crops`` and ``crops`` (the ``[num_crops, h, w, 3]`` uint8 BGR crops as raw
    bytes).

    ``draft=True`` (the job's default; ``--exact`` turns it off): a JPEG that the detector will
    shrink by 2x or more is decoded at 1/2, 1/4 or 1/8 of its size by the JPEG decoder itself
    (:func:`pipeline.images.draft_factor`), which is several times faster and gives the detector
    the same input size. Detections are reported in full-photo pixels. A chosen face whose box
    in the draft is smaller than the crop is re-cropped from the full photo; larger faces are
    cropped from the draft, which still holds more pixels than the crop (no upsampling).
    """

    def __init__(self, *, detector: DetectorSpec, align: AlignConfig, detect_batch_size: int = 1,
                 on_no_face: str = "skip", draft: bool = False) -> None:
        import warnings

        from pipeline.stage import FaceAligner

        # pixels arrive as read-only views of Ray's object store; the detector only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self._aligner = FaceAligner(detector=detector.build, config=align)
        self._align = align
        self._detect_batch_size = max(1, int(detect_batch_size))
        self._on_no_face = on_no_face
        self._crop_shape = align.crop_shape
        self._draft = draft

    def _image(self, row: int, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The photo to detect on, and its full ``(h, w)`` when it was decoded as a JPEG draft
        (``None``: the image is the full photo)."""
        data, h, w = batch["data"][row], int(batch["height"][row]), int(batch["width"][row])
        if h:  # decoded by the read task
            return np.frombuffer(data, np.uint8).reshape(h, w, 3), None
        source = os.fsdecode(batch["src"][row])
        factor = 1
        if self._draft:
            info = probe_image(data, source=source)
            factor = draft_factor(info.height, info.width, self._align.resize.scale(info.height, info.width))
        image = decode_image(data, source=source, max_pixels=self._align.max_pixels,
                             exif_orientation=self._align.exif_orientation, reduce=factor)
        if factor == 1:
            return image, None
        full = (info.height, info.width)
        if self._align.exif_orientation and info.orientation in (5, 6, 7, 8):
            full = full[::-1]
        return image, full

    def _undraft(self, draft: np.ndarray, full: tuple[int, int], result: tuple[Any, list[Any]], raw: Any,
                 source: str) -> tuple[np.ndarray | None, tuple[Any, list[Any]]]:
        """Detections of a draft in full-photo pixels; crops re-made from the full photo when a
        chosen face is too small in the draft (its crop would be enlarged from the draft)."""
        dets, faces = result
        sy, sx = full[0] / draft.shape[0], full[1] / draft.shape[1]
        scale = np.array([sx, sy], np.float32)
        dets = Detections(dets.boxes * np.tile(scale, 2), dets.scores, dets.landmarks * scale)
        small = any(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) < min(self._crop_shape) for f in faces)
        if not small:
            return None, (dets, faces)
        image = decode_image(raw, source=source, max_pixels=self._align.max_pixels,
                             exif_orientation=self._align.exif_orientation)
        return image, (dets, self._aligner.align_detections([image], [dets])[0])

    def _align_rows(self, images: list[np.ndarray]) -> list[tuple[Any, list[Any]]]:
        return self._aligner.detect_and_align(images)

    def _align_chunk(self, images: dict[int, np.ndarray]) -> tuple[dict[int, Any], dict[int, str]]:
        """One detector call for the chunk; if it fails, photo by photo, so that one bad photo
        only fails itself."""
        try:
            return dict(zip(images, self._align_rows(list(images.values())))), {}
        except Exception:
            results, failures = {}, {}
            for i, image in images.items():
                try:
                    results[i] = self._align_rows([image])[0]
                except Exception as e:
                    failures[i] = _text(f"detection failed: {type(e).__name__}: {e}")
            return results, failures

    def _row(self, image: np.ndarray | None, result: tuple[Any, list[Any]] | None, error: str, *,
             size: tuple[int, int] | None = None) -> dict[str, Any]:
        h, w = self._crop_shape
        size = size or (image.shape[:2] if image is not None else (0, 0))
        row = {"status": STATUS_ERROR, "error": error, "faces": "[]", "selected": "[]",
               "height": int(size[0]), "width": int(size[1]), "crops": None}
        if result is not None:
            dets, chosen = result
            row.update(error="", faces=json.dumps(_faces_json(dets)),
                       selected=json.dumps([f.face_index for f in chosen]))
            if chosen:
                row.update(status=STATUS_OK, crops=np.stack([f.crop for f in chosen]))
            else:
                row["status"] = STATUS_NO_FACE
                if self._on_no_face == "center-crop":
                    row["crops"] = center_crop(image, (h, w))[None]
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["src"])
        rows: list[dict[str, Any] | None] = [None] * n
        todo = []
        for i, error in enumerate(batch["error"]):
            if error:
                rows[i] = self._row(None, None, str(error))
            else:
                todo.append(i)
        if self._detect_batch_size > 1:  # photos decoded by the read tasks: less padding per call
            todo.sort(key=lambda i: (int(batch["height"][i]) or 1) / (int(batch["width"][i]) or 1))
        step = self._detect_batch_size
        for start in range(0, len(todo), step):  # photos decoded here are held one chunk at a time
            images: dict[int, np.ndarray] = {}
            drafts: dict[int, tuple[int, int]] = {}
            for i in todo[start:start + step]:
                try:
                    images[i], full = self._image(i, batch)
                    if full is not None:
                        drafts[i] = full
                except ImageReadError as e:
                    rows[i] = self._row(None, None, _text(e.reason))
            results, failures = self._align_chunk(images) if images else ({}, {})
            for i, image in images.items():
                result = results.get(i)
                size = None
                if i in drafts and result is not None:
                    size = drafts[i]
                    try:
                        full_image, result = self._undraft(image, size, result, batch["data"][i],
                                                           os.fsdecode(batch["src"][i]))
                        image = full_image if full_image is not None else image
                    except ImageReadError as e:
                        rows[i] = self._row(None, None, _text(e.reason))
                        continue
                rows[i] = self._row(image, result, failures.get(i, "detection failed"), size=size)
        crops = [r.pop("crops") for r in rows]
        return pa.table({
            "src": pa.array(list(batch["src"]), pa.binary()),
            "stem": pa.array(list(batch["stem"]), pa.binary()),
            "status": pa.array([r["status"] for r in rows], pa.string()),
            "error": pa.array([r["error"] for r in rows], pa.string()),
            "faces": pa.array([r["faces"] for r in rows], pa.string()),
            "selected": pa.array([r["selected"] for r in rows], pa.string()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "num_crops": pa.array([0 if c is None else len(c) for c in crops], pa.int32()),
            "crops": pa.array([b"" if c is None else np.ascontiguousarray(c, np.uint8).tobytes() for c in crops],
                              pa.large_binary()),
        })


def write_crops(batch: dict[str, np.ndarray], *, writer: CropWriter,
                crop_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Encode each row's crops and hand them to ``writer`` (a CPU task; file formats write them
    here, atomically); returns per row ``record`` (the manifest JSON line), ``status``,
    ``num_outputs``, ``payloads`` (encoded crops the driver's sink still has to place) and
    ``io_error``. A failed output write (a full disk, a read-only ``dst``) is a problem of ``dst``,
    not of the input: the rows before it are returned, every row carries ``io_error`` (JSON
    ``[errno, message, file]``), and the driver stops the job with that error (resumable).
    It travels as data because Ray's task errors do not keep the ``OSError`` they wrap."""
    h, w = crop_shape
    records, counts, payloads, statuses = [], [], [], []
    io_error = ""
    for i in range(len(batch["src"])):
        k = int(batch["num_crops"][i])
        crops = np.frombuffer(batch["crops"][i], np.uint8).reshape(k, h, w, 3)
        try:
            outputs, pending = writer.write(os.fsdecode(batch["stem"][i]), crops)
        except OSError as e:
            io_error = json.dumps([e.errno, e.strerror or str(e), _text(str(e.filename or ""))])
            break
        record = {
            "src": os.fsdecode(batch["src"][i]), "status": str(batch["status"][i]), "error": str(batch["error"][i]),
            "outputs": outputs, "faces": json.loads(batch["faces"][i]),
            "selected": json.loads(batch["selected"][i]),
            "height": int(batch["height"][i]), "width": int(batch["width"][i]),
        }
        line = json.dumps(record, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8: keep it as JSON escapes
            line = json.dumps(record)
        records.append(line)
        statuses.append(str(batch["status"][i]))
        counts.append(len(outputs) + len(pending))
        payloads.append(pending)
    if io_error and not records:  # one row to carry the error
        records, statuses, counts, payloads = [""], [""], [0], [[]]
    return pa.table({
        "record": pa.array(records, pa.string()),
        "status": pa.array(statuses, pa.string()),
        "num_outputs": pa.array(counts, pa.int64()),
        "payloads": pa.array(payloads, pa.list_(pa.large_binary())),
        "io_error": pa.array([io_error] * len(records), pa.string()),
    })
