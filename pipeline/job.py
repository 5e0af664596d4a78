"""The align-dataset job: a folder tree of photos -> aligned face crops, on Ray Data.

Pipeline (one streaming Ray Data dataset)::

    relative paths (driver: walk ``src``, drop inputs already done, cut the rest into chunks)
      -> read_images      CPU tasks: read the files; decode them (format by content, EXIF,
                          pixel cap) when the actors have GPUs, else the actors decode
      -> FaceCropPredictor actor pool: detect, select, align; the model is loaded once per
                          actor; GPU actors (one GPU each) detect the whole batch in one call,
                          CPU actors one photo per call (faster there, see plan_workers)
      -> write_crops      CPU tasks: encode, write each crop atomically, build the manifest record
      -> driver           appends each record to ``dst/manifest.jsonl``, drives the progress bar

A chunk (sizes from :func:`guided_chunks`: a few photos at first, up to ``batch_size`` in the
middle, shrinking at the end) is one Ray block: one read task, one actor call, one write task.
Large chunks keep Ray's per-task cost low, the shrinking tail lets every actor finish together, at
most :data:`TASKS_IN_FLIGHT_PER_ACTOR` chunks wait at an actor, and :func:`object_store_budget`
caps the object store the dataset may fill, so that reading stays a few chunks ahead of the actors
instead of buffering the whole job. The driver and the read/write tasks never import torch.

Images of different sizes travel as plain Arrow binary columns (the file's bytes, or decoded
pixels with their height and width beside them), never as tensor columns, so Ray never builds
(variable-shaped) tensor columns from them; the same holds for the crops.

Resume contract: an input is done when its latest manifest record has status ``ok`` or
``no_face`` and every output it lists exists. Outputs are renamed into place before their record
is appended, so a kill at any moment leaves either a trusted record with complete outputs, or no
record (the input is redone; its outputs are atomically replaced). ``error`` records are retried.
At the end the manifest is compacted to one record per input (sorted by ``src``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import random
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.config import AlignConfig  # torch-free: the driver and the read/write tasks never load torch
from pipeline.images import ImageReadError, decode_image, probe_image
from pipeline.recordio import ArcFaceRecordWriter
from pipeline.writers import (
    ManifestWriter,
    OutputLayout,
    atomic_write_bytes,
    atomic_write_text,
    compact_manifest,
    iter_manifest,
    outputs_complete,
    remove_temporaries,
)

__all__ = [
    "AlignJobConfig",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_FILES_FAILED",
    "FaceCropPredictor",
    "JobConfigError",
    "JobSummary",
    "WorkerPlan",
    "estimate_input_bytes",
    "guided_chunks",
    "object_store_budget",
    "list_inputs",
    "plan_workers",
    "read_images",
    "run_align_job",
    "write_crops",
    "write_recordio_from_manifest",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STATUS_OK, STATUS_NO_FACE, STATUS_ERROR = "ok", "no_face", "error"
STATUSES = (STATUS_OK, STATUS_NO_FACE, STATUS_ERROR)
DONE_STATUSES = frozenset({STATUS_OK, STATUS_NO_FACE})

EXIT_OK = 0
"""Every input has an ``ok`` or ``no_face`` record."""
EXIT_USAGE = 2
"""Nothing was processed: bad arguments, missing ``src`` or weights, or a ``dst`` made with
different settings (rerun with ``--overwrite``)."""
EXIT_FILES_FAILED = 3
"""The job finished, but some inputs have ``error`` records (see the manifest)."""

MAX_INPUT_BLOCKS = 10_000
"""About this many chunks (Ray blocks) per run at most: huge listings get larger chunks."""
MIN_CHUNK = 4
"""Smallest chunk of the shrinking tail (see :func:`guided_chunks`)."""
TASKS_IN_FLIGHT_PER_ACTOR = 2
"""Chunks queued on one actor: one running, one ready (no idle gap), and never a queue of
several large chunks on one actor while another runs out of work at the end."""
MAX_BLOCK_BYTES = 128 * 2**20
"""Ray Data's default ``target_max_block_size``: larger read outputs are split into blocks."""
MIN_OBJECT_STORE_BUDGET = 256 * 2**20
"""Floor of the job's object-store budget (see :func:`object_store_budget`)."""
OBJECT_STORE_SHARE = 0.5
"""Ray Data's own default: a dataset may use half of the cluster's object store."""
MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
JOB_NAME = "job.json"
LOCK_NAME = ".align-job.lock"
IDENTITIES_NAME = "identities.tsv"


class JobConfigError(ValueError):
    """The job cannot start as configured (the CLI exits with :data:`EXIT_USAGE`)."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True, kw_only=True)
class AlignJobConfig:
    """Everything the job needs; validated on construction.

    Attributes:
        src: folder of photos (any depth; the top-level sub-folder is the identity).
        dst: output folder; mirrors ``src``'s relative paths, plus manifest/summary files.
        align: detection/selection/alignment settings (its ``on_error`` is forced to ``record``).
        on_no_face: ``"skip"`` (no output) or ``"center-crop"`` (a centred crop of the photo).
        weights: weights path or registry name for :func:`detector.hub.resolve_weights`
            (``None``: ``$FACEPREP_WEIGHTS``, the cache, then a download).
        ext: crop file format, ``"jpg"`` or ``"png"``.
        quality: JPEG quality (1-100) for crop files and RecordIO payloads.
        format: ``"folder"`` (crop files only) or ``"recordio"`` (also ``train.rec``/``.idx``/
            ``property`` in ``dst``).
        batch_size: photos per actor call, the largest chunk (calls shrink towards the end of the
            run, see :func:`guided_chunks`), and per detector call on GPU; ``None``: from the
            resources Ray sees (:func:`plan_workers`).
        num_workers: detector actors; ``None``: from the resources Ray sees.
        device: ``"auto"`` (GPU actors when Ray has GPUs), ``"cpu"`` or ``"cuda"``.
        torch_threads: intra-op threads per actor; ``None``: 1 (2 from 8 CPUs up).
        limit: only the first ``limit`` inputs (sorted relative paths).
        dry_run: list and plan only; write nothing, start nothing.
        overwrite: trust no existing record: redo every (listed, limited) input; the new records
            supersede the old ones, and ``dst`` may hold outputs made with other settings.
        address: Ray cluster address (``None``: the Ray already initialised in this process,
            else ``$RAY_ADDRESS``, else a new local Ray).
        progress: show a progress bar.
        durable: fsync outputs and manifest lines (survive power loss, not only kills).
        decode: where photos are decoded, see :func:`plan_workers`.
    """

    src: Path
    dst: Path
    align: AlignConfig = field(default_factory=lambda: AlignConfig(on_error="record"))
    on_no_face: Literal["skip", "center-crop"] = "skip"
    weights: str | None = None
    ext: Literal["jpg", "png"] = "jpg"
    quality: int = 95
    format: Literal["folder", "recordio"] = "folder"
    batch_size: int | None = None
    num_workers: int | None = None
    device: str = "auto"
    torch_threads: int | None = None
    limit: int | None = None
    dry_run: bool = False
    overwrite: bool = False
    address: str | None = None
    progress: bool = True
    durable: bool = False
    decode: Literal["auto", "tasks", "actors"] = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "dst", Path(self.dst))
        if not isinstance(self.align, AlignConfig):
            raise TypeError(f"align must be an AlignConfig, got {type(self.align).__name__}")
        if self.align.on_error != "record":
            object.__setattr__(self, "align", dataclasses.replace(self.align, on_error="record"))
        if self.align.color != "bgr":
            raise ValueError("the job writes BGR crops with OpenCV; use AlignConfig(color='bgr')")
        if self.on_no_face not in ("skip", "center-crop"):
            raise ValueError(f"on_no_face must be 'skip' or 'center-crop', got {self.on_no_face!r}")
        if self.ext not in ("jpg", "png"):
            raise ValueError(f"ext must be 'jpg' or 'png', got {self.ext!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.format not in ("folder", "recordio"):
            raise ValueError(f"format must be 'folder' or 'recordio', got {self.format!r}")
        for name in ("batch_size", "num_workers", "torch_threads", "limit"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @property
    def layout(self) -> OutputLayout:
        per_face = self.align.select == "all" or (self.align.max_faces or 1) > 1
        return OutputLayout(ext=self.ext, per_face=per_face)

    def fingerprint(self, weights_path: Path | None) -> dict[str, Any]:
        """The settings that decide what the outputs are (compared when resuming)."""
        a = self.align
        return {
            "src": str(self.src.resolve()),
            "image_size": a.image_size, "crop": a.crop, "select": a.select, "max_faces": a.max_faces,
            "min_score": a.min_score, "min_face_size": a.min_face_size, "resize": _policy_str(a.resize),
            "max_pixels": a.max_pixels, "exif_orientation": a.exif_orientation,
            "on_no_face": self.on_no_face, "ext": self.ext, "quality": int(self.quality),
            "weights": None if weights_path is None else weights_path.name,
        }


def _policy_str(policy: Any) -> str:
    if policy.mode == "original":
        return "original"
    return f"{policy.mode}:{policy.size}" + (f",{policy.max_size}" if policy.max_size else "")


@dataclass(frozen=True, kw_only=True)
class WorkerPlan:
    """How the stages are laid out on Ray resources (see :func:`plan_workers`).

    ``decode_in_tasks``: the read tasks decode and pass pixels to the actors; otherwise they
    pass the file bytes and the actors decode. ``read_cpus`` differs from ``cpus_per_actor`` so
    that Ray Data never fuses the read tasks into the actors: reading runs in its own tasks,
    overlapping inference.
    """

    device: str
    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    torch_threads: int
    batch_size: int
    detect_batch_size: int
    decode_in_tasks: bool
    read_cpus: float
    write_cpus: float

    def chunks(self, rows: int) -> list[int]:
        """Photos per actor call for a run of ``rows`` photos (:func:`guided_chunks`)."""
        largest = max(self.batch_size, math.ceil(rows / MAX_INPUT_BLOCKS))
        return guided_chunks(rows, workers=self.num_actors, max_size=largest,
                             min_size=min(MIN_CHUNK, self.batch_size))

    def fitted(self, chunks: Sequence[int]) -> WorkerPlan:
        """This plan for a run split into ``chunks`` (from :meth:`chunks`): ``batch_size``
        becomes the largest chunk, and there are no more actors than chunks."""
        largest = max(chunks, default=1)
        return dataclasses.replace(self, batch_size=largest, num_actors=max(1, min(self.num_actors, len(chunks))),
                                   detect_batch_size=min(self.detect_batch_size, largest))

    def describe(self) -> str:
        where = f"{self.gpus_per_actor:g} GPU + " if self.gpus_per_actor else ""
        return (f"{self.num_actors} {self.device} actor(s) x ({where}{self.cpus_per_actor:g} CPU, "
                f"{self.torch_threads} torch thread(s)), chunks of up to {self.batch_size} photos "
                f"(detector calls of {self.detect_batch_size}); "
                f"decoding in the {'read tasks' if self.decode_in_tasks else 'actors'}; "
                f"read tasks {self.read_cpus:g} CPU, write tasks {self.write_cpus:g} CPU")


def plan_workers(resources: Mapping[str, float], *, device: str = "auto", num_workers: int | None = None,
                 batch_size: int | None = None, torch_threads: int | None = None,
                 decode: str = "auto") -> WorkerPlan:
    """Actor count, per-actor resources and batch size from what Ray sees.

    GPUs: one actor per GPU (``num_gpus=1``, one CPU), batch 32; read/decode tasks use the
    other CPUs. CPU only: one single-threaded actor per CPU (two threads each from 8 CPUs up),
    sharing the CPUs minus a reserve of ``max(1, CPUs // 4)`` (fractional ``num_cpus``): the
    actor pool can never hold every CPU and starve the read/decode and write tasks that feed
    and drain it, and every core still has an inference process to run when decoding is idle.
    Several single-threaded processes beat one multi-threaded one for a small CNN and do not
    spin against each other on a busy machine. Chunks of up to 64 photos per actor call: every
    Ray task costs CPU in the driver, the raylet and the workers, which a 2-core machine takes
    from the actors (1,000 photos there, fixed chunks: 9.9 photos/s with 8, 11.9 with 16, 12.8
    with 32; no gain from 128 once the tail shrinks, see :func:`guided_chunks`), but one photo per detector
    call: on CPU a batched forward is slower per photo (one thread, MobileNet-0.25 at 1024x768:
    ~70 ms per photo alone, ~106 ms per photo in batches of 8; worse with photos of different
    sizes, padded to the largest). Flags override.

    Decoding (``decode="auto"``): in the read tasks when the actors have GPUs (the GPU actor
    must not spend its time decoding); in the actors on CPU, where every core already runs an
    actor and moving decoded pixels (10-40x the file size) through the object store only adds
    copies. ``"tasks"`` / ``"actors"`` force either.
    """
    if decode not in ("auto", "tasks", "actors"):
        raise ValueError(f"decode must be 'auto', 'tasks' or 'actors', got {decode!r}")
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if cpus <= 0:
        raise JobConfigError("Ray reports no CPUs; the job needs at least one")
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1)
    if use_gpu:
        if gpus < 1:
            raise JobConfigError("--device cuda, but Ray sees no GPU")
        n = num_workers or max(1, int(gpus))
        per_actor = min(1.0, max(cpus - 1.0, 0.5) / n)
        return WorkerPlan(device="cuda", num_actors=n, cpus_per_actor=round(per_actor, 4),
                          gpus_per_actor=round(min(1.0, gpus / n), 4), torch_threads=torch_threads or 1,
                          batch_size=batch_size or 32, detect_batch_size=batch_size or 32,
                          decode_in_tasks=decode != "actors", read_cpus=_distinct(1.0, per_actor),
                          write_cpus=0.5)
    reserve = min(max(1.0, math.floor(cpus / 4)), cpus / 2)
    threads = torch_threads or (1 if cpus < 8 else 2)
    n = num_workers or max(1, int(cpus // threads))
    per_actor = round((cpus - reserve) / n, 4)
    return WorkerPlan(device="cpu", num_actors=n, cpus_per_actor=per_actor, gpus_per_actor=0.0,
                      torch_threads=threads, batch_size=batch_size or 64, detect_batch_size=1,
                      decode_in_tasks=decode == "tasks", read_cpus=_distinct(min(0.5, reserve / 2), per_actor),
                      write_cpus=min(0.25, reserve / 4))


def guided_chunks(total: int, *, workers: int, max_size: int, min_size: int = 1) -> list[int]:
    """Split ``total`` photos into chunks (one actor call each): small first, large in the
    middle, shrinking at the end.

    Guided self-scheduling (Polychronopoulos and Kuck, 1987): a chunk takes
    ``ceil(remaining / (2 * workers))`` photos, clamped to ``[min_size, max_size]``. Large chunks
    keep the per-task overhead low; shrinking ones at the end leave no actor with a large chunk
    while the others have nothing left to do, and spread a small run over the workers (no chunk
    below ``min_size`` photos, though: an actor costs seconds to start). The
    first chunks ramp up instead (``min_size``, doubling with each round of ``workers`` chunks)
    so that the first results, and the progress bar, come after a few photos rather than a full
    chunk. Sizes sum to ``total``.
    """
    if total < 0 or workers < 1 or max_size < 1 or min_size < 1:
        raise ValueError(f"bad chunking request: total={total}, workers={workers}, "
                         f"max_size={max_size}, min_size={min_size}")
    min_size = min(min_size, max_size)
    sizes: list[int] = []
    remaining = total
    while remaining > 0:
        ramp = min_size << min(len(sizes) // workers, 30)
        size = min(remaining, max_size, ramp, max(min_size, math.ceil(remaining / (2 * workers))))
        sizes.append(size)
        remaining -= size
    return sizes


def estimate_input_bytes(src: Path, rels: Sequence[str], *, decoded: bool, sample: int = 64) -> float:
    """Mean bytes one photo occupies between the read tasks and the actors: the file size, or
    the decoded ``H x W x 3`` pixels when the read tasks decode. Measured on up to ``sample``
    photos drawn from ``rels`` (seeded, so a rerun plans the same; a ``stat`` each; for pixels, a
    header read of the first 256 KiB). Unreadable samples are ignored; with none left, 1 MiB
    (files) or 12 MiB (pixels)."""
    if not rels:
        return 0.0
    picked = rels if len(rels) <= sample else random.Random(0).sample(list(rels), sample)
    sizes: list[float] = []
    for rel in picked:
        path = os.path.join(src, rel)
        try:
            if not decoded:
                sizes.append(float(os.stat(path).st_size))
                continue
            with open(path, "rb") as f:
                info = probe_image(f.read(256 * 1024), source=rel)
            sizes.append(float(info.height * info.width * 3))
        except (OSError, ImageReadError):
            continue
    if not sizes:
        return float(12 * 2**20 if decoded else 2**20)
    return sum(sizes) / len(sizes)


def object_store_budget(plan: WorkerPlan, *, photo_bytes: float, cluster_cpus: float,
                        cluster_object_store: float | None) -> int | None:
    """Object-store bytes the job's dataset may hold, or ``None`` for Ray Data's default.

    Room for every actor's running and queued chunks (``TASKS_IN_FLIGHT_PER_ACTOR``) plus one
    more each, and for the output of every read task that can run at once on the CPUs the actors
    leave free: blocks of ``batch_size x photo_bytes``, each at most :data:`MAX_BLOCK_BYTES`; at
    least :data:`MIN_OBJECT_STORE_BUDGET`. Without a budget Ray Data lets the read tasks run
    ahead until half the object store is full: on a small job that is every input photo held in
    memory, and memory would grow with the job's size. ``None`` where the budget would not be
    below Ray's default anyway.
    """
    free_cpus = cluster_cpus - plan.num_actors * plan.cpus_per_actor - plan.write_cpus
    read_tasks = max(1, math.floor(free_cpus / plan.read_cpus + 1e-9)) if plan.read_cpus > 0 else 1
    blocks = plan.num_actors * (TASKS_IN_FLIGHT_PER_ACTOR + 1) + read_tasks
    block = min(MAX_BLOCK_BYTES, max(1.0, plan.batch_size * photo_bytes))
    budget = max(MIN_OBJECT_STORE_BUDGET, int(blocks * block))
    if cluster_object_store and budget >= OBJECT_STORE_SHARE * cluster_object_store:
        return None
    return budget


def _distinct(value: float, other: float) -> float:
    """``value``, nudged if equal to ``other`` (equal remote args would let Ray fuse the stages)."""
    return value if abs(value - other) > 1e-6 else round(value * 0.9, 4)


# --------------------------------------------------------------------------------------------
# listing and resume


def list_inputs(src: Path, *, exclude: Path | None = None,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted POSIX relative paths of the image files under ``src`` (by extension, any case).

    Hidden names (``.*``, e.g. macOS ``._x.jpg`` forks) are skipped, as is ``exclude`` (the
    output folder when it lies inside ``src``). Symlinks to files are listed (a dangling one
    gets an ``error`` record); symlinked folders are not followed.
    """
    exts = {e.lower() for e in extensions}
    src = Path(src)
    excluded = exclude.resolve() if exclude is not None else None
    out: list[str] = []

    def unreadable(err: OSError) -> None:
        log.warning("cannot list %s: %s (skipped)", err.filename, err.strerror)

    for folder, dirs, files in os.walk(src, onerror=unreadable):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (excluded is None or (here / d).resolve() != excluded))
        rel_dir = here.relative_to(src)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            out.append((PurePosixPath(*rel_dir.parts) / name).as_posix())
    out.sort()
    return out


def _done_inputs(manifest: Path, dst: Path) -> set[str]:
    """Inputs whose latest record is ``ok``/``no_face`` with every listed output present."""
    done: set[str] = set()
    for record in iter_manifest(manifest):
        src = record["src"]
        if record.get("status") in DONE_STATUSES and outputs_complete(dst, record):
            done.add(src)
        else:
            done.discard(src)
    return done


# --------------------------------------------------------------------------------------------
# Ray Data stages


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


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The largest centred window of ``image`` with the aspect of ``shape = (h, w)``, resized."""
    h, w = shape
    ih, iw = image.shape[:2]
    scale = min(ih / h, iw / w)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = (ih - ch) // 2, (iw - cw) // 2
    window = image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if ch >= h else cv2.INTER_LINEAR
    return cv2.resize(window, (w, h), interpolation=interp)


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
    """

    def __init__(self, *, weights: str, align: AlignConfig, device: str = "cpu", torch_threads: int = 1,
                 detect_batch_size: int = 1, on_no_face: str = "skip") -> None:
        import warnings

        import torch

        from detector.inference import Detector
        from pipeline.stage import FaceAligner

        torch.set_num_threads(max(1, int(torch_threads)))
        # pixels arrive as read-only views of Ray's object store; the detector only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self._aligner = FaceAligner(detector=partial(Detector.from_weights, weights, device=device),
                                    config=align)
        self._align = align
        self._detect_batch_size = max(1, int(detect_batch_size))
        self._on_no_face = on_no_face
        self._crop_shape = align.crop_shape

    def _image(self, row: int, batch: dict[str, np.ndarray]) -> np.ndarray:
        data, h, w = batch["data"][row], int(batch["height"][row]), int(batch["width"][row])
        if h:  # decoded by the read task
            return np.frombuffer(data, np.uint8).reshape(h, w, 3)
        return decode_image(data, source=os.fsdecode(batch["src"][row]), max_pixels=self._align.max_pixels,
                            exif_orientation=self._align.exif_orientation)

    def _align_rows(self, images: list[np.ndarray]) -> list[tuple[Any, list[Any]]]:
        dets = self._aligner.detect(images)
        faces = self._aligner.align_detections(images, dets)
        return list(zip(dets, faces))

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

    def _row(self, image: np.ndarray | None, result: tuple[Any, list[Any]] | None, error: str) -> dict[str, Any]:
        h, w = self._crop_shape
        row = {"status": STATUS_ERROR, "error": error, "faces": "[]", "selected": "[]",
               "height": 0 if image is None else int(image.shape[0]),
               "width": 0 if image is None else int(image.shape[1]), "crops": None}
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
            for i in todo[start:start + step]:
                try:
                    images[i] = self._image(i, batch)
                except ImageReadError as e:
                    rows[i] = self._row(None, None, _text(e.reason))
            results, failures = self._align_chunk(images) if images else ({}, {})
            for i, image in images.items():
                rows[i] = self._row(image, results.get(i), failures.get(i, "detection failed"))
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


def _encode(crop: np.ndarray, ext: str, quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(f".{ext}", crop, params)
    if not ok:
        raise RuntimeError(f"could not encode a crop as {ext}")
    return buf.tobytes()


def write_crops(batch: dict[str, np.ndarray], *, dst_root: str, layout: OutputLayout,
                crop_shape: tuple[int, int], quality: int, durable: bool = False) -> dict[str, np.ndarray]:
    """Encode and atomically write each row's crops (a CPU task); returns per row ``record`` (the
    manifest JSON line), ``status`` and ``num_outputs``. A failed output write raises (the job
    stops and can be resumed): it is a problem of ``dst``, not of the input."""
    h, w = crop_shape
    records, counts = [], []
    for i in range(len(batch["src"])):
        k = int(batch["num_crops"][i])
        crops = np.frombuffer(batch["crops"][i], np.uint8).reshape(k, h, w, 3)
        outputs = layout.outputs(os.fsdecode(batch["stem"][i]), k) if k else []
        for rel, crop in zip(outputs, crops):
            atomic_write_bytes(os.path.join(dst_root, rel), _encode(crop, layout.ext, quality), durable=durable)
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
        counts.append(len(outputs))
    return {"record": np.array(records, dtype=object), "status": np.asarray(batch["status"]),
            "num_outputs": np.array(counts, dtype=np.int64)}


# --------------------------------------------------------------------------------------------
# RecordIO


def write_recordio_from_manifest(dst: Path, *, image_size: tuple[int, int], quality: int) -> dict[str, Any]:
    """Pack every ``ok`` crop listed in the (compacted, sorted) manifest into ``dst/train.rec``.

    Label = index of the input's top-level folder, numbered in order of the sorted relative
    paths (``dst/identities.tsv`` maps label -> folder). Inputs directly under ``src`` have no
    identity and are left out (counted). PNG crops are re-encoded as JPEG.
    """
    identities: list[tuple[str, int]] = []  # (folder, images) in label order
    seen: set[str] = set()
    skipped = 0
    with ArcFaceRecordWriter(dst, image_size=image_size) as writer:
        for record in iter_manifest(dst / MANIFEST_NAME):
            if record.get("status") != STATUS_OK or not record.get("outputs"):
                continue
            parts = PurePosixPath(record["src"]).parts
            if len(parts) < 2:
                skipped += 1
                continue
            if not identities or identities[-1][0] != parts[0]:
                if parts[0] in seen:
                    raise ValueError(f"{dst / MANIFEST_NAME} is not sorted by src; compact it first")
                seen.add(parts[0])
                identities.append((parts[0], 0))
            label = len(identities) - 1
            for rel in record["outputs"]:
                data = (dst / rel).read_bytes()
                if not rel.lower().endswith((".jpg", ".jpeg")):
                    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    data = _encode(img, "jpg", quality)
                writer.add(label, data)
                identities[-1] = (parts[0], identities[-1][1] + 1)
        num_images = writer.num_images
    atomic_write_text(dst / IDENTITIES_NAME,
                      "".join(f"{i}\t{name}\t{count}\n" for i, (name, count) in enumerate(identities)))
    return {"images": num_images, "identities": len(identities), "skipped_without_identity": skipped,
            "rec": str(dst / "train.rec")}


# --------------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class JobSummary:
    """What a run did. ``counts`` cover every listed input (final manifest state); ``run_counts``
    and the rates cover the inputs processed by this run. ``process_s`` runs from the dataset's
    start (Ray already up) to the last record; ``warmup_s`` is its part until the first records
    (workers and actors starting, model loading), ``warmup_photos`` the records that arrived
    with the first batch; ``steady_photos_per_s`` is the rate after it."""

    src: str
    dst: str
    inputs: int
    already_done: int
    processed: int
    counts: dict[str, int]
    run_counts: dict[str, int]
    crops_written: int
    elapsed_s: float
    process_s: float
    photos_per_s: float
    faces_per_s: float
    plan: str
    warmup_s: float = 0.0
    steady_photos_per_s: float = 0.0
    warmup_photos: int = 0
    dry_run: bool = False
    recordio: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FILES_FAILED if self.counts.get(STATUS_ERROR, 0) else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exit_code": self.exit_code}

    def format(self) -> str:
        c = self.counts
        lines = [
            f"{'dry run: ' if self.dry_run else ''}{self.inputs} input(s) under {self.src}; "
            f"{self.already_done} already done, {self.processed} processed this run",
            f"status over all inputs: ok {c.get(STATUS_OK, 0)}, no_face {c.get(STATUS_NO_FACE, 0)}, "
            f"error {c.get(STATUS_ERROR, 0)}",
        ]
        if not self.dry_run and not self.processed:
            lines.append(f"this run: nothing to process, elapsed {self.elapsed_s:.1f} s")
        elif not self.dry_run:
            # the rate after the warm-up means something only when it covers most of the run
            steady = (f" ({self.steady_photos_per_s:.2f} photos/s after a {self.warmup_s:.1f} s warm-up)"
                      if 2 * self.warmup_photos < self.processed else "")
            lines.append(f"this run: {self.photos_per_s:.2f} photos/s, {self.faces_per_s:.2f} faces/s{steady}, "
                         f"{self.crops_written} crop(s) written, elapsed {self.elapsed_s:.1f} s")
        lines.append(f"workers: {self.plan}")
        if self.recordio:
            lines.append(f"recordio: {self.recordio['images']} image(s), {self.recordio['identities']} "
                         f"identity(ies) -> {self.recordio['rec']}")
        if c.get(STATUS_ERROR, 0):
            lines.append(f"some inputs failed: see records with \"status\": \"error\" in "
                         f"{Path(self.dst) / MANIFEST_NAME}")
        return "\n".join(lines)


def _check_paths(config: AlignJobConfig) -> None:
    src, dst = config.src.resolve(), config.dst.resolve()
    if not src.is_dir():
        hint = " (run with --demo to build a sample tree there)" if not src.exists() else ""
        raise JobConfigError(f"source folder {config.src} does not exist or is not a folder{hint}")
    if src == dst:
        raise JobConfigError("--src and --dst must differ")
    if src.is_relative_to(dst):
        raise JobConfigError(f"--dst {config.dst} contains --src {config.src}")


def _check_fingerprint(config: AlignJobConfig, fingerprint: dict[str, Any]) -> None:
    path = config.dst / JOB_NAME
    if config.overwrite or not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError):
        return
    changed = sorted(k for k in fingerprint if k in previous and previous[k] != fingerprint[k])
    if changed:
        details = ", ".join(f"{k}: {previous[k]!r} -> {fingerprint[k]!r}" for k in changed)
        raise JobConfigError(
            f"{config.dst} was made with different settings ({details}); resuming would mix "
            "outputs. Use another --dst, the same settings, or --overwrite to redo everything."
        )


def _resolve_weights(weights: str | None) -> Path:
    from detector.hub import CheckpointError, resolve_weights

    try:
        return resolve_weights(weights)
    except CheckpointError as e:
        raise JobConfigError(
            f"detector weights not available: {e}. With the file at hand, pass --weights PATH or "
            "set FACEPREP_WEIGHTS to the folder that holds it."
        ) from e


def _ray_resources(config: AlignJobConfig) -> tuple[Mapping[str, float], bool]:
    """Cluster resources, initialising Ray if needed; returns (resources, we_started_ray)."""
    import ray

    started = False
    if not ray.is_initialized():
        runtime_env = None
        if config.address:  # remote workers need our packages; local ones import the checkout
            import detector
            import pipeline

            dirs = [p for p in (*pipeline.__path__, *detector.__path__) if Path(p).is_dir()]
            runtime_env = {"py_modules": dirs}
        ray.init(address=config.address, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING, runtime_env=runtime_env)
        started = True
    return ray.cluster_resources(), started


def _build_dataset(todo: list[tuple[str, str]], chunks: Sequence[int], config: AlignJobConfig, plan: WorkerPlan,
                   weights: Path, budget: int | None):
    import ray

    # One block per chunk (guided sizes, see guided_chunks), one row per block holding the
    # chunk's names; each stage then maps a whole block (batch_size=None), so a chunk stays one
    # read task, one actor call and one write task. Names travel as bytes: Arrow strings must be
    # UTF-8, file names need not be.
    items, start = [], 0
    for size in chunks:
        chunk = todo[start:start + size]
        start += size
        items.append({"src": [os.fsencode(s) for s, _ in chunk], "stem": [os.fsencode(t) for _, t in chunk]})
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.enable_progress_bars = False  # our own bar counts manifest records
    if budget is not None:  # see object_store_budget
        from ray.data import ExecutionResources

        ds.context.execution_options.resource_limits = ExecutionResources.for_limits(object_store_memory=budget)
    ds = ds.map_batches(
        read_images, batch_size=None, batch_format="numpy", num_cpus=plan.read_cpus,
        fn_kwargs={"src_root": str(config.src.resolve()), "decode": plan.decode_in_tasks,
                   "max_pixels": config.align.max_pixels, "exif_orientation": config.align.exif_orientation},
    )
    ds = ds.map_batches(
        # decoded pixels may be split into several blocks (Ray's block size cap): re-bundle them
        FaceCropPredictor, batch_size=plan.batch_size if plan.decode_in_tasks else None, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors,
                                           max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT_PER_ACTOR),
        num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor or None,
        fn_constructor_kwargs={"weights": str(weights), "align": config.align, "device": plan.device,
                               "torch_threads": plan.torch_threads, "detect_batch_size": plan.detect_batch_size,
                               "on_no_face": config.on_no_face},
    )
    ds = ds.map_batches(
        write_crops, batch_size=None, batch_format="numpy", num_cpus=plan.write_cpus,
        fn_kwargs={"dst_root": str(config.dst.resolve()), "layout": config.layout,
                   "crop_shape": config.align.crop_shape, "quality": int(config.quality),
                   "durable": config.durable},
    )
    return ds


def _final_counts(manifest: Path, keep: set[str]) -> Counter:
    counts: Counter = Counter({s: 0 for s in STATUSES})
    for record in iter_manifest(manifest):
        if record["src"] in keep:
            counts[record.get("status", STATUS_ERROR)] += 1
    return counts


def run_align_job(config: AlignJobConfig) -> JobSummary:
    """Run (or resume) the job; returns its summary (also printed by the CLI and written to
    ``dst/summary.json``).

    Raises:
        JobConfigError: missing ``src`` or weights, or ``dst`` made with other settings.
    """
    t0 = time.perf_counter()
    _check_paths(config)
    src, dst = config.src, config.dst
    all_inputs = list_inputs(src, exclude=dst)
    inputs = all_inputs if config.limit is None else all_inputs[: config.limit]
    collide = OutputLayout.colliding(all_inputs)  # stable names whatever --limit is
    stems = {rel: OutputLayout.stem_of(rel, keep_suffix=rel in collide) for rel in inputs}

    def pending() -> tuple[set[str], list[tuple[str, str]]]:
        done = set() if config.overwrite else _done_inputs(dst / MANIFEST_NAME, dst) & set(inputs)
        return done, [(rel, stems[rel]) for rel in inputs if rel not in done]

    if config.dry_run:
        done, todo = pending()
        counts = _final_counts(dst / MANIFEST_NAME, done) if done else Counter()
        return JobSummary(src=str(src), dst=str(dst), inputs=len(inputs), already_done=len(done),
                          processed=0, counts=dict(counts), run_counts={}, crops_written=0,
                          elapsed_s=round(time.perf_counter() - t0, 3), process_s=0.0, photos_per_s=0.0,
                          faces_per_s=0.0, plan=f"{len(todo)} input(s) to process; workers decided at start",
                          dry_run=True)

    weights = _resolve_weights(config.weights)
    fingerprint = config.fingerprint(weights)
    _check_fingerprint(config, fingerprint)
    dst.mkdir(parents=True, exist_ok=True)
    with _exclusive(dst / LOCK_NAME):
        done, todo = pending()
        remove_temporaries(dst)
        atomic_write_text(dst / JOB_NAME, json.dumps({"settings": fingerprint}, indent=2) + "\n")
        return _run_locked(config, inputs, all_inputs, done, todo, weights, t0)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one job per ``dst`` on this machine)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobConfigError(f"another align job is writing to {path.parent}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run_locked(config: AlignJobConfig, inputs: list[str], all_inputs: list[str], done: set[str],
                todo: list[tuple[str, str]], weights: Path, t0: float) -> JobSummary:
    src, dst = config.src, config.dst
    manifest_path = dst / MANIFEST_NAME

    run_counts: Counter = Counter()
    crops = 0
    plan_text = "nothing to process"
    process_s = warmup_s = 0.0
    first_batch = 0
    if todo:
        resources, started = _ray_resources(config)
        try:
            plan = plan_workers(resources, device=config.device, num_workers=config.num_workers,
                                batch_size=config.batch_size, torch_threads=config.torch_threads,
                                decode=config.decode)
            chunks = plan.chunks(len(todo))
            plan = plan.fitted(chunks)
            photo_bytes = estimate_input_bytes(src, [rel for rel, _ in todo], decoded=plan.decode_in_tasks)
            budget = object_store_budget(plan, photo_bytes=photo_bytes, cluster_cpus=float(resources.get("CPU", 0)),
                                         cluster_object_store=resources.get("object_store_memory"))
            plan_text = plan.describe() + (f"; object store budget {budget / 2**20:.0f} MiB"
                                           if budget is not None else "")
            log.info("align job: %d to process (%d already done); %s", len(todo), len(done), plan_text)
            t_process = time.perf_counter()  # from here: actor start-up, reading, inference, writing
            ds = _build_dataset(todo, chunks, config, plan, weights, budget)
            with ManifestWriter(manifest_path, durable=config.durable) as manifest, \
                    tqdm(total=len(todo), unit="photo", desc="aligning", disable=not config.progress,
                         file=sys.stderr, dynamic_ncols=True) as bar:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    if not first_batch:  # start-up: Ray workers, actors loading the model, first batch
                        warmup_s, first_batch = time.perf_counter() - t_process, len(batch["record"])
                    manifest.append_many(batch["record"].tolist())
                    run_counts.update(batch["status"].tolist())
                    crops += int(batch["num_outputs"].sum())
                    bar.update(len(batch["record"]))
                    bar.set_postfix({s: run_counts.get(s, 0) for s in STATUSES}, refresh=False)
            process_s = time.perf_counter() - t_process
        finally:
            if started:
                import ray

                ray.shutdown()

    if manifest_path.exists():  # one record per input; records of vanished files are dropped
        compact_manifest(manifest_path, keep=all_inputs)
    counts = _final_counts(manifest_path, set(inputs))
    recordio = None
    if config.format == "recordio":
        recordio = write_recordio_from_manifest(dst, image_size=config.align.crop_shape,
                                                quality=int(config.quality))
    processed = sum(run_counts.values())
    steady_s = process_s - warmup_s
    summary = JobSummary(
        src=str(src), dst=str(dst), inputs=len(inputs), already_done=len(done), processed=processed,
        counts=dict(counts), run_counts={s: run_counts.get(s, 0) for s in STATUSES}, crops_written=crops,
        elapsed_s=round(time.perf_counter() - t0, 3), process_s=round(process_s, 3),
        photos_per_s=round(processed / process_s, 3) if processed else 0.0,
        faces_per_s=round(crops / process_s, 3) if processed else 0.0,
        warmup_s=round(warmup_s, 3), warmup_photos=first_batch,
        steady_photos_per_s=round((processed - first_batch) / steady_s, 3) if steady_s > 0 else 0.0,
        plan=plan_text, recordio=recordio,
    )
    atomic_write_text(dst / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary

