"""What the align job is asked to do: :class:`AlignJobConfig` (frozen, validated once), exit codes,
and the resume fingerprint derived from the config's own fields. The statuses and the file names in
``dst`` live in :mod:`pipeline.records` (re-exported here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.fsio import sha256_file
from detector.config import ResizePolicy
from detector.spec import DetectorSpec
from pipeline.config import AlignConfig
from pipeline.curation.identity import OutlierRule
from pipeline.curation.quality import QualityFilter
from pipeline.records import (  # re-exported: the names' home is pipeline.records
    DONE_STATUSES,
    IDENTITIES_NAME,
    JOB_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    STATUS_ERROR,
    STATUS_FILTERED,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUSES,
    SUMMARY_NAME,
)
from pipeline.verification.recognizer import OnnxRecognizerConfig
from pipeline.writers import FORMATS, OutputLayout

__all__ = [
    "AlignJobConfig", "EXIT_FILES_FAILED", "EXIT_OK", "EXIT_USAGE", "JobConfigError", "IDENTITIES_NAME",
    "JOB_NAME", "LOCK_NAME", "MANIFEST_NAME", "SUMMARY_NAME", "STATUSES", "STATUS_ERROR", "STATUS_NO_FACE",
    "STATUS_OK", "DONE_STATUSES", "STATUS_FILTERED", "EXIT_NODE_LOST", "recognizer_fingerprint",
]

def job_align_defaults(**overrides: Any) -> AlignConfig:
    """The align job's :class:`AlignConfig`: the one set of defaults (``AlignConfig()``), errors
    recorded per photo, with ``overrides``."""
    return AlignConfig(**{"on_error": "record", **overrides})


EXIT_OK = 0
"""Every input has an ``ok``, ``no_face`` or ``filtered`` record."""
EXIT_USAGE = 2
"""Nothing was processed: bad arguments, missing ``src`` or weights, an unusable detector, or a
``dst`` made with different settings (rerun with ``--overwrite``)."""
EXIT_FILES_FAILED = 3
"""The job finished, but some inputs have ``error`` records (see the manifest)."""
EXIT_NODE_LOST = 75
"""Stopped: a Ray node died and no photo finished for ``stall_timeout_s`` since (sysexits'
EX_TEMPFAIL). Finished photos are recorded; rerun the same command to resume."""


class JobConfigError(ValueError):
    """The job cannot start as configured (the CLI exits with :data:`EXIT_USAGE`)."""


# Fields that decide the outputs; everything else (resources, progress, ...) may change between
# a run and its resume. The fingerprint is derived from these names, never hand-copied values.
_OUTPUT_FIELDS = ("on_no_face", "ext", "quality", "format", "exact", "landmarks_only")
_ALIGN_RUNTIME_FIELDS = frozenset({"on_error"})  # how errors surface, not what the outputs are


@dataclass(frozen=True, kw_only=True)
class AlignJobConfig:
    """Everything the job needs; validated on construction.

    Attributes:
        src: folder of photos (any depth; the top-level sub-folder is the identity).
        dst: output folder; mirrors ``src``'s relative paths, plus manifest/summary files.
        align: detection/selection/alignment settings (its ``on_error`` is forced to ``record``).
        detector: which detector, runtime and precision (:class:`detector.spec.DetectorSpec`;
            its ``resize`` is ignored: ``align.resize`` decides; its ``device`` is set per actor).
        device: ``"auto"`` (GPU actors when Ray has GPUs), ``"cpu"`` or ``"cuda"``.
        on_no_face: ``"skip"`` (no output) or ``"center-crop"`` (a centred crop of the photo).
        exact: decode every photo at full size (crops bit-identical to ``norm_crop`` of the
            detections); default ``False``: JPEG drafts where the detector shrinks the photo
            anyway (see :class:`pipeline.job.stages.FaceCropPredictor`).
        ext: crop file format, ``"jpg"`` or ``"png"``.
        quality: JPEG quality (1-100) for crop files, RecordIO and WebDataset payloads.
        format: output writer, see :data:`pipeline.writers.FORMATS` (``folder``, ``recordio``,
            ``webdataset``).
        shard_bytes: ``webdataset``: a shard is closed once it holds about this many bytes.
        batch_size: photos per actor call, the largest chunk (see :func:`pipeline.job.plan.guided_chunks`),
            and per detector call on GPU; ``None``: from the resources Ray sees.
        num_workers: detector actors; ``None``: from the resources Ray sees.
        threads: intra-op threads per actor; ``None``: 1 (2 from 8 CPUs up).
        limit: only the first ``limit`` inputs (sorted relative paths).
        dry_run: list and plan only; write nothing, start nothing.
        overwrite: trust no existing record: redo every (listed, limited) input.
        address: Ray cluster address (``None``: the Ray already initialised in this process,
            else ``$RAY_ADDRESS``, else a new local Ray).
        progress: show a progress bar.
        durable: fsync outputs and manifest lines (survive power loss, not only kills).
        decode: where photos are decoded, see :func:`pipeline.job.plan.plan_workers`.
        verbose: show Ray's own log lines and warnings.
        stall_timeout_s: after a Ray node dies, stop (:data:`EXIT_NODE_LOST`) once no photo has
            finished for this long (see :func:`pipeline.job.nodes.watch_progress`).
        landmarks: a CSV of given landmarks (:mod:`pipeline.curation.landmarks`): its photos are
            aligned from those points, without detection (``None``: detect every photo).
        landmarks_only: process only the photos ``landmarks`` lists (the others get no record).
        quality_filter: which faces may be selected (:class:`pipeline.curation.QualityFilter`,
            default: every rule off); a photo whose faces all fail gets the status ``filtered``.
        recognizer: an ArcFace-style ONNX recogniser (``None``: no identity pass). With it the
            job embeds every candidate face, builds each identity's centre and records identity
            distances and outliers (see :mod:`pipeline.job.identity`); ``align.select ==
            "identity"`` needs it.
        outlier: the identity outlier rule (:class:`pipeline.curation.identity.OutlierRule`).
    """

    src: Path
    dst: Path
    align: AlignConfig = field(default_factory=job_align_defaults)
    detector: DetectorSpec = field(default_factory=lambda: DetectorSpec(precision="auto"))
    on_no_face: Literal["skip", "center-crop"] = "skip"
    exact: bool = False
    ext: Literal["jpg", "png"] = "jpg"
    quality: int = 95
    format: str = "folder"
    shard_bytes: int = 1 << 30
    batch_size: int | None = None
    num_workers: int | None = None
    device: str = "auto"
    threads: int | None = None
    limit: int | None = None
    dry_run: bool = False
    overwrite: bool = False
    address: str | None = None
    progress: bool = True
    durable: bool = False
    decode: Literal["auto", "tasks", "actors"] = "auto"
    verbose: bool = False
    stall_timeout_s: float = 120.0
    landmarks: Path | None = None
    landmarks_only: bool = False
    quality_filter: QualityFilter = field(default_factory=QualityFilter)
    recognizer: OnnxRecognizerConfig | None = None
    outlier: OutlierRule = field(default_factory=OutlierRule)

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "dst", Path(self.dst))
        if not isinstance(self.align, AlignConfig):
            raise TypeError(f"align must be an AlignConfig, got {type(self.align).__name__}")
        if not isinstance(self.detector, DetectorSpec):
            raise TypeError(f"detector must be a DetectorSpec, got {type(self.detector).__name__}")
        if self.align.on_error != "record":
            object.__setattr__(self, "align", dataclasses.replace(self.align, on_error="record"))
        if self.align.color != "bgr":
            raise ValueError("the job writes BGR crops with OpenCV; use AlignConfig(color='bgr')")
        # one resize policy: the stage's
        object.__setattr__(self, "detector", dataclasses.replace(self.detector, resize=self.align.resize))
        if self.on_no_face not in ("skip", "center-crop"):
            raise ValueError(f"on_no_face must be 'skip' or 'center-crop', got {self.on_no_face!r}")
        if self.ext not in ("jpg", "png"):
            raise ValueError(f"ext must be 'jpg' or 'png', got {self.ext!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        for name in ("batch_size", "num_workers", "threads", "limit", "shard_bytes"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.decode not in ("auto", "tasks", "actors"):
            raise ValueError(f"decode must be 'auto', 'tasks' or 'actors', got {self.decode!r}")
        if not float(self.stall_timeout_s) > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        if self.landmarks is not None:
            object.__setattr__(self, "landmarks", Path(self.landmarks))
        if self.landmarks_only and self.landmarks is None:
            raise ValueError("landmarks_only needs a landmarks file (--landmarks FILE)")
        if not isinstance(self.quality_filter, QualityFilter):
            raise TypeError(f"quality_filter must be a QualityFilter, got {type(self.quality_filter).__name__}")
        if self.recognizer is not None and not isinstance(self.recognizer, OnnxRecognizerConfig):
            raise TypeError(f"recognizer must be an OnnxRecognizerConfig, got {type(self.recognizer).__name__}")
        if not isinstance(self.outlier, OutlierRule):
            raise TypeError(f"outlier must be an OutlierRule, got {type(self.outlier).__name__}")
        if self.align.select == "identity" and self.recognizer is None:
            raise ValueError("select 'identity' needs a recogniser (--recognizer MODEL.onnx)")

    @property
    def layout(self) -> OutputLayout:
        per_face = self.align.select == "all" or (self.align.max_faces or 1) > 1
        return OutputLayout(ext=self.ext, per_face=per_face)

    def fingerprint(self, detector: DetectorSpec | None = None) -> dict[str, Any]:
        """The settings that decide what the outputs are (compared when resuming): every field of
        ``align`` but ``on_error``, the output fields, the resolved detector spec (default: this
        config's, resolved), and ``src``."""
        detector = detector or self.detector
        align = {f.name: getattr(self.align, f.name) for f in dataclasses.fields(self.align)
                 if f.name not in _ALIGN_RUNTIME_FIELDS}
        align = {k: v.to_string() if isinstance(v, ResizePolicy) else v for k, v in align.items()}
        return {
            "src": str(self.src.resolve()),
            **align,
            **{name: getattr(self, name) for name in _OUTPUT_FIELDS},
            "detector": detector.fingerprint(),
            "quality_filter": self.quality_filter.to_dict(),
            "landmarks": self._landmarks_fingerprint(),
            "recognizer": self._recognizer_fingerprint(),
        }

    def _landmarks_fingerprint(self) -> str | None:
        """sha256 of the landmarks file (its content, not its name, decides the outputs)."""
        if self.landmarks is None:
            return None
        try:
            return sha256_file(self.landmarks)
        except OSError as e:
            raise JobConfigError(f"cannot read landmarks file {self.landmarks}: {e.strerror or e}") from e

    def _recognizer_fingerprint(self) -> dict[str, Any] | None:
        if self.recognizer is None:
            return None
        return {**recognizer_fingerprint(self.recognizer), "outlier": self.outlier.to_json()}


def recognizer_fingerprint(recognizer: OnnxRecognizerConfig) -> dict[str, Any]:
    """What decides the embeddings of ``--recognizer``: the model file (path, size, sha256) and its
    pre-processing. An unreadable file is a :class:`JobConfigError`."""
    path = Path(recognizer.model).resolve()
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise JobConfigError(f"recogniser {recognizer.model}: cannot read ({e.strerror or e})") from e
    return {"model": str(path), "bytes": path.stat().st_size, "sha256": digest,
            "preprocess": recognizer.preprocess.to_json()}
