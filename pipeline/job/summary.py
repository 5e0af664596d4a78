"""What a run of the align job did: :class:`RunStats` counts while the records arrive, and
:func:`make_summary` builds the one :class:`JobSummary` (printed, and written to
``dst/summary.json``)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.job.config import EXIT_FILES_FAILED, EXIT_OK, AlignJobConfig
from pipeline.records import (
    EMBEDDINGS_NAME,
    MANIFEST_NAME,
    STATUS_ERROR,
    STATUS_FILTERED,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUSES,
)

__all__ = ["JobSummary", "RunStats", "make_summary"]


@dataclass
class RunStats:
    """Counters of one run, fed batch by batch from the driver's loop."""

    started: float = field(default_factory=time.perf_counter)
    job_started: float | None = None
    """When the job was called (``time.perf_counter``); ``first_record_s`` counts from there."""
    ray_ready_s: float = 0.0
    first_record_s: float = 0.0
    counts: Counter = field(default_factory=Counter)
    crops: int = 0
    warmup_s: float = 0.0
    warmup_photos: int = 0
    process_s: float = 0.0
    nodes: Counter = field(default_factory=Counter)

    def add(self, statuses: list[str], crops: int, *, node: str = "") -> None:
        if not self.warmup_photos:  # start-up: Ray workers, actors loading the model, first batch
            now = time.perf_counter()
            self.warmup_s, self.warmup_photos = now - self.started, len(statuses)
            self.first_record_s = now - (self.job_started if self.job_started is not None else self.started)
        self.counts.update(statuses)
        self.crops += crops
        if node:  # the Ray node whose detector actor did these photos
            self.nodes[node] += len(statuses)

    def stop(self) -> None:
        self.process_s = time.perf_counter() - self.started

    @property
    def processed(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class JobSummary:
    """What a run did. ``counts`` cover every listed input (final manifest state); ``run_counts``
    and the rates cover the inputs processed by this run. ``process_s`` runs from the dataset's
    start (Ray already up) to the last record; ``warmup_s`` is its part until the first records
    (workers and actors starting, model loading), ``warmup_photos`` the records that arrived
    with the first batch; ``steady_photos_per_s`` is the rate after it. ``photos_per_node``: the
    photos of this run per Ray node id (of the detector actor that did them)."""

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
    format: str = "folder"
    outputs: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    photos_per_node: dict[str, int] = field(default_factory=dict)
    time_to_first_crop_s: float = 0.0
    """From the job's call to the first records at the driver (checks, Ray's start, the actors'
    start and model load, the first chunk): the run's fixed cost, with ``ray_start_s`` its part."""
    ray_start_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_FILES_FAILED if self.counts.get(STATUS_ERROR, 0) else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exit_code": self.exit_code}

    def text(self) -> str:
        c = self.counts
        lines = [
            f"{'dry run: ' if self.dry_run else ''}{self.inputs} input(s) under {self.src}; "
            f"{self.already_done} already done, {self.processed} processed this run",
            f"status over all inputs: ok {c.get(STATUS_OK, 0)}, no_face {c.get(STATUS_NO_FACE, 0)}, "
            f"filtered {c.get(STATUS_FILTERED, 0)}, error {c.get(STATUS_ERROR, 0)}",
        ]
        if not self.dry_run and not self.processed:
            lines.append(f"this run: nothing to process, elapsed {self.elapsed_s:.1f} s")
        elif not self.dry_run:
            # the rate after the warm-up means something only when it covers most of the run
            steady = (f" ({self.steady_photos_per_s:.2f} photos/s after a {self.warmup_s:.1f} s warm-up)"
                      if 2 * self.warmup_photos < self.processed else "")
            lines.append(f"this run: {self.photos_per_s:.2f} photos/s, {self.faces_per_s:.2f} faces/s{steady}, "
                         f"{self.crops_written} crop(s) written, elapsed {self.elapsed_s:.1f} s "
                         f"(first crop after {self.time_to_first_crop_s:.1f} s, Ray up after {self.ray_start_s:.1f} s)")
        lines.append(f"workers: {self.plan}")
        if len(self.photos_per_node) > 1:
            lines.append("photos per node: "
                         + ", ".join(f"{node[:12]} {n}" for node, n in self.photos_per_node.items()))
        if self.outputs and self.format == "recordio":
            lines.append(f"recordio: {self.outputs['images']} image(s), {self.outputs['identities']} "
                         f"identity(ies) -> {self.outputs['rec']}")
        elif self.outputs and self.format == "webdataset":
            lines.append(f"webdataset: {self.outputs['samples']} sample(s) in {self.outputs['shards']} "
                         f"shard(s) under {self.outputs['folder']}")
        if self.identity:
            i = self.identity
            lines.append(f"identity: {i['outliers']} outlier(s) among {i['photos']} photo(s) of {i['identities']} "
                         f"identity(ies); {i['embeddings']} face embedding(s) in {Path(self.dst) / EMBEDDINGS_NAME}")
        if c.get(STATUS_ERROR, 0):
            lines.append(f"some inputs failed: see records with \"status\": \"error\" in "
                         f"{Path(self.dst) / MANIFEST_NAME}")
        return "\n".join(lines)


def make_summary(config: AlignJobConfig, *, inputs: int, already_done: int, counts: Counter, stats: RunStats | None,
                 plan: str, t0: float, outputs: dict[str, Any] | None = None,
                 identity: dict[str, Any] | None = None) -> JobSummary:
    """The run's summary; ``stats`` is ``None`` for a dry run."""
    stats = stats or RunStats()
    processed = stats.processed
    steady_s = stats.process_s - stats.warmup_s
    return JobSummary(
        src=str(config.src), dst=str(config.dst), inputs=inputs, already_done=already_done, processed=processed,
        counts=dict(counts), run_counts={s: stats.counts.get(s, 0) for s in STATUSES} if processed else {},
        crops_written=stats.crops, elapsed_s=round(time.perf_counter() - t0, 3),
        process_s=round(stats.process_s, 3),
        photos_per_s=round(processed / stats.process_s, 3) if processed else 0.0,
        faces_per_s=round(stats.crops / stats.process_s, 3) if processed else 0.0,
        warmup_s=round(stats.warmup_s, 3), warmup_photos=stats.warmup_photos,
        steady_photos_per_s=(round((processed - stats.warmup_photos) / steady_s, 3)
                             if processed and steady_s > 0 else 0.0),
        plan=plan, dry_run=config.dry_run, format=config.format, outputs=outputs, identity=identity,
        photos_per_node=dict(sorted(stats.nodes.items())),
        time_to_first_crop_s=round(stats.first_record_s, 3), ray_start_s=round(stats.ray_ready_s, 3),
    )
