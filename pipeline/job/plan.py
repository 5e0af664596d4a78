"""Pure planning of the align job: how many actors with what resources, how the photos are cut
into chunks, and how much of the object store the dataset may fill. No Ray, no I/O but the
size sample of :func:`estimate_input_bytes`."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.config import ResizePolicy
from pipeline.images import ImageFormat, ImageReadError, draft_factor, probe_image
from pipeline.job.config import JobConfigError

__all__ = [
    "MAX_BLOCK_BYTES", "MAX_INPUT_BLOCKS", "MIN_CHUNK", "MIN_DECODE_CPUS_PER_GPU", "MIN_OBJECT_STORE_BUDGET",
    "OBJECT_STORE_SHARE", "TASKS_IN_FLIGHT_PER_ACTOR", "JobPlan", "WorkerPlan", "estimate_input_bytes", "gpu_share",
    "guided_chunks", "object_store_budget", "plan_workers", "resolve_device",
]

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
MIN_DECODE_CPUS_PER_GPU = 4
"""Fewer decoding CPUs per busy GPU than this gets a warning in the plan: one CPU decodes roughly
50-100 photos/s from 12 MP JPEG drafts (a few hundred from VGA files), while the detector on one
GPU takes thousands of VGA images/s (see ``benchmarks/bench_gpu.py``); with fewer, the GPU waits
on decoding."""
GPU_RESOURCE_STEP = 1e-4
"""Ray's resolution of fractional resources: a share of ``1/k`` GPU is rounded down to it, so
that ``k`` shares always fit on one GPU."""


@dataclass(frozen=True, kw_only=True)
class WorkerPlan:
    """How the stages are laid out on Ray resources (see :func:`plan_workers`).

    ``decode_in_tasks``: the read tasks decode and pass pixels to the actors (GPU actors).
    Otherwise (CPU actors) the actors do the whole chunk themselves: read the files, decode,
    detect, align, encode and write the crops, and return the manifest records; there are no read
    or write tasks (``read_cpus`` / ``write_cpus`` then only apply to ``--decode tasks``). On a
    2-core machine the separate read and write tasks took 15 ms of CPU per photo (Ray's per-task
    work in the driver, the raylet and the worker processes, and copies through the object store)
    next to ~40 ms of actual work. With read tasks, ``read_cpus`` differs from ``cpus_per_actor``
    so that Ray Data never fuses them into the actors: reading runs in its own tasks, overlapping
    inference.
    """

    device: str
    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    batch_size: int
    detect_batch_size: int
    decode_in_tasks: bool
    read_cpus: float
    write_cpus: float
    actors_per_gpu: int = 0
    notes: tuple[str, ...] = ()
    """Warnings about the plan (idle or unevenly loaded GPUs, too few decoding CPUs); the driver logs them."""

    @property
    def fused(self) -> bool:
        """The actors read the files and write the crops themselves (one Ray stage)."""
        return not self.decode_in_tasks

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
        packed = f"{self.actors_per_gpu} per GPU, " if self.actors_per_gpu > 1 else ""
        return (f"{self.num_actors} {self.device} actor(s) x ({packed}{where}{self.cpus_per_actor:g} CPU, "
                f"{self.threads} runtime thread(s)), chunks of up to {self.batch_size} photos "
                f"(detector calls of {self.detect_batch_size}); "
                + ("reading, decoding and writing in the actors" if self.fused else
                   f"decoding in the read tasks ({self.read_cpus:g} CPU), writing in tasks of {self.write_cpus:g} CPU"))


def plan_workers(resources: Mapping[str, float], *, device: str = "auto", num_workers: int | None = None,
                 batch_size: int | None = None, threads: int | None = None,
                 decode: str = "auto") -> WorkerPlan:
    """Actor count, per-actor resources and batch size from what Ray sees.

    GPUs: one actor per whole GPU (``num_gpus=1``, one CPU), batch 32; more actors than GPUs
    (``num_workers``) share each GPU in equal ``1/k`` parts (:func:`gpu_share`); read/decode tasks
    use the other CPUs (a note when fewer than :data:`MIN_DECODE_CPUS_PER_GPU` per GPU). CPU only:
    one single-threaded actor per CPU (two threads each from 8 CPUs up),
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
        return _plan_gpu(cpus=cpus, gpus=gpus, num_workers=num_workers, batch_size=batch_size, threads=threads,
                         decode=decode)
    reserve = min(max(1.0, math.floor(cpus / 4)), cpus / 2)
    threads = threads or (1 if cpus < 8 else 2)
    n = num_workers or max(1, int(cpus // threads))
    per_actor = round((cpus - reserve) / n, 4)
    return WorkerPlan(device="cpu", num_actors=n, cpus_per_actor=per_actor, gpus_per_actor=0.0,
                      threads=threads, batch_size=batch_size or 64, detect_batch_size=1,
                      decode_in_tasks=decode == "tasks", read_cpus=_distinct(min(0.5, reserve / 2), per_actor),
                      write_cpus=min(0.25, reserve / 4))


def resolve_device(device: str, resources: Mapping[str, float]) -> str:
    """The device the actors run on, ``"cpu"`` or ``"cuda"``, from the cluster's resources as Ray
    reports them when the job starts: ``auto`` is CUDA when Ray has at least one whole GPU (what
    :func:`plan_workers` then plans). ``cuda:N`` is ``cuda``: Ray gives each actor its own GPU.

    Raises:
        JobConfigError: CUDA asked, and Ray sees no GPU.
    """
    gpus = float(resources.get("GPU", 0.0))
    if device == "cpu":
        return "cpu"
    if str(device).startswith("cuda"):
        if gpus < 1:
            raise JobConfigError(f"--device {device}, but Ray sees no GPU (GPU resources: {gpus:g}); "
                                 "use --device cpu or auto")
        return "cuda"
    if device != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return "cuda" if gpus >= 1 else "cpu"


def gpu_share(num_actors: int, gpus: float) -> tuple[float, int]:
    """``(GPU per actor, actors per GPU)`` for ``num_actors`` actors on ``gpus`` GPUs: one whole
    GPU each while there are GPUs enough, else ``1/k`` of a GPU with ``k = ceil(num_actors /
    whole GPUs)`` actors per GPU, an integer, so that the shares pack: ``gpus / n`` would give 3
    actors on 2 GPUs 0.667 GPU each, and the third would never start (only one fits per GPU).
    The share is rounded down to :data:`GPU_RESOURCE_STEP` (``k`` shares never exceed one GPU).
    A fraction of a GPU left over (``gpus=2.5``) is not used.

    Raises:
        JobConfigError: no whole GPU.
    """
    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    whole = int(gpus + 1e-9)
    if whole < 1:
        raise JobConfigError(f"--device cuda, but Ray sees no GPU (GPU resources: {gpus:g})")
    if num_actors <= whole:
        return 1.0, 1
    per_gpu = math.ceil(num_actors / whole)
    return round(math.floor(1.0 / per_gpu / GPU_RESOURCE_STEP) * GPU_RESOURCE_STEP, 4), per_gpu


def _plan_gpu(*, cpus: float, gpus: float, num_workers: int | None, batch_size: int | None,
              threads: int | None, decode: str) -> WorkerPlan:
    """The GPU layout (see :func:`plan_workers`): packed GPU shares (:func:`gpu_share`), up to one
    CPU per actor, a write-task reserve of half a CPU, and every other CPU for the read tasks that
    decode; notes when GPUs stay idle, are unevenly loaded, or have fewer than
    :data:`MIN_DECODE_CPUS_PER_GPU` decoding CPUs each."""
    whole = int(gpus + 1e-9)
    n = num_workers or max(1, whole)
    share, per_gpu = gpu_share(n, gpus)
    per_actor = round(min(1.0, max(cpus - 1.0, 0.5) / n), 4)
    write_cpus = 0.5
    read_cpus = _distinct(1.0, per_actor)
    notes = []
    busy = min(n, whole)
    if n < whole:
        notes.append(f"{n} actor(s) on {whole} GPUs: {whole - n} GPU(s) stay idle")
    elif n % whole:
        notes.append(f"{n} actors on {whole} GPUs ({per_gpu} per GPU): some GPUs run fewer actors than others; "
                     f"a multiple of {whole} actors loads them evenly")
    decode_cpus = cpus - n * per_actor - write_cpus
    if decode != "actors" and decode_cpus / busy < MIN_DECODE_CPUS_PER_GPU:
        notes.append(f"{max(decode_cpus, 0):g} CPU(s) left for decoding {busy} busy GPU(s) "
                     f"({max(decode_cpus, 0) / busy:.1f} per GPU, fewer than {MIN_DECODE_CPUS_PER_GPU}): "
                     "the GPUs will wait on decoding; more CPUs per GPU feed them")
    return WorkerPlan(device="cuda", num_actors=n, cpus_per_actor=per_actor, gpus_per_actor=share,
                      threads=threads or 1, batch_size=batch_size or 32, detect_batch_size=batch_size or 32,
                      decode_in_tasks=decode != "actors", read_cpus=read_cpus, write_cpus=write_cpus,
                      actors_per_gpu=per_gpu, notes=tuple(notes))


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


def estimate_input_bytes(src: Path, rels: Sequence[str], *, decoded: bool, sample: int = 64,
                         draft: ResizePolicy | None = None) -> float:
    """Mean bytes one photo occupies between the read tasks and the actors: the file size, or
    the decoded ``H x W x 3`` pixels when the read tasks decode; with ``draft`` (the detector's
    resize policy, when the read tasks decode JPEG drafts at the detection size, see
    :func:`pipeline.job.stages.read_images`), a JPEG the policy shrinks 2x or more counts as its
    draft's pixels plus the file (shipped for full-size crops of small faces). Measured on up to ``sample``
    photos drawn from ``rels`` (seeded, so a rerun plans the same; a ``stat`` each; for pixels, a
    header read of the first 256 KiB). Unreadable samples and anything but a regular file (a FIFO
    would block the read) are ignored; with none left, 1 MiB (files) or 12 MiB (pixels)."""
    if not rels:
        return 0.0
    picked = rels if len(rels) <= sample else random.Random(0).sample(list(rels), sample)
    sizes: list[float] = []
    for rel in picked:
        path = os.path.join(src, rel)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block forever
                continue
            if not decoded:
                sizes.append(float(st.st_size))
                continue
            with open(path, "rb") as f:
                info = probe_image(f.read(256 * 1024), source=rel)
            factor = 1
            if draft is not None and info.format is ImageFormat.JPEG:
                factor = draft_factor(info.height, info.width, draft.scale(info.height, info.width))
            pixels = math.ceil(info.height / factor) * math.ceil(info.width / factor) * 3
            sizes.append(float(pixels + (st.st_size if factor > 1 else 0)))
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
    leave free: chunks of ``batch_size x photo_bytes``; at least :data:`MIN_OBJECT_STORE_BUDGET`.
    When the read tasks decode (GPU actors) a chunk is counted whole: Ray splits a read output
    larger than :data:`MAX_BLOCK_BYTES` into several blocks, but they are all held until the actor
    takes the chunk (counting one capped block per chunk let 16 CPUs keep only one or two read tasks
    going with 12 MP photos). Otherwise the blocks count at most :data:`MAX_BLOCK_BYTES` each (the
    actors read their files themselves; only names and results travel). Without a budget Ray Data
    lets the read tasks run
    ahead until half the object store is full: on a small job that is every input photo held in
    memory, and memory would grow with the job's size. ``None`` where the budget would not be
    below Ray's default anyway.
    """
    free_cpus = cluster_cpus - plan.num_actors * plan.cpus_per_actor - plan.write_cpus
    read_tasks = max(1, math.floor(free_cpus / plan.read_cpus + 1e-9)) if plan.read_cpus > 0 else 1
    blocks = plan.num_actors * (TASKS_IN_FLIGHT_PER_ACTOR + 1) + read_tasks
    chunk = max(1.0, plan.batch_size * photo_bytes)
    block = chunk if plan.decode_in_tasks else min(MAX_BLOCK_BYTES, chunk)
    budget = max(MIN_OBJECT_STORE_BUDGET, int(blocks * block))
    if cluster_object_store and budget >= OBJECT_STORE_SHARE * cluster_object_store:
        return None
    return budget


def _distinct(value: float, other: float) -> float:
    """``value``, nudged if equal to ``other`` (equal remote args would let Ray fuse the stages)."""
    return value if abs(value - other) > 1e-6 else round(value * 0.9, 4)




@dataclass(frozen=True, kw_only=True)
class JobPlan:
    """One run's whole plan: the workers, the chunk sizes, the object-store budget, and whether the
    read tasks decode JPEG drafts at the detection size (``drafts``)."""

    workers: WorkerPlan
    chunks: tuple[int, ...]
    budget: int | None
    drafts: bool = False

    @classmethod
    def make(cls, resources: Mapping[str, float], *, todo: Sequence[str], src: Path, device: str,
             num_workers: int | None, batch_size: int | None, threads: int | None, decode: str,
             draft: ResizePolicy | None = None) -> JobPlan:
        """``draft``: the detector's resize policy when the read tasks decode JPEG drafts (see
        :func:`estimate_input_bytes`)."""
        workers = plan_workers(resources, device=device, num_workers=num_workers, batch_size=batch_size,
                               threads=threads, decode=decode)
        chunks = workers.chunks(len(todo))
        workers = workers.fitted(chunks)
        photo_bytes = estimate_input_bytes(src, todo, decoded=workers.decode_in_tasks,
                                           draft=draft if workers.decode_in_tasks else None)
        budget = object_store_budget(workers, photo_bytes=photo_bytes, cluster_cpus=float(resources.get("CPU", 0)),
                                     cluster_object_store=resources.get("object_store_memory"))
        return cls(workers=workers, chunks=tuple(chunks), budget=budget,
                   drafts=draft is not None and workers.decode_in_tasks)

    def describe(self) -> str:
        text = self.workers.describe()
        text += "; the read tasks ship uint8 JPEG drafts at the detection size" if self.drafts else ""
        text += f"; object store budget {self.budget / 2**20:.0f} MiB" if self.budget is not None else ""
        return text + "".join(f"; note: {note}" for note in self.workers.notes)
