"""Alignment study: which alignment choices move verification accuracy, each on the full protocol.

A study is a list of :class:`StudyVariant` — one detector (family, weights, runtime, precision),
one :class:`pipeline.config.AlignConfig` (detector input size, face choice: selection mode and
minimum score), one crop source (``detector``:
ArcFace alignment; ``box``: no alignment), one flip fusion, and what happens to photos without a
face. Running every variant as its own evaluation would detect and embed every photo once per
variant; :func:`run_study` instead reads each photo once, runs each *distinct* detector once (at
the lowest minimum score its variants ask for: a lower threshold only adds faces below the higher
one, and NMS is greedy by score, so the faces at or above any threshold are the same), picks each
variant's face from those detections, and embeds each distinct crop (and its mirror) once. The
scores, metrics and k-fold accuracy then come from the same :func:`pipeline.verification.runner.score`
as a plain evaluation, so a study row equals the plain run with the same settings.

Photos without a face (at a variant's minimum score) get the centred square crop (``FALLBACK``);
variants with ``use_fallbacks=False`` exclude them and count them instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.fsio import atomic_write_text
from detector.config import ResizePolicy
from detector.spec import DetectorSpec
from pipeline.align import center_crop
from pipeline.config import AlignConfig
from pipeline.images import ImageReadError, read_image
from pipeline.select import select_faces
from pipeline.verification.aggregate import AggregationConfig
from pipeline.verification.crops import BOX, DETECTOR, CropStatus, box_crop, check_align, whole_image_box
from pipeline.verification.executor import check_models
from pipeline.verification.protocols import VerificationProtocol
from pipeline.verification.recognizer import RecognizerConfig
from pipeline.verification.runner import (
    EvaluationConfig,
    EvaluationResult,
    Extraction,
    PhotoTask,
    photo_tasks,
    run_workers,
    score,
)

FUSIONS = ("none", "sum", "concat")


@dataclass(frozen=True, kw_only=True)
class StudyVariant:
    """One row of the study."""

    name: str
    """Short label, e.g. ``select=central``."""
    detector: DetectorSpec
    """Which detector (its ``resize`` is not used: ``align.resize`` decides)."""
    align: AlignConfig = field(default_factory=AlignConfig)
    """Detector input size (``resize``, ``refine_size``, ``retry_resize``) and face choice (``select``:
    largest, central or score; ``min_score``): the one set of defaults unless changed."""
    source: str = DETECTOR
    """``detector`` (ArcFace alignment of the chosen face) or ``box`` (its box, no alignment)."""
    fusion: str = "sum"
    """Flip test: ``none``, ``sum`` (insightface) or ``concat``."""
    use_fallbacks: bool = True
    """Photos without a face are scored with their centred crop (``True``) or excluded (``False``)."""

    def __post_init__(self) -> None:
        if self.source not in (DETECTOR, BOX):
            raise ValueError(f"{self.name}: source must be 'detector' or 'box', got {self.source!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"{self.name}: fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        try:
            check_align(self.align)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        if not self.align.min_score < 1.0:
            raise ValueError(f"{self.name}: align.min_score must be in [0, 1), got {self.align.min_score}")

    @property
    def detector_key(self) -> tuple[DetectorSpec, AlignConfig]:
        """The detection pass without the face choice: variants with equal keys share one pass
        (the detector's unused ``resize`` and the choice's ``select`` are neutralised, and
        ``min_score`` too when there is no voting: with ``vote_iou``, the candidates that vote are
        those above ``min_score`` (the aligner's detector threshold), so the landmarks depend on it)."""
        min_score = self.align.min_score if self.align.vote_iou is not None else 0.0
        return (dataclasses.replace(self.detector, resize=None),
                dataclasses.replace(self.align, select="all", min_score=min_score, max_faces=None))

    def evaluation_config(self, **kwargs: Any) -> EvaluationConfig:
        """The plain evaluation this row equals (photos without a face centre-cropped); ``kwargs``:
        other :class:`EvaluationConfig` fields (``fars``, ``threads``, ...)."""
        return EvaluationConfig(sources=(self.source,), aggregation=self.aggregation, align=self.align,
                                detector=self.detector, on_no_face="center-crop", use_fallbacks=self.use_fallbacks,
                                **kwargs)

    @property
    def aggregation(self) -> AggregationConfig:
        return AggregationConfig(flip=self.fusion != "none",
                                 flip_fusion="sum" if self.fusion == "none" else self.fusion,
                                 face_score=False, keep_norm=True)

    def to_json(self) -> dict:
        return {"name": self.name,
                "detector": {**self.detector.fingerprint(), "resize": self.align.resize.to_string()},
                "select": self.align.select, "min_score": self.align.min_score, "source": self.source,
                "fusion": self.fusion, "use_fallbacks": self.use_fallbacks}


def default_variants(base: DetectorSpec, *, align: AlignConfig | None = None,
                     resizes: Sequence[str] = ("cap:1024", "long:640", "long:160"),
                     extra_detectors: Sequence[tuple[str, DetectorSpec, str | None]] = ()) -> list[StudyVariant]:
    """The standard study: ``base`` (the given detector and ``align``, default ``AlignConfig()``;
    flip sum, centred crop for photos without a face) and one variant per choice, each changing
    one thing from it:

    * face selection: the other two of largest / central / score;
    * minimum score: 0.1, 0.3, 0.8 (and 0.5 when the base is elsewhere);
    * detector input size: each of ``resizes`` but the base's (LFW's photos are 250 px: ``cap:1024``
      keeps them, ``long:640`` upscales them 2.56x, ``long:160`` shrinks them to 0.64x, as a large
      photo shrunk for the detector);
    * runtime and precision: eager torch fp32 (the reference) and, for a base on a reduced
      precision, the same runtime in fp32;
    * each of ``extra_detectors`` (``(label, spec, resize)``: another family such as SCRFD, at its own
      resize, ``None``: the base's);
    * flip fusion: none and concat;
    * photos without a face excluded instead of centre-cropped;
    * ``box``: the chosen face's box, no alignment — what alignment buys.
    """
    align = AlignConfig() if align is None else align
    b = StudyVariant(name="base", detector=base, align=align)

    def changed(**fields: Any) -> AlignConfig:
        return dataclasses.replace(align, **fields)

    out = [b]
    for mode in ("largest", "central", "score"):
        if mode != align.select:
            out.append(dataclasses.replace(b, name=f"select={mode}", align=changed(select=mode)))
    for t in (0.1, 0.3, 0.5, 0.8):
        if not math.isclose(t, align.min_score):
            out.append(dataclasses.replace(b, name=f"min_score={t}", align=changed(min_score=t)))
    for resize in resizes:
        if align.resize != ResizePolicy.parse(resize):
            out.append(dataclasses.replace(b, name=f"resize={resize}", align=changed(resize=resize)))
    resolved = base.resolved()
    if resolved.family == "retinaface" and resolved.runtime != "torch":
        out.append(dataclasses.replace(b, name="runtime=torch fp32",
                                       detector=dataclasses.replace(base, runtime="torch", precision="fp32")))
    if resolved.precision not in ("fp32",):
        out.append(dataclasses.replace(b, name=f"{resolved.runtime} fp32",
                                       detector=dataclasses.replace(base, runtime=resolved.runtime, precision="fp32")))
    for label, spec, resize in extra_detectors:
        out.append(dataclasses.replace(b, name=label, detector=spec, align=changed(resize=resize) if resize else align))
    out.append(dataclasses.replace(b, name="flip=none", fusion="none"))
    out.append(dataclasses.replace(b, name="flip=concat", fusion="concat"))
    out.append(dataclasses.replace(b, name="no face: excluded", use_fallbacks=False))
    out.append(dataclasses.replace(b, name="box (no alignment)", source=BOX))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names in {names}")
    return out


# ----------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True, eq=False, kw_only=True)
class StudyChunk:
    indices: np.ndarray
    status: np.ndarray
    """``[V, n]`` CropStatus per variant and photo."""
    scores: np.ndarray
    """``[V, n]`` face score of the variant's crop (0 without one)."""
    crop_of: np.ndarray
    """``[V, n]`` row into ``features`` of the variant's crop, -1 without one."""
    features: np.ndarray
    flipped: np.ndarray
    problems: dict[int, str]
    timings: dict[str, float]


class StudyWorker:
    """Reads each photo once, runs each distinct detector once, embeds each distinct crop once."""

    def __init__(self, *, recognizer: RecognizerConfig, variants: Sequence[StudyVariant], image_size: int = 112,
                 threads: int = 0):
        from pipeline.stage import FaceAligner

        if threads > 0:
            recognizer = recognizer.with_threads(threads)
        self.recognizer = recognizer.build()
        if self.recognizer.input_size != image_size:
            raise ValueError(f"recogniser input is {self.recognizer.input_size}px but crops are {image_size}px")
        self.variants = list(variants)
        self.image_size = image_size
        keys: list[tuple[DetectorSpec, AlignConfig]] = []
        self.group_of: list[int] = []
        for v in self.variants:
            if v.detector_key not in keys:
                keys.append(v.detector_key)
            self.group_of.append(keys.index(v.detector_key))
        self.aligners = []
        for g, (spec, align) in enumerate(keys):
            low = min(v.align.min_score for v, gv in zip(self.variants, self.group_of) if gv == g)
            config = dataclasses.replace(align, image_size=image_size, min_score=low)
            self.aligners.append(FaceAligner(detector=spec.build, config=config))

    def process(self, tasks: Sequence[PhotoTask]) -> StudyChunk:
        n, nv = len(tasks), len(self.variants)
        status = np.full((nv, n), CropStatus.NO_FACE, dtype=np.int8)
        scores = np.zeros((nv, n), dtype=np.float32)
        crop_of = np.full((nv, n), -1, dtype=np.int64)
        crops: list[np.ndarray] = []
        problems: dict[int, str] = {}
        t_read = t_detect = 0.0
        made: dict[tuple, int] = {}  # distinct crop of the current photo -> row in ``crops``

        def row(key: tuple, make: Callable[..., np.ndarray], *args: Any) -> int:
            """Row in ``crops`` of the crop ``make(*args)``, made once per photo and ``key``."""
            if key not in made:
                made[key] = len(crops)
                crops.append(make(*args))
            return made[key]

        for pos, task in enumerate(tasks):
            t0 = time.perf_counter()
            path = Path(task.path)
            try:
                if not path.is_file():
                    status[:, pos] = CropStatus.MISSING
                    problems[task.index] = f"{path}: file not found"
                    continue
                image = read_image(path)
            except ImageReadError as exc:
                status[:, pos] = CropStatus.UNREADABLE
                problems[task.index] = str(exc)
                continue
            finally:
                t_read += time.perf_counter() - t0
            t1 = time.perf_counter()
            made.clear()
            per_group = [a.detect_and_align([image])[0] for a in self.aligners]
            for v_i, (v, g) in enumerate(zip(self.variants, self.group_of)):
                dets, faces = per_group[g]
                idx = select_faces(dets.boxes, dets.scores, image_shape=image.shape, mode=v.align.select,
                                   min_score=v.align.min_score, max_faces=1)
                if len(idx):
                    i = int(idx[0])
                    face = next(f for f in faces if f.face_index == i)
                    if v.source == DETECTOR:
                        crop_of[v_i, pos] = row((g, i, DETECTOR), lambda crop: crop, face.crop)
                    else:
                        crop_of[v_i, pos] = row((g, i, BOX), box_crop, image, face.box, self.image_size)
                    status[v_i, pos], scores[v_i, pos] = CropStatus.OK, face.score
                elif v.source == DETECTOR:
                    crop_of[v_i, pos] = row(("center",), center_crop, image, (self.image_size,) * 2)
                    status[v_i, pos], scores[v_i, pos] = CropStatus.FALLBACK, 1.0
                else:  # the box source's own fallback: the whole photo's centred square
                    crop_of[v_i, pos] = row(("whole",), box_crop, image, whole_image_box(image), self.image_size)
                    status[v_i, pos], scores[v_i, pos] = CropStatus.FALLBACK, 1.0
            t_detect += time.perf_counter() - t1
        t0 = time.perf_counter()
        if crops:
            batch = np.stack(crops)
            emb = self.recognizer.embed(np.concatenate([batch, np.ascontiguousarray(batch[:, :, ::-1])]))
            features, flipped = emb[: len(crops)].astype(np.float32), emb[len(crops):].astype(np.float32)
        else:
            features = flipped = np.zeros((0, 0), np.float32)
        return StudyChunk(indices=np.asarray([t.index for t in tasks], dtype=np.int64), status=status, scores=scores,
                          crop_of=crop_of, features=features, flipped=flipped, problems=problems,
                          timings={"read_s": t_read, "detect_align_s": t_detect, "embed_s": time.perf_counter() - t0,
                                   "crops": len(crops)})


# ------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    variants: tuple[StudyVariant, ...]
    num_workers: int = 0
    """As :attr:`pipeline.verification.runner.EvaluationConfig.num_workers` (0: every CPU on Ray)."""
    threads: int | None = None
    address: str | None = None
    chunk_size: int = 16
    image_size: int = 112
    fars: tuple[float, ...] = (1e-3, 1e-2)
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants:
            raise ValueError("a study needs at least one variant")
        other = [v.name for v in self.variants if v.align.image_size != self.image_size]
        if other:
            raise ValueError(f"variants {other} make crops of another size than image_size={self.image_size}")


@dataclass(frozen=True, eq=False, kw_only=True)
class StudyResult:
    protocol: VerificationProtocol
    config: StudyConfig
    results: dict[str, EvaluationResult]
    throughput: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for v in self.config.variants:
            res = self.results[v.name].sources[v.source]
            m = res.metrics
            out.append({
                "variant": v.name,
                "kfold_mean": None if res.kfold is None else res.kfold.mean,
                "kfold_std": None if res.kfold is None else res.kfold.std,
                "best_accuracy": m.best_accuracy,
                "auc": m.auc,
                "tar_at_far": {repr(f): m.tar_at_far[f] for f in self.config.fars},
                "pairs": int(res.pair_mask.sum()),
                "no_face_photos": int(np.count_nonzero(self.results[v.name].extraction.status[v.source]
                                                       == CropStatus.FALLBACK)),
                "settings": v.to_json(),
            })
        return out

    def to_json(self) -> dict:
        return {"protocol": self.protocol.summary(), "rows": self.rows(), "throughput": self.throughput}

    def markdown(self) -> str:
        """The study table (Markdown): one row per variant."""
        head = "| variant | 10-fold accuracy % | best acc % | AUC | " + " | ".join(
            f"TAR@FAR={f:g}" for f in self.config.fars) + " | pairs | no-face photos |"
        sep = "|" + "---|" * (6 + len(self.config.fars))
        lines = [head, sep]
        for r in self.rows():
            kf = "n/a" if r["kfold_mean"] is None else f"{100 * r['kfold_mean']:.2f} ± {100 * r['kfold_std']:.2f}"
            tars = " | ".join("n/a" if t is None else f"{t:.4f}" for t in r["tar_at_far"].values())
            lines.append(f"| {r['variant']} | {kf} | {100 * r['best_accuracy']:.2f} | {r['auc']:.4f} | {tars} | "
                         f"{r['pairs']} | {r['no_face_photos']} |")
        return "\n".join(lines)


def run_study(protocol: VerificationProtocol, *, recognizer: RecognizerConfig, config: StudyConfig) -> StudyResult:
    """Extract once for all variants (see the module docstring), then score each variant."""
    check_models(detectors=[v.detector for v in config.variants], recognizer=recognizer)
    tasks = photo_tasks(protocol)
    chunks = [tasks[i:i + config.chunk_size] for i in range(0, len(tasks), config.chunk_size)]
    n, nv = len(tasks), len(config.variants)
    status = np.zeros((nv, n), dtype=np.int8)
    scores = np.zeros((nv, n), dtype=np.float32)
    features: np.ndarray | None = None
    flipped: np.ndarray | None = None
    problems: dict[int, str] = {}
    timings = {"read_s": 0.0, "detect_align_s": 0.0, "embed_s": 0.0, "crops": 0}
    run_stats: dict[str, Any] = {"workers": config.num_workers}
    worker_kwargs = dict(recognizer=recognizer, variants=config.variants, image_size=config.image_size)
    start = time.perf_counter()
    with tqdm(total=n, desc="study photos", unit="photo", disable=not config.progress) as bar:
        for r in run_workers(StudyWorker, worker_kwargs, chunks, bar=bar, num_workers=config.num_workers,
                             threads=config.threads, address=config.address, stats=run_stats):
            if features is None and r.features.shape[0]:
                d = r.features.shape[1]
                features = np.zeros((nv, n, d), np.float32)
                flipped = np.zeros((nv, n, d), np.float32)
            status[:, r.indices] = r.status
            scores[:, r.indices] = r.scores
            has = r.crop_of >= 0
            for v in range(nv):
                rows = r.indices[has[v]]
                features[v, rows] = r.features[r.crop_of[v, has[v]]]
                flipped[v, rows] = r.flipped[r.crop_of[v, has[v]]]
            problems.update(r.problems)
            for k in timings:
                timings[k] += r.timings[k]
    wall = time.perf_counter() - start
    if features is None:
        raise RuntimeError(f"no photo of {protocol.source} could be read")
    throughput = {"photos": n, "workers": run_stats["workers"], "wall_s": wall, "photos_per_s": n / wall,
                  "distinct_crops": timings["crops"], "embeddings": 2 * timings["crops"],
                  "read_busy_s": timings["read_s"], "detect_align_busy_s": timings["detect_align_s"],
                  "embed_busy_s": timings["embed_s"],
                  "detection_passes": len({v.detector_key for v in config.variants})}
    results: dict[str, EvaluationResult] = {}
    for v_i, v in enumerate(config.variants):
        extraction = Extraction(
            sources=(v.source,), features={v.source: features[v_i]}, flipped={v.source: flipped[v_i]},
            status={v.source: status[v_i]}, scores={v.source: scores[v_i]}, flip=True, problems=problems,
            throughput=throughput,
        )
        eval_config = v.evaluation_config(fars=config.fars, progress=False)
        results[v.name] = score(protocol, extraction, config=eval_config, settings={"variant": v.to_json()})
    return StudyResult(protocol=protocol, config=config, results=results, throughput=throughput)


def write_study(result: StudyResult, out_dir: Path | str) -> dict[str, Path]:
    """``study.json`` (every row with its settings, and the throughput) and ``study.md`` (the table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "study.json", "markdown": out / "study.md"}
    atomic_write_text(paths["json"], json.dumps(result.to_json(), indent=2, allow_nan=False, default=str))
    atomic_write_text(paths["markdown"], result.markdown() + "\n")
    return paths


__all__ = ["FUSIONS", "StudyConfig", "StudyResult", "StudyVariant", "StudyWorker", "default_variants", "run_study",
           "write_study"]
