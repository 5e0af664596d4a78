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
from typing import Any

import numpy as np
import pyarrow as pa

from detector.spec import DetectorSpec
from pipeline.align import center_crop
from pipeline.config import AlignConfig
from pipeline.curation.landmarks import unpack_points
from pipeline.curation.quality import QualityFilter
from pipeline.images import ImageReadError, decode_image
from pipeline.records import STATUS_ERROR, STATUS_FILTERED, STATUS_NO_FACE, STATUS_OK, FaceRecord, PhotoRecord
from pipeline.stage import FaceChoice, PhotoInput
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
                exif_orientation: bool, draft: Any = None) -> pa.Table:
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

    ``draft`` (with ``decode``; the detector's :class:`detector.config.ResizePolicy`): a JPEG the
    policy shrinks 2x or more is decoded as a draft at about the detection size; ``pixels`` then
    holds the draft (uint8), ``height``/``width`` its size, ``full_height``/``full_width`` the
    photo's, and ``data`` the file's bytes (see :mod:`pipeline.job.feed`).
    """
    from pipeline.job.feed import decode_for_detection

    sources, stems = _unchunk(batch["src"]), _unchunk(batch["stem"])
    drafts: list[bytes] = []
    fulls: list[tuple[int, int]] = []
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
            pixels, full = b"", (0, 0)
            if decode and draft is not None:
                image, drafted = decode_for_detection(raw, source=rel, resize=draft, max_pixels=max_pixels,
                                                      exif_orientation=exif_orientation)
                if drafted is None:
                    raw = image.tobytes()
                else:
                    pixels, full = image.tobytes(), drafted
                h, w = image.shape[:2]
            elif decode:
                image = decode_image(raw, source=rel, max_pixels=max_pixels, exif_orientation=exif_orientation)
                raw, (h, w) = image.tobytes(), image.shape[:2]
            else:
                h = w = 0
            drafts.append(pixels)
            fulls.append(full)
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
        drafts.append(b"")
        fulls.append((0, 0))
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
    if draft is not None and decode:
        table = table.append_column("pixels", pa.array(drafts, pa.large_binary()))
        table = table.append_column("full_height", pa.array([f[0] for f in fulls], pa.int32()))
        table = table.append_column("full_width", pa.array([f[1] for f in fulls], pa.int32()))
    if "identity" in batch:  # per-photo JSON of the identity pass (pipeline.job.identity), passed through
        texts = [t for value in batch["identity"] for t in ([value] if isinstance(value, str) else value)]
        table = table.append_column("identity", pa.array([str(t) for t in texts], pa.string()))
    if "landmarks" in batch:  # given points (pipeline.curation.landmarks), passed through
        table = table.append_column("landmarks", pa.array(_unchunk(batch["landmarks"]), pa.binary()))
    return table


def _faces_json(choice: FaceChoice) -> list[dict[str, Any]]:
    """The manifest's ``faces``: box, score (``None`` for given landmarks), landmarks, and the
    ``quality`` dict of each face."""
    faces = [
        {"box": [round(float(v), 2) for v in choice.boxes[i]],
         "score": None if choice.scores is None else round(float(choice.scores[i]), 5),
         "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in choice.landmarks[i]]}
        for i in range(len(choice.landmarks))
    ]
    for face, q in zip(faces, choice.quality):
        face["quality"] = q
    return faces


class FaceCropPredictor:
    """Ray Data actor: the job's adapter of :class:`pipeline.stage.FaceAligner` (the one alignment
    path: detection, refinement, quality, filters, selection, crops).

    The aligner (and its detector) is built once per actor in ``__init__`` (the Ray
    batch-inference pattern). ``__call__`` takes a :func:`read_images` batch as
    ``dict[str, np.ndarray]`` (rows holding a file's bytes are decoded by the aligner, as JPEG
    drafts unless ``draft=False``; rows decoded by the read tasks arrive as pixels or as JPEG drafts
    with the file, :func:`pipeline.job.feed.photo_input`) and returns an
    Arrow batch, one row per photo: ``src``, ``stem``, ``status``, ``error``, ``faces`` (JSON: every
    detection with score >= ``min_score``, with its ``quality``), ``selected`` (JSON: indices into
    ``faces``, one per crop), ``height``, ``width`` (the full photo's), ``num_crops``, ``crops``
    (the ``[num_crops, h, w, 3]`` uint8 BGR crops as raw bytes), ``landmarks`` (``"given"``,
    ``"detected"``, or ``""`` for a photo that never reached alignment) and ``filtered`` (why
    every face failed the quality filter, or "").

    A row with given points (the ``landmarks`` column, :mod:`pipeline.curation.landmarks`) is
    aligned from them without detection.
    """

    takes_read_drafts = True
    """Rows of read tasks that decode JPEG drafts are taken as drafts (:mod:`pipeline.job.feed`)."""

    def __init__(self, *, detector: DetectorSpec, align: AlignConfig, detect_batch_size: int = 1,
                 on_no_face: str = "skip", draft: bool = False,
                 quality_filter: QualityFilter | None = None) -> None:
        import warnings

        from pipeline.stage import FaceAligner

        # pixels arrive as read-only views of Ray's object store; the detector only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self._aligner = FaceAligner(detector=detector.build, config=align, quality_filter=quality_filter,
                                    draft=draft)
        self._detect_batch_size = max(1, int(detect_batch_size))
        self._on_no_face = on_no_face
        self._crop_shape = align.crop_shape

    def _photo(self, row: int, batch: dict[str, np.ndarray], given: np.ndarray | None) -> PhotoInput:
        from pipeline.job.feed import photo_input

        return photo_input(batch, row, landmarks=given)

    def _row(self, choice: FaceChoice | None, error: str) -> dict[str, Any]:
        size = choice.shape if choice is not None else (0, 0)
        row = {"status": STATUS_ERROR, "error": _text(error or (choice.error if choice else "")), "faces": "[]",
               "selected": "[]", "height": int(size[0]), "width": int(size[1]), "crops": None,
               "landmarks": "", "filtered": ""}
        if choice is None or choice.error:
            return row
        row.update(error="", faces=json.dumps(_faces_json(choice)), selected=json.dumps(choice.selected),
                   landmarks="given" if choice.given else "detected")
        if choice.selected:
            row.update(status=STATUS_OK, crops=choice.crops)
        elif choice.filtered:
            row.update(status=STATUS_FILTERED, filtered=choice.filtered)
        else:
            row["status"] = STATUS_NO_FACE
            if self._on_no_face == "center-crop" and choice.image is not None:
                row["crops"] = center_crop(choice.image, self._crop_shape)[None]
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["src"])
        rows: list[dict[str, Any] | None] = [None] * n
        given = [unpack_points(v) for v in batch["landmarks"]] if "landmarks" in batch else [None] * n
        todo = []
        for i, error in enumerate(batch["error"]):
            if error:
                rows[i] = self._row(None, str(error))
            else:
                todo.append(i)
        if self._detect_batch_size > 1:  # photos decoded by the read tasks: same sizes together
            todo.sort(key=lambda i: (int(batch["height"][i]), int(batch["width"][i])))
        step = self._detect_batch_size
        for start in range(0, len(todo), step):  # photos decoded here are held one call at a time
            part = todo[start:start + step]
            for i, choice in zip(part, self._aligner.run([self._photo(i, batch, given[i]) for i in part])):
                rows[i] = self._row(choice, "")
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
        record = PhotoRecord(
            src=os.fsdecode(batch["src"][i]), status=str(batch["status"][i]), error=str(batch["error"][i]),
            outputs=tuple(outputs), faces=tuple(FaceRecord.from_json(f) for f in json.loads(batch["faces"][i])),
            selected=tuple(json.loads(batch["selected"][i])),
            height=int(batch["height"][i]), width=int(batch["width"][i]),
            # "given" | "detected": reached alignment; why every face failed the quality filter
            landmarks=str(batch["landmarks"][i]) if "landmarks" in batch else "",
            filtered=str(batch["filtered"][i]) if "filtered" in batch else "",
            # identity, identity_distance, identity_outlier, embedding_row (pipeline.job.identity)
            **(json.loads(batch["identity"][i]) if "identity" in batch else {}),
        )
        records.append(record.to_json())
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
