"""Verification evaluation: photos -> crops per alignment source -> embeddings -> template scores -> metrics.

:func:`extract` reads each photo once, makes the crop of every requested alignment source
(:mod:`.crops`), and embeds the crops (and their mirrors, for the flip test) with the recogniser,
in-process or on ``num_workers`` Ray actors that each build their own detector and recogniser.
:func:`score` aggregates templates as insightface's IJB-C script (:mod:`.aggregate`) and computes the
metrics (:mod:`.metrics`). The workers run through :mod:`.executor`; the table, the ROC plot and
``report.json`` are :mod:`.reporting`'s (:func:`format_table`, :func:`write_report`, re-exported here).

Photos that are missing or unreadable, and photos without a face for a source, are counted, never
silently dropped; a template left without any usable photo and the pairs that use it are excluded
and counted. By default (``common_pairs``) every source is scored on the same pairs - those all
sources could score - so the numbers compare like with like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from detector.spec import DetectorSpec
from pipeline.config import AlignConfig
from pipeline.images import ImageReadError, read_image
from pipeline.verification.aggregate import AggregationConfig, image_features, pair_scores, template_features
from pipeline.verification.crops import (
    BOX,
    DETECTOR,
    PROVIDED,
    CropMaker,
    CropStatus,
    check_align,
    check_on_no_face,
    face_aligner,
    parse_sources,
    settings_json,
)
from pipeline.verification.executor import check_models, run_workers, torch_threads
from pipeline.verification.metrics import DEFAULT_FARS, KFoldAccuracy, VerificationMetrics, far_key, kfold_accuracy
from pipeline.verification.protocols import VerificationProtocol
from pipeline.verification.recognizer import RecognizerConfig
from pipeline.verification.reporting import format_table, plot_roc, write_report

__all__ = [  # format_table, plot_roc, write_report, run_workers and torch_threads: re-exported
    "ChunkResult", "EvaluationConfig", "EvaluationResult", "Extraction", "ExtractionWorker", "PhotoTask",
    "SourceResult", "VerificationDataError", "evaluate", "extract", "format_table", "photo_tasks", "plot_roc",
    "run_workers", "score",
    "torch_threads", "write_report",
]


class VerificationDataError(RuntimeError):
    """The photos cannot support the evaluation (strict mode, or nothing left to score)."""


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    sources: tuple[str, ...] = (DETECTOR, BOX)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    """How the ``detector`` and ``box`` sources find and choose a photo's face, and the crop size:
    the project's one set of defaults (:class:`pipeline.config.AlignConfig`: ``select`` - largest,
    central or score -, ``min_score``, ``resize``, ``refine_size``, ``retry_resize``, ``image_size``);
    one face is kept per photo."""
    detector: DetectorSpec | None = field(default_factory=DetectorSpec)
    """Which detector (:class:`detector.spec.DetectorSpec`; its ``resize`` is not used:
    ``align.resize`` decides). ``None``: only the ``provided`` source can be evaluated."""
    on_no_face: str = "exclude"
    """The ``detector`` source, for a photo without a face and without protocol landmarks:
    ``exclude`` (no crop, counted) or ``center-crop`` (the photo's centred square, ``FALLBACK``)."""
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
        check_align(self.align)
        check_on_no_face(self.on_no_face)
        if self.detector is not None and not isinstance(self.detector, DetectorSpec):
            raise TypeError(f"detector must be a DetectorSpec or None, got {type(self.detector).__name__}")
        if (DETECTOR in self.sources or BOX in self.sources) and self.detector is None:
            raise ValueError(f"sources {self.sources} need a detector")
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

    def __init__(self, *, recognizer: RecognizerConfig, sources: tuple[str, ...], align: AlignConfig,
                 detector: DetectorSpec | None, on_no_face: str, flip: bool, threads: int = 0):
        if threads > 0:
            recognizer = recognizer.with_threads(threads)
        self.sources = parse_sources(sources)
        self.flip = flip
        self.recognizer = recognizer.build()
        image_size = align.image_size
        if self.recognizer.input_size != image_size:
            raise ValueError(f"recogniser input is {self.recognizer.input_size}px but crops are {image_size}px")
        needs_detector = DETECTOR in self.sources or BOX in self.sources
        self.crop_maker = CropMaker(
            sources=self.sources, aligner=face_aligner(align=align, detector=detector) if needs_detector else None,
            image_size=image_size, on_no_face=on_no_face,
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


def extract(protocol: VerificationProtocol, *, recognizer: RecognizerConfig, config: EvaluationConfig) -> Extraction:
    """Crops and features of every photo of ``protocol`` for every source of ``config``."""
    if PROVIDED in config.sources and not protocol.has_landmarks:
        raise ValueError(f"the 'provided' source needs protocol landmarks; {protocol.name} has none")
    check_models(detectors=[config.detector] if DETECTOR in config.sources or BOX in config.sources else [],
                 recognizer=recognizer)
    tasks = photo_tasks(protocol)
    if config.strict:
        missing = [t.path for t in tasks if not Path(t.path).is_file()]
        if missing:
            raise VerificationDataError(
                f"{len(missing)} photos of {protocol.source} are missing, e.g. " + ", ".join(missing[:5])
            )
    chunks = [tasks[i:i + config.chunk_size] for i in range(0, len(tasks), config.chunk_size)]
    worker_kwargs = dict(recognizer=recognizer, sources=config.sources, align=config.align, detector=config.detector,
                         on_no_face=config.on_no_face, flip=config.aggregation.flip)
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


def _source_scores(protocol: VerificationProtocol, extraction: Extraction, source: str, aggregation: AggregationConfig,
                   use_fallbacks: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
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
            elif config.on_no_face == "center-crop":
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
        "detector": None if config.detector is None or config.sources == (PROVIDED,) else settings_json(
            align=config.align, detector=config.detector, on_no_face=config.on_no_face),
        "fars": [far_key(f) for f in config.fars],
        "common_pairs": config.common_pairs,
        "baseline": config.baseline_source,
        "tar_rule": "threshold = floor(far * negatives)-th highest negative score; accepted if score > threshold; "
                    "null where floor(far * negatives) == 0",
    }
    base_settings.update(settings or {})
    return EvaluationResult(protocol=protocol, config=config, sources=results, extraction=extraction,
                            settings=base_settings)


def evaluate(protocol: VerificationProtocol, *, recognizer: RecognizerConfig,
             config: EvaluationConfig) -> EvaluationResult:
    extraction = extract(protocol, recognizer=recognizer, config=config)
    return score(protocol, extraction, config=config, settings={"recognizer": recognizer.to_json()})
