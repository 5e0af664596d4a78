"""Verification evaluation: photos -> crops per alignment source -> embeddings -> template scores -> metrics.

:func:`extract` reads each photo once, makes the crop of every requested alignment source
(:mod:`.crops`), and embeds the crops (and their mirrors, for the flip test) with the recogniser,
in-process or on ``num_workers`` Ray actors that each build their own detector and recogniser.
:func:`score` aggregates templates as insightface's IJB-C script (:mod:`.aggregate`) and computes the
metrics (:mod:`.metrics`); :func:`write_report` writes ``report.json`` and ``roc.png``.

Photos that are missing or unreadable, and photos without a face for a source, are counted, never
silently dropped; a template left without any usable photo and the pairs that use it are excluded
and counted. By default (``common_pairs``) every source is scored on the same pairs - those all
sources could score - so the numbers compare like with like.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.images import ImageReadError, read_image
from common.fsio import atomic_path, atomic_write_text
from pipeline.verification.aggregate import AggregationConfig, image_features, pair_scores, template_features
from pipeline.verification.crops import BOX, DETECTOR, PROVIDED, CropMaker, CropStatus, DetectorSettings, parse_sources
from pipeline.verification.metrics import DEFAULT_FARS, KFoldAccuracy, VerificationMetrics, far_key, kfold_accuracy
from pipeline.verification.protocols import VerificationProtocol
from pipeline.verification.recognizer import RecognizerConfig


class VerificationDataError(RuntimeError):
    """The photos cannot support the evaluation (strict mode, or nothing left to score)."""


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    sources: tuple[str, ...] = (DETECTOR, BOX)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    detector: DetectorSettings | None = field(default_factory=DetectorSettings)
    fars: tuple[float, ...] = DEFAULT_FARS
    num_workers: int = 1
    """1: in this process. > 1: extract on that many Ray actors (the running Ray, else the cluster at
    ``address``, else a new local Ray: :func:`common.ray_init.ray_session`). 0: on Ray, one actor per
    ``threads`` CPUs of the cluster (every CPU of this machine for a new local Ray)."""
    address: str | None = None
    threads: int | None = None
    """Intra-op threads of the detector and recogniser, per worker. ``None``: the libraries' defaults
    in-process, 1 per Ray actor. In-process, torch's thread count is restored afterwards."""
    chunk_size: int = 16
    """Photos per task (and per recogniser call, times sources and mirrors)."""
    image_size: int = 112
    strict: bool = False
    """Missing or unreadable photos raise instead of being counted and excluded."""
    common_pairs: bool = True
    """Score every source on the pairs that all sources can score."""
    baseline: str | None = None
    """Source the gains are measured against; default ``box`` when evaluated, else the first source."""
    progress: bool = True
    use_fallbacks: bool = True
    """Photos whose source made a fallback crop (status ``FALLBACK``) are scored with it; ``False``
    excludes them (and, with ``common_pairs``, their pairs from every source), counted."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", parse_sources(self.sources))
        if (DETECTOR in self.sources or BOX in self.sources) and self.detector is None:
            raise ValueError(f"sources {self.sources} need detector settings")
        if self.num_workers < 0 or self.chunk_size < 1:
            raise ValueError("num_workers must be >= 0 (0: every CPU on Ray) and chunk_size >= 1")
        if self.baseline is not None and self.baseline not in self.sources:
            raise ValueError(f"baseline {self.baseline!r} is not one of the evaluated sources {self.sources}")

    @property
    def baseline_source(self) -> str:
        if self.baseline is not None:
            return self.baseline
        return BOX if BOX in self.sources else self.sources[0]


# ----------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True, eq=False, kw_only=True)
class PhotoTask:
    index: int
    path: str
    landmarks: np.ndarray | None
    score: float | None


@dataclass(frozen=True, eq=False, kw_only=True)
class ChunkResult:
    indices: np.ndarray
    status: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    """Positions (into ``indices``) that have a feature, per source."""
    features: dict[str, np.ndarray | None]
    flipped: dict[str, np.ndarray | None]
    """The mirrored crops' embeddings (same rows as ``features``) when the worker flips, else ``None``."""
    problems: dict[int, str]
    timings: dict[str, float]
    faces_embedded: int


class ExtractionWorker:
    """Reads photos, makes crops for every source and embeds them; one per process (or Ray actor)."""

    def __init__(self, *, recognizer: RecognizerConfig, sources: tuple[str, ...],
                 detector: DetectorSettings | None, flip: bool, image_size: int = 112, threads: int = 0):
        if threads > 0:
            recognizer = recognizer.with_threads(threads)
        self.sources = parse_sources(sources)
        self.flip = flip
        self.recognizer = recognizer.build()
        if self.recognizer.input_size != image_size:
            raise ValueError(f"recogniser input is {self.recognizer.input_size}px but crops are {image_size}px")
        needs_detector = DETECTOR in self.sources or BOX in self.sources
        self.crop_maker = CropMaker(
            sources=self.sources, aligner=detector.build_aligner(image_size) if needs_detector else None,
            image_size=image_size, on_no_face=detector.on_no_face if detector is not None else "exclude",
        )

    def process(self, tasks: Sequence[PhotoTask]) -> ChunkResult:
        n = len(tasks)
        status = {s: np.full(n, CropStatus.OK, dtype=np.int8) for s in self.sources}
        scores = {s: np.zeros(n, dtype=np.float32) for s in self.sources}
        problems: dict[int, str] = {}
        crops: list[np.ndarray] = []
        owners: list[tuple[str, int]] = []
        t_read = t_crop = 0.0
        for pos, task in enumerate(tasks):
            t0 = time.perf_counter()
            path = Path(task.path)
            image = None
            if not path.is_file():
                code, problems[task.index] = CropStatus.MISSING, f"{path}: file not found"
            else:
                try:
                    image = read_image(path)
                except ImageReadError as exc:
                    code, problems[task.index] = CropStatus.UNREADABLE, str(exc)
            t1 = time.perf_counter()
            t_read += t1 - t0
            if image is None:
                for s in self.sources:
                    status[s][pos] = code
                continue
            made = self.crop_maker(image, landmarks=task.landmarks, score=task.score)
            t_crop += time.perf_counter() - t1
            for s in self.sources:
                status[s][pos] = made.status[s]
                scores[s][pos] = made.scores[s]
                if made.crops[s] is not None:
                    crops.append(made.crops[s])
                    owners.append((s, pos))
        t0 = time.perf_counter()
        features: dict[str, np.ndarray | None] = {s: None for s in self.sources}
        flipped: dict[str, np.ndarray | None] = {s: None for s in self.sources}
        rows = {s: np.asarray([p for o, p in owners if o == s], dtype=np.int64) for s in self.sources}
        faces = 0
        if crops:
            batch = np.stack(crops)
            if self.flip:
                batch = np.concatenate([batch, np.ascontiguousarray(batch[:, :, ::-1])])
            emb = self.recognizer.embed(batch)
            faces = int(batch.shape[0])
            which = np.asarray([o for o, _ in owners])
            for s in self.sources:
                features[s] = emb[: len(crops)][which == s].astype(np.float32)
                if self.flip:  # kept apart: the scoring fuses them (sum, as insightface's "F2", or concat)
                    flipped[s] = emb[len(crops):][which == s].astype(np.float32)
        t_embed = time.perf_counter() - t0
        return ChunkResult(
            indices=np.asarray([t.index for t in tasks], dtype=np.int64), status=status, scores=scores, rows=rows,
            features=features, flipped=flipped, problems=problems,
            timings={"read_s": t_read, "detect_align_s": t_crop, "embed_s": t_embed}, faces_embedded=faces,
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class Extraction:
    """Per-photo features of every source (row ``i`` = ``protocol.images[i]``)."""

    sources: tuple[str, ...]
    features: dict[str, np.ndarray]
    """``[n_images, D]`` float32 embedding of each photo's crop; zeros when unusable."""
    flipped: dict[str, np.ndarray | None]
    """``[n_images, D]`` float32 embedding of the mirrored crop when extracted with ``flip``, else ``None``."""
    status: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    flip: bool
    problems: dict[int, str]
    throughput: dict[str, Any]

    def usable(self, source: str, *, fallbacks: bool = True) -> np.ndarray:
        st = self.status[source]
        return (st == CropStatus.OK) | ((st == CropStatus.FALLBACK) & fallbacks)


def photo_tasks(protocol: VerificationProtocol) -> list[PhotoTask]:
    return [
        PhotoTask(
            index=i, path=str(protocol.image_path(i)),
            landmarks=None if protocol.landmarks is None else protocol.landmarks[i],
            score=None if protocol.face_scores is None else float(protocol.face_scores[i]),
        )
        for i in range(len(protocol.images))
    ]


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run with ``threads`` torch intra-op threads (0: unchanged); restores the previous count."""
    import torch

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _RayWorker:
    """A Ray actor around a worker class (``process(tasks)``): the actor process is its own, so
    torch's thread count is set for good."""

    def __init__(self, worker_cls: type, *, threads: int, **kwargs):
        import torch

        torch.set_num_threads(threads)
        self.worker = worker_cls(threads=threads, **kwargs)

    def process(self, tasks: Sequence[PhotoTask]) -> Any:
        return self.worker.process(tasks)


def run_workers(worker_cls: type, worker_kwargs: dict, chunks: list[list[PhotoTask]], *, bar: tqdm,
                num_workers: int, threads: int | None, address: str | None, stats: dict[str, Any]) -> Iterable[Any]:
    """``worker_cls(threads=..., **worker_kwargs).process(chunk)`` for every chunk, in this process
    (``num_workers == 1``) or on Ray actors (see :attr:`EvaluationConfig.num_workers`), unordered."""
    if num_workers == 1:
        return _run_local(worker_cls, worker_kwargs, chunks, bar, threads or 0)
    return _run_ray(worker_cls, worker_kwargs, chunks, bar, num_workers, threads or 1, address, stats)


def _run_local(worker_cls: type, worker_kwargs: dict, chunks: list[list[PhotoTask]], bar: tqdm,
               threads: int) -> Iterable[Any]:
    with torch_threads(threads):
        worker = worker_cls(**worker_kwargs, threads=threads)
        for chunk in chunks:
            result = worker.process(chunk)
            bar.update(len(chunk))
            yield result


def _run_ray(worker_cls: type, worker_kwargs: dict, chunks: list[list[PhotoTask]], bar: tqdm, num_workers: int,
             threads: int, address: str | None, stats: dict[str, Any]) -> Iterable[Any]:
    import ray
    from ray.util import ActorPool

    from common.ray_init import ray_session

    with ray_session(address, num_cpus=num_workers * threads if num_workers else None):
        if not num_workers:  # every CPU the cluster has
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        stats["workers"] = num_workers
        bar.set_postfix_str(f"{num_workers} Ray workers")
        actor_cls = ray.remote(num_cpus=threads)(_RayWorker)
        actors = [actor_cls.remote(worker_cls, **worker_kwargs, threads=threads) for _ in range(num_workers)]
        try:
            pool = ActorPool(actors)
            for result in pool.map_unordered(lambda actor, chunk: actor.process.remote(chunk), chunks):
                bar.update(len(result.indices))
                yield result
        finally:
            for actor in actors:
                ray.kill(actor)


def extract(protocol: VerificationProtocol, *, recognizer: RecognizerConfig, config: EvaluationConfig) -> Extraction:
    """Crops and features of every photo of ``protocol`` for every source of ``config``."""
    if PROVIDED in config.sources and not protocol.has_landmarks:
        raise ValueError(f"the 'provided' source needs protocol landmarks; {protocol.name} has none")
    tasks = photo_tasks(protocol)
    if config.strict:
        missing = [t.path for t in tasks if not Path(t.path).is_file()]
        if missing:
            raise VerificationDataError(
                f"{len(missing)} photos of {protocol.source} are missing, e.g. " + ", ".join(missing[:5])
            )
    chunks = [tasks[i:i + config.chunk_size] for i in range(0, len(tasks), config.chunk_size)]
    worker_kwargs = dict(recognizer=recognizer, sources=config.sources, detector=config.detector,
                         flip=config.aggregation.flip, image_size=config.image_size)
    n = len(tasks)
    status = {s: np.zeros(n, dtype=np.int8) for s in config.sources}
    scores = {s: np.zeros(n, dtype=np.float32) for s in config.sources}
    features: dict[str, np.ndarray | None] = {s: None for s in config.sources}
    flipped: dict[str, np.ndarray | None] = {s: None for s in config.sources}
    problems: dict[int, str] = {}
    timings = {"read_s": 0.0, "detect_align_s": 0.0, "embed_s": 0.0}
    faces = 0
    run_stats: dict[str, Any] = {"workers": config.num_workers}
    start = time.perf_counter()
    with tqdm(total=n, desc="verification photos", unit="photo", disable=not config.progress) as bar:
        results = run_workers(ExtractionWorker, worker_kwargs, chunks, bar=bar, num_workers=config.num_workers,
                              threads=config.threads, address=config.address, stats=run_stats)
        for r in results:
            for s in config.sources:
                status[s][r.indices] = r.status[s]
                scores[s][r.indices] = r.scores[s]
                feats = r.features[s]
                if feats is not None and feats.shape[0]:
                    if features[s] is None:
                        features[s] = np.zeros((n, feats.shape[1]), dtype=np.float32)
                    features[s][r.indices[r.rows[s]]] = feats
                    if r.flipped[s] is not None:
                        if flipped[s] is None:
                            flipped[s] = np.zeros((n, feats.shape[1]), dtype=np.float32)
                        flipped[s][r.indices[r.rows[s]]] = r.flipped[s]
            problems.update(r.problems)
            for k in timings:
                timings[k] += r.timings[k]
            faces += r.faces_embedded
    wall = time.perf_counter() - start
    if config.strict and problems:
        first = sorted(problems)[:5]
        raise VerificationDataError(
            f"{len(problems)} photos could not be read: " + "; ".join(problems[i] for i in first)
        )
    for s in config.sources:
        if features[s] is None:
            raise VerificationDataError(f"source {s!r}: no photo of {protocol.source} gave a crop")
    throughput = {
        "photos": n,
        "workers": run_stats["workers"],
        "wall_s": wall,
        "photos_per_s": n / wall if wall > 0 else math.nan,
        "faces_embedded": faces,
        "embed_busy_s": timings["embed_s"],
        "faces_per_s": faces / timings["embed_s"] if timings["embed_s"] > 0 else math.nan,
        "read_busy_s": timings["read_s"],
        "detect_align_busy_s": timings["detect_align_s"],
        "note": "faces = crops through the recogniser (a mirrored crop counts as one); faces_per_s is per "
                "worker (busy time of the recogniser summed over workers); *_busy_s are summed over workers",
    }
    return Extraction(sources=config.sources, features=features, flipped=flipped, status=status, scores=scores,
                      flip=config.aggregation.flip, problems=problems, throughput=throughput)


# -------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True, eq=False, kw_only=True)
class SourceResult:
    name: str
    metrics: VerificationMetrics
    scores: np.ndarray
    labels: np.ndarray
    pair_mask: np.ndarray
    """Which protocol pairs were scored."""
    excluded: dict[str, int]
    fallbacks: dict[str, int]
    kfold: KFoldAccuracy | None = None
    """The protocol's k-fold accuracy (LFW) on the scored pairs, when it defines folds."""

    def to_json(self) -> dict:
        m = self.metrics.to_json()
        return {
            "kfold_accuracy": None if self.kfold is None else self.kfold.to_json(),
            "auc": m["auc"],
            "tar_at_far": m["tar_at_far"],
            "pairs": int(self.pair_mask.sum()),
            "excluded": dict(self.excluded),
            "fallbacks": dict(self.fallbacks),
            "best_accuracy": m["best_accuracy"],
            "positives": m["positives"],
            "negatives": m["negatives"],
            "min_measurable_far": m["min_measurable_far"],
        }


@dataclass(frozen=True, eq=False, kw_only=True)
class EvaluationResult:
    protocol: VerificationProtocol
    config: EvaluationConfig
    sources: dict[str, SourceResult]
    extraction: Extraction
    settings: dict[str, Any]

    def gains(self) -> dict[str, dict]:
        base_name = self.config.baseline_source
        base = self.sources[base_name].metrics
        out = {}
        for name, res in self.sources.items():
            if name == base_name:
                continue
            m = res.metrics
            base_kfold = self.sources[base_name].kfold
            out[name] = {
                "vs": base_name,
                "kfold_accuracy": None if res.kfold is None or base_kfold is None else res.kfold.mean - base_kfold.mean,
                "auc": m.auc - base.auc,
                "tar_at_far": {
                    far_key(f): (None if m.tar_at_far[f] is None or base.tar_at_far[f] is None
                                 else m.tar_at_far[f] - base.tar_at_far[f])
                    for f in m.tar_at_far
                },
            }
        return out

    def to_json(self) -> dict:
        report: dict[str, Any] = {name: res.to_json() for name, res in self.sources.items()}
        report["gains"] = self.gains()
        report["settings"] = self.settings
        report["throughput"] = self.extraction.throughput
        report["problems"] = {
            "count": len(self.extraction.problems),
            "examples": [self.extraction.problems[i] for i in sorted(self.extraction.problems)[:20]],
        }
        return report


def _source_scores(protocol: VerificationProtocol, extraction: Extraction, source: str,
                   aggregation: AggregationConfig, use_fallbacks: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(pair scores with NaN where unscorable, scorable-pair mask, exclusion counts) of one source."""
    usable = extraction.usable(source, fallbacks=use_fallbacks)
    face_ok = usable[protocol.face_image]
    status = extraction.status[source]
    all_templates = np.unique(protocol.face_template)
    excluded = {
        "missing_images": int(np.count_nonzero(status == CropStatus.MISSING)),
        "unreadable_images": int(np.count_nonzero(status == CropStatus.UNREADABLE)),
        "no_face_images": int(np.count_nonzero(status == CropStatus.NO_FACE)),
        "fallback_images_excluded": 0 if use_fallbacks else int(np.count_nonzero(status == CropStatus.FALLBACK)),
        "faces": int(np.count_nonzero(~face_ok)),
    }
    scores = np.full(protocol.pairs.shape[0], np.nan)
    if not face_ok.any():
        excluded["templates_without_faces"] = int(all_templates.size)
        excluded["pairs"] = int(protocol.pairs.shape[0])
        return scores, np.zeros(protocol.pairs.shape[0], bool), excluded
    image_of_face = protocol.face_image[face_ok]
    mirrored = extraction.flipped[source]
    feats = image_features(
        extraction.features[source][image_of_face],
        flipped=mirrored[image_of_face] if aggregation.flip and mirrored is not None else None,
        scores=extraction.scores[source][image_of_face],
        config=aggregation,
    )
    templates, tfeats = template_features(feats, protocol.face_template[face_ok], protocol.face_media[face_ok])
    ok = np.isin(protocol.pairs[:, 0], templates) & np.isin(protocol.pairs[:, 1], templates)
    excluded["templates_without_faces"] = int(all_templates.size - templates.size)
    excluded["pairs"] = int(np.count_nonzero(~ok))
    scores[ok] = pair_scores(templates, tfeats, protocol.pairs[ok, 0], protocol.pairs[ok, 1])
    return scores, ok, excluded


def score(protocol: VerificationProtocol, extraction: Extraction, *, config: EvaluationConfig,
          settings: dict[str, Any] | None = None) -> EvaluationResult:
    """Template aggregation, pair scores and metrics for every source of ``extraction``."""
    if config.aggregation.flip and not extraction.flip:
        raise ValueError("the config asks for the flip test but the features were extracted without mirrored crops")
    per_source = {s: _source_scores(protocol, extraction, s, config.aggregation, config.use_fallbacks)
                  for s in config.sources}
    common = np.logical_and.reduce([ok for _, ok, _ in per_source.values()])
    results: dict[str, SourceResult] = {}
    for s, (scores, ok, excluded) in per_source.items():
        mask = common if config.common_pairs else ok
        if config.common_pairs and len(config.sources) > 1:
            excluded["pairs_lost_by_other_sources"] = int(np.count_nonzero(ok & ~common))
        labels = protocol.labels[mask]
        if not labels.any() or labels.all():
            raise VerificationDataError(
                f"source {s!r}: {int(mask.sum())} scorable pairs ({int(labels.sum())} positive) - need both "
                f"positive and negative pairs; excluded: {excluded}"
            )
        status = extraction.status[s]
        fallbacks = {}
        if s == DETECTOR:
            if protocol.has_landmarks:
                fallbacks["detector_to_provided"] = int(np.count_nonzero(status == CropStatus.FALLBACK))
            elif config.detector is not None and config.detector.on_no_face == "center-crop":
                fallbacks["detector_to_center_crop"] = int(np.count_nonzero(status == CropStatus.FALLBACK))
        elif s == BOX:
            fallbacks["box_to_whole_photo"] = int(np.count_nonzero(status == CropStatus.FALLBACK))
        kfold = None if protocol.folds is None else kfold_accuracy(scores[mask], labels, protocol.folds[mask])
        results[s] = SourceResult(
            name=s, metrics=VerificationMetrics.compute(scores[mask], labels, fars=config.fars),
            scores=scores[mask], labels=labels, pair_mask=mask, excluded=excluded, fallbacks=fallbacks,
            kfold=kfold,
        )
    base_settings = {
        "sources": list(config.sources),
        "protocol": protocol.summary(),
        "aggregation": config.aggregation.to_json(),
        "detector": None if config.detector is None or config.sources == (PROVIDED,) else config.detector.to_json(),
        "fars": [far_key(f) for f in config.fars],
        "common_pairs": config.common_pairs,
        "baseline": config.baseline_source,
        "tar_rule": "threshold = floor(far * negatives)-th highest negative score; accepted if score > threshold; "
                    "null where floor(far * negatives) == 0",
    }
    base_settings.update(settings or {})
    return EvaluationResult(protocol=protocol, config=config, sources=results, extraction=extraction,
                            settings=base_settings)


def evaluate(protocol: VerificationProtocol, *, recognizer: RecognizerConfig, config: EvaluationConfig) -> EvaluationResult:
    extraction = extract(protocol, recognizer=recognizer, config=config)
    return score(protocol, extraction, config=config, settings={"recognizer": recognizer.to_json()})


# --------------------------------------------------------------------------------------------------- output


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_table(result: EvaluationResult) -> str:
    """Plain-text table: AUC and TAR@FAR per source, then each source's gain over the baseline."""
    fars = list(result.config.fars)
    folds = result.protocol.folds
    kfold_head = [] if folds is None else [f"{np.unique(folds).size}-fold acc %"]
    head = ["source", "pairs"] + kfold_head + ["AUC"] + [f"TAR@{far_key(f)}" for f in fars]
    rows = []
    for name, res in result.sources.items():
        m = res.metrics
        kf = [] if res.kfold is None else [f"{100 * res.kfold.mean:.2f} ± {100 * res.kfold.std:.2f}"]
        rows.append([name, str(int(res.pair_mask.sum()))] + kf + [_fmt(m.auc)] + [_fmt(m.tar_at_far[f]) for f in fars])
    base_kfold = result.sources[result.config.baseline_source].kfold
    for name, gain in result.gains().items():
        res = result.sources[name]
        kf = [] if folds is None else [f"{100 * (res.kfold.mean - base_kfold.mean):+.2f}"]
        rows.append([f"{name} - {gain['vs']}", ""] + kf + [_fmt(gain["auc"], True)]
                    + [_fmt(gain["tar_at_far"][far_key(f)], True) for f in fars])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    first = next(iter(result.sources.values())).metrics
    lines.append(f"n/a: FAR below 1/negatives ({first.negatives} negative pairs) cannot be measured")
    return "\n".join(lines)


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, floor: float, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~``points`` ROC points, evenly spaced in log FAR (IJB-C has millions); keeps the step shape."""
    if fpr.size <= 2 * points:
        return fpr, tpr
    grid = np.logspace(np.log10(floor), 0.0, points)
    # last ROC point at or below each grid FAR (the highest TAR reachable there), plus the origin
    idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, fpr.size - 1])
    return fpr[idx], tpr[idx]


def plot_roc(result: EvaluationResult, path: Path) -> Path:
    """ROC curves (log FAR axis), one per source, saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lowest = 1.0
    for name, res in result.sources.items():
        roc = res.metrics.roc
        floor = 1.0 / roc.negatives
        lowest = min(lowest, floor)
        fpr, tpr = _thin_roc(roc.fpr, roc.tpr, floor)
        fpr = np.maximum(fpr, floor / 2)  # FAR 0 drawn at half the smallest measurable FAR
        ax.step(fpr, tpr, where="post", lw=1.4, label=f"{name} (AUC = {100 * roc.auc:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(lowest / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.grid(linestyle="--", linewidth=0.6)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.set_title(f"ROC - {result.protocol.name} ({len(result.protocol.labels)} pairs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_report(result: EvaluationResult, out_dir: Path | str) -> dict[str, Path]:
    """``report.json``, ``roc.png`` and per-source ``scores_<source>.npz`` (the scored pairs: ``scores``
    float32, ``labels`` bool, ``pair_index`` into the protocol's pairs) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    atomic_write_text(report_path, json.dumps(result.to_json(), indent=2, default=_json_default, allow_nan=False))
    paths = {"report": report_path, "roc": plot_roc(result, out / "roc.png")}
    for name, res in result.sources.items():
        p = out / f"scores_{name}.npz"
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            np.savez(f, scores=res.scores.astype(np.float32), labels=res.labels,
                     pair_index=np.flatnonzero(res.pair_mask))
        paths[f"scores_{name}"] = p
    return paths
