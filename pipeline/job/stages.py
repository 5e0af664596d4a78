"""The Ray Data stages of the align job: read files, detect-select-align in an actor pool, write.

* :func:`read_images` - CPU tasks: read (and, for GPU actors, decode) the files of a chunk.
* :class:`FaceCropPredictor` - the actor pool: builds its detector once from the job's
  :class:`detector.spec.DetectorSpec` (only the runtime that spec names is imported), then
  detects, selects and aligns each chunk.
* :func:`write_crops` - CPU tasks: encode the crops and hand them to the job's
  :class:`pipeline.writers.CropWriter`; one manifest line per photo.
* :func:`with_io` - a predictor that runs :func:`read_images` and :func:`write_crops` itself
  (CPU actors: one Ray stage instead of three).

Images of different sizes travel as plain Arrow binary columns (the file's bytes, or decoded
pixels with their height and width beside them), never as tensor columns; the same holds for the
crops.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from detector.spec import DetectorSpec
from pipeline.align import align_faces, center_crop
from pipeline.config import AlignConfig
from detector.api import Detections
from pipeline.curation.landmarks import box_from_landmarks, unpack_points
from pipeline.curation.quality import QualityFilter, face_quality
from pipeline.images import ImageReadError, decode_image, draft_factor, probe_image
from pipeline.job.config import STATUS_ERROR, STATUS_FILTERED, STATUS_NO_FACE, STATUS_OK
from pipeline.select import select_faces
from pipeline.writers import CropWriter

__all__ = ["FaceCropPredictor", "read_images", "with_io", "write_crops"]


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
    An optional ``landmarks`` column (the same way) holds given points
    (:meth:`pipeline.curation.GivenLandmarks.packed`: 80 bytes, or ``b""`` for a photo to detect);
    it is passed through.

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
    table = pa.table({
        "src": pa.array(sources, pa.binary()),
        "stem": pa.array(stems, pa.binary()),
        "data": pa.array(data, pa.large_binary()),
        "height": pa.array(heights, pa.int32()),
        "width": pa.array(widths, pa.int32()),
        "error": pa.array(errors, pa.string()),
    })
    if "identity" in batch:  # per-photo JSON of the identity pass (pipeline.job.identity), passed through
        texts = [t for value in batch["identity"] for t in ([value] if isinstance(value, str) else value)]
        table = table.append_column("identity", pa.array([str(t) for t in texts], pa.string()))
    if "landmarks" in batch:  # given points (pipeline.curation.landmarks), passed through
        table = table.append_column("landmarks", pa.array(_unchunk(batch["landmarks"]), pa.binary()))
    return table


def _faces_json(dets: Any, quality: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The manifest's ``faces``: box, score (``None`` for given landmarks), landmarks, and the
    ``quality`` dict of each face when given."""
    faces = [
        {"box": [round(float(v), 2) for v in dets.boxes[i]],
         "score": None if dets.scores is None else round(float(dets.scores[i]), 5),
         "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in dets.landmarks[i]]}
        for i in range(len(dets.landmarks))
    ]
    for face, q in zip(faces, quality or ()):
        face["quality"] = q
    return faces


@dataclass(frozen=True, eq=False)
class _Choice:
    """One photo's faces after quality measures, filters and selection.

    ``boxes [K, 4]``, ``scores [K]`` (``None`` for given landmarks) and ``landmarks [K, 5, 2]`` in
    full-photo pixels; ``quality``: K dicts (:func:`pipeline.curation.face_quality`);
    ``selected``: indices of the cropped faces, in selection order; ``crops [M, h, w, 3]``;
    ``crop_boxes [M, 4]``: their boxes in the pixels of the image they were cropped from;
    ``filtered``: why no face could be selected ("" unless every eligible face failed the filter).
    """

    boxes: np.ndarray
    scores: np.ndarray | None
    landmarks: np.ndarray
    quality: list[dict[str, Any]]
    selected: list[int]
    crops: np.ndarray | None
    crop_boxes: np.ndarray
    filtered: str = ""

    @property
    def given(self) -> bool:
        return self.scores is None


class _PhotoError(Exception):
    """A photo that cannot be processed; the message is its ``error`` record."""


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

    Curation (:mod:`pipeline.curation`): a row with given points (the ``landmarks`` column) is
    decoded at full size and aligned from them, without detection (its face has no score; its box
    is :func:`pipeline.curation.box_from_landmarks`). Every face gets a ``quality`` dict, its crop
    measures taken on the 112x112 ArcFace crop from the image the face is cropped from (a draft
    or the full photo, as the output crop). Faces eligible by score and size that fail
    ``quality_filter`` are not selected; a photo whose eligible faces all fail is ``filtered``
    (no crop) with the reasons. Output columns add ``landmarks`` (``"given"``, ``"detected"``,
    or ``""`` for a photo that never reached alignment) and ``filtered`` (the reasons, or "").
    """

    def __init__(self, *, detector: DetectorSpec, align: AlignConfig, detect_batch_size: int = 1,
                 on_no_face: str = "skip", draft: bool = False,
                 quality_filter: QualityFilter | None = None) -> None:
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
        self._filter = quality_filter or QualityFilter()

    def _image(self, row: int, batch: dict[str, np.ndarray], *,
               draft: bool = True) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The photo to detect on, and its full ``(h, w)`` when it was decoded as a JPEG draft
        (``None``: the image is the full photo; always so with ``draft=False``)."""
        data, h, w = batch["data"][row], int(batch["height"][row]), int(batch["width"][row])
        if h:  # decoded by the read task
            return np.frombuffer(data, np.uint8).reshape(h, w, 3), None
        source = os.fsdecode(batch["src"][row])
        factor = 1
        if self._draft and draft:
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

    def _undraft(self, draft: np.ndarray, full: tuple[int, int], dets: Detections, raw: Any,
                 source: str) -> tuple[np.ndarray, _Choice]:
        """The choice among a draft's detections (in full-photo pixels), and the image its crops
        come from: the draft, or the full photo when a chosen face is too small in the draft (its
        crop would be enlarged from the draft)."""
        choice = self._choose(draft, dets.boxes, dets.scores, dets.landmarks, full=full)
        small = any(min(b[2] - b[0], b[3] - b[1]) < min(self._crop_shape) for b in choice.crop_boxes)
        if not small:
            return draft, choice
        image = decode_image(raw, source=source, max_pixels=self._align.max_pixels,
                             exif_orientation=self._align.exif_orientation)
        return image, self._choose(image, choice.boxes, choice.scores, choice.landmarks)

    def _choose(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, landmarks: np.ndarray, *,
                full: tuple[int, int] | None = None) -> _Choice:
        """Quality of every face, the filters, the selection and the crops of one photo.

        Args:
            image: the ``HxWx3`` image the faces are cropped from.
            boxes, scores, landmarks: ``[K, 4]``, ``[K]`` (``None``: given landmarks, no detector
                rules apply) and ``[K, 5, 2]`` in the pixels of ``image``.
            full: the full photo's ``(h, w)`` when ``image`` is a JPEG draft of it.
        """
        cfg = self._align
        k = len(landmarks)
        if full is None:
            full_boxes, full_landmarks, shape = boxes, landmarks, image.shape[:2]
        else:
            scale = np.array([full[1] / image.shape[1], full[0] / image.shape[0]], np.float32)
            full_boxes, full_landmarks, shape = boxes * np.tile(scale, 2), landmarks * scale, full
        quality_crops = align_faces(image, landmarks, 112).crops if k else np.zeros((0, 112, 112, 3), np.uint8)
        quality = face_quality(full_boxes, full_landmarks, quality_crops)
        if scores is None:
            eligible = np.ones(k, bool)
        else:  # the detector's rules (pipeline.select), in full-photo pixels
            side = np.minimum(full_boxes[:, 2] - full_boxes[:, 0], full_boxes[:, 3] - full_boxes[:, 1])
            eligible = (scores >= cfg.min_score) & (side >= cfg.min_face_size)
        reasons = [self._filter.reasons(q) if ok else [] for q, ok in zip(quality, eligible)]
        passing = np.array([i for i in range(k) if eligible[i] and not reasons[i]], np.int64)
        if scores is None or not len(passing):
            chosen = passing
        else:
            order = select_faces(full_boxes[passing], scores[passing], image_shape=shape, mode=cfg.select,
                                 max_faces=cfg.max_faces)
            chosen = passing[order]
        filtered = ""
        if not len(chosen) and any(reasons):
            filtered = "; ".join(f"face {i}: {', '.join(r)}" for i, r in enumerate(reasons) if r)
        if not len(chosen):
            crops = None
        elif cfg.image_size == 112 and cfg.crop == "arcface":  # the quality crops are the output crops
            crops = quality_crops[chosen]
        else:
            crops = align_faces(image, landmarks[chosen], cfg.image_size, variant=cfg.crop).crops
        return _Choice(boxes=full_boxes, scores=scores, landmarks=full_landmarks, quality=quality,
                       selected=[int(i) for i in chosen], crops=crops, crop_boxes=np.asarray(boxes)[chosen],
                       filtered=filtered)

    def _given(self, image: np.ndarray, points: np.ndarray) -> _Choice:
        """The choice for given ``[5, 2]`` float64 points (kept in float64: crops equal
        ``norm_crop``)."""
        h, w = image.shape[:2]
        inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
        if not inside.any():
            raise _PhotoError(f"the given landmarks lie outside the {w}x{h} photo")
        return self._choose(image, box_from_landmarks(points[None]), None, points[None])

    def _detect_rows(self, images: list[np.ndarray]) -> list[Detections]:
        return self._aligner.detect(images)

    def _detect_chunk(self, images: dict[int, np.ndarray]) -> tuple[dict[int, Detections], dict[int, str]]:
        """One detector call for the chunk; if it fails, photo by photo, so that one bad photo
        only fails itself."""
        try:
            return dict(zip(images, self._detect_rows(list(images.values())))), {}
        except Exception:
            results, failures = {}, {}
            for i, image in images.items():
                try:
                    results[i] = self._detect_rows([image])[0]
                except Exception as e:
                    failures[i] = _text(f"detection failed: {type(e).__name__}: {e}")
            return results, failures

    def _row(self, image: np.ndarray | None, choice: _Choice | None, error: str, *,
             size: tuple[int, int] | None = None) -> dict[str, Any]:
        h, w = self._crop_shape
        size = size or (image.shape[:2] if image is not None else (0, 0))
        row = {"status": STATUS_ERROR, "error": error, "faces": "[]", "selected": "[]",
               "height": int(size[0]), "width": int(size[1]), "crops": None, "landmarks": "", "filtered": ""}
        if choice is not None:
            row.update(error="", faces=json.dumps(_faces_json(choice, choice.quality)),
                       selected=json.dumps(choice.selected), landmarks="given" if choice.given else "detected")
            if choice.selected:
                row.update(status=STATUS_OK, crops=choice.crops)
            elif choice.filtered:
                row.update(status=STATUS_FILTERED, filtered=choice.filtered)
            else:
                row["status"] = STATUS_NO_FACE
                if self._on_no_face == "center-crop":
                    row["crops"] = center_crop(image, (h, w))[None]
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["src"])
        rows: list[dict[str, Any] | None] = [None] * n
        given = [unpack_points(v) for v in batch["landmarks"]] if "landmarks" in batch else [None] * n
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
                    images[i], full = self._image(i, batch, draft=given[i] is None)  # given: full size
                    if full is not None:
                        drafts[i] = full
                except ImageReadError as e:
                    rows[i] = self._row(None, None, _text(e.reason))
            to_detect = {i: image for i, image in images.items() if given[i] is None}
            results, failures = self._detect_chunk(to_detect) if to_detect else ({}, {})
            for i, image in images.items():
                size = drafts.get(i)
                try:
                    if given[i] is not None:
                        choice = self._given(image, given[i])
                    elif i not in results:
                        rows[i] = self._row(image, None, failures.get(i, "detection failed"))
                        continue
                    elif size is not None:
                        image, choice = self._undraft(image, size, results[i], batch["data"][i],
                                                      os.fsdecode(batch["src"][i]))
                    else:
                        dets = results[i]
                        choice = self._choose(image, dets.boxes, dets.scores, dets.landmarks)
                except ImageReadError as e:
                    rows[i] = self._row(None, None, _text(e.reason))
                    continue
                except _PhotoError as e:
                    rows[i] = self._row(image, None, _text(str(e)))
                    continue
                except Exception as e:  # one photo's failure must not fail the batch: record it
                    rows[i] = self._row(image, None, _text(f"alignment failed: {type(e).__name__}: {e}"))
                    continue
                rows[i] = self._row(image, choice, "", size=size)
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
            "landmarks": pa.array([r["landmarks"] for r in rows], pa.string()),
            "filtered": pa.array([r["filtered"] for r in rows], pa.string()),
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
        if "landmarks" in batch and batch["landmarks"][i]:  # "given" | "detected": reached alignment
            record["landmarks"] = str(batch["landmarks"][i])
        if "filtered" in batch and batch["filtered"][i]:  # why every face failed the quality filter
            record["filtered"] = str(batch["filtered"][i])
        if "identity" in batch:  # identity, identity_distance, identity_outlier, embedding_row
            record.update(json.loads(batch["identity"][i]))
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


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    """An Arrow batch as Ray Data's ``batch_format="numpy"`` would hand it over."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def with_io(predictor: type) -> type:
    """``predictor`` (a Ray Data callable class, e.g. :class:`FaceCropPredictor`) that reads its
    chunk's files first (:func:`read_images`, taking the chunk of names) and, given ``write``,
    writes the crops after (:func:`write_crops`, returning the manifest records): the whole chunk
    in one actor call.

    Constructor: ``read`` (the keyword arguments of :func:`read_images`), ``write`` (those of
    :func:`write_crops`, or ``None`` to return the predictor's own rows), and the predictor's own.
    The class keeps the predictor's name (Ray names the actors after it)."""

    class WithIO(predictor):
        def __init__(self, *, read: dict[str, Any], write: dict[str, Any] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._read_kwargs = read
            self._write_kwargs = write

        def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
            table = super().__call__(_columns(read_images(batch, **self._read_kwargs)))
            return table if self._write_kwargs is None else write_crops(_columns(table), **self._write_kwargs)

    WithIO.__name__, WithIO.__qualname__ = predictor.__name__, predictor.__qualname__
    WithIO.__doc__ = predictor.__doc__
    return WithIO
