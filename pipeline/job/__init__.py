"""The align-dataset job: a folder tree of photos -> aligned face crops, on Ray Data.

One module per concern:

* :mod:`~pipeline.job.config` - :class:`AlignJobConfig`, exit codes, the resume fingerprint;
* :mod:`~pipeline.job.plan` - pure planning: workers, chunks, object-store budget (:class:`JobPlan`);
* :mod:`~pipeline.job.resume` - listing ``src``, what ``dst`` already holds, the lock;
* :mod:`~pipeline.job.stages` - the Ray Data stages (read, detect-align actors, write);
* :mod:`~pipeline.job.summary` - :class:`JobSummary`, built once;
* :mod:`~pipeline.job.run` - the driver, :func:`run_align_job`.

Outputs go through :mod:`pipeline.writers` (folder, RecordIO, WebDataset); ``faceprep align``
(:mod:`pipeline.job.cli`) is the command line.
"""

from pipeline.align import center_crop
from pipeline.job.config import (
    EXIT_FILES_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JOB_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    SUMMARY_NAME,
    AlignJobConfig,
    JobConfigError,
)
from pipeline.job.plan import (
    MAX_BLOCK_BYTES,
    MAX_INPUT_BLOCKS,
    MIN_OBJECT_STORE_BUDGET,
    JobPlan,
    WorkerPlan,
    estimate_input_bytes,
    guided_chunks,
    object_store_budget,
    plan_workers,
)
from pipeline.job.resume import exclusive, list_inputs
from pipeline.job.run import check_detector, run_align_job
from pipeline.job.stages import FaceCropPredictor, read_images, write_crops
from pipeline.job.summary import JobSummary
from pipeline.recordio import write_recordio_from_manifest

__all__ = [
    "AlignJobConfig", "EXIT_FILES_FAILED", "EXIT_OK", "EXIT_USAGE", "FaceCropPredictor", "JOB_NAME", "JobConfigError",
    "JobPlan", "JobSummary", "LOCK_NAME", "MANIFEST_NAME", "MAX_BLOCK_BYTES", "MAX_INPUT_BLOCKS",
    "MIN_OBJECT_STORE_BUDGET", "SUMMARY_NAME", "WorkerPlan", "center_crop", "check_detector", "estimate_input_bytes",
    "exclusive", "guided_chunks", "list_inputs", "object_store_budget", "plan_workers", "read_images",
    "run_align_job", "write_crops", "write_recordio_from_manifest",
]
