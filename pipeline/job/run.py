"""The align job's driver: check, plan, run the Ray Data pipeline, record, summarise.

Pipeline (one streaming Ray Data dataset)::

    relative paths (driver: walk ``src``, drop inputs already done, cut the rest into chunks)
      -> read_images       CPU tasks: read the files (and decode them for GPU actors)
      -> FaceCropPredictor actor pool: detect, select, align (detector built once per actor)
      -> write_crops       CPU tasks: encode, write through the output writer, build the records
      -> driver            the writer's sink appends records to ``dst/manifest.jsonl``; progress bar

That is the GPU layout. CPU actors run read_images and write_crops themselves
(:func:`pipeline.job.stages.with_io`, :attr:`pipeline.job.plan.WorkerPlan.fused`): one actor call
per chunk and no other tasks, since every Ray task costs CPU that a small machine takes from the
actors. A chunk (:func:`pipeline.job.plan.guided_chunks`) is one Ray block: one read task, one
actor call, one write task (or the one actor call). The driver and the read/write tasks never
import torch; the actors import only the
runtime their :class:`detector.spec.DetectorSpec` names.

A failed start writes nothing. Before Ray starts, the driver checks ``src``, ``dst`` and the
detector (weights readable and of the right kind, runtime installed). Then, with Ray up and
before anything is written in ``dst``: the device is resolved from the cluster's resources the
way the actors will run (:func:`pipeline.job.plan.resolve_device`: ``auto`` is CUDA when Ray has a
GPU), the detector is checked again for that device (``--precision auto`` on CUDA is fp16 with
torch, see :func:`device_spec`), on CUDA one Ray task granted a GPU builds the detector (and
the recogniser) there and checks that CUDA is what runs (:func:`probe_gpu`), and the settings are
compared with ``dst/job.json``. A bad setting is one :class:`JobConfigError` line, and ``dst`` is
left as it was. ``job.json`` records the runtime, precision and device that run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from common.fsio import atomic_write_text, remove_temporaries
from common.ray_init import RayConnectError, finish_shutdown, ray_session
from detector.hub import CheckpointError
from detector.probe import worker_env
from detector.spec import AUTO, DetectorSpec
from pipeline.curation.landmarks import GivenLandmarks, LandmarksFileError, read_landmarks_csv
from pipeline.job.config import AlignJobConfig, JobConfigError
from pipeline.job.feed import on_granted_device, takes_read_drafts
from pipeline.job.identity import (
    FaceEmbedPredictor,
    IdentityCropPredictor,
    actor_recognizer,
    check_recognizer,
    identity_summary,
    prepare_identities,
)
from pipeline.job.nodes import NODE_COLUMN, keep_node, tag_node, watch_progress
from pipeline.job.plan import TASKS_IN_FLIGHT_PER_ACTOR, JobPlan, resolve_device
from pipeline.job.resume import check_fingerprint, check_paths, done_inputs, exclusive, final_counts, list_inputs
from pipeline.job.stages import FaceCropPredictor, read_images, with_io, write_crops
from pipeline.job.summary import JobSummary, RunStats, make_summary
from pipeline.manifest import ManifestWriter, compact_manifest
from pipeline.records import JOB_NAME, LOCK_NAME, MANIFEST_NAME, STATUSES, SUMMARY_NAME
from pipeline.report import ReportConfig, ReportError, build_report
from pipeline.writers import CropWriter, OutputLayout, make_writer

__all__ = ["GPU_PROBE_TIMEOUT_S", "check_detector", "device_spec", "probe_gpu", "run_align_job"]

GPU_PROBE_TIMEOUT_S = 600.0
"""Longest the GPU check may take (CUDA start-up, a TensorRT engine build on a cold cache)."""

log = logging.getLogger(__name__)


def check_detector(spec: DetectorSpec, *, load: bool = False) -> DetectorSpec:
    """The spec resolved and checked in the driver (no torch): a missing or wrong weights file,
    or a runtime that is not installed, is a :class:`JobConfigError` before anything starts.
    ``load=True``: the detector is also built once in a child process (a truncated checkpoint,
    weights that do not fit the preset), remembered per weights content (:mod:`detector.probe`)."""
    try:
        spec = spec.check()
    except CheckpointError as e:
        raise JobConfigError(
            f"detector not usable: {e}. With the file at hand, pass --weights PATH or set FACEPREP_WEIGHTS "
            "to the folder that holds it."
        ) from e
    if load:
        from detector.probe import check_build

        try:
            check_build(spec)
        except CheckpointError as e:
            raise JobConfigError(f"detector not usable: {str(e).rstrip('.')}") from e
    return spec


def device_spec(detector: DetectorSpec, device: str) -> DetectorSpec:
    """The job's detector on ``device`` (``"cpu"`` or ``"cuda"``, as resolved from the cluster).

    ``precision="auto"``: on CUDA, fp16 with torch (half the memory traffic; its accuracy against
    fp32 has not been measured on a GPU yet, as none was available: what runs is what
    ``job.json`` records) and fp32 with onnxruntime (which runs fp16 only through TensorRT); on
    the CPU, the spec's own rule (bf16 where OpenVINO runs it natively, else fp32)."""
    spec = dataclasses.replace(detector, device=device)
    if not device.startswith("cuda") or spec.precision != AUTO:
        return spec
    runtime = spec.runtime
    if runtime == AUTO:
        try:
            runtime = dataclasses.replace(spec, precision="fp32").resolved().runtime
        except CheckpointError:
            return spec  # check_detector names the problem
    return dataclasses.replace(spec, precision="fp16" if runtime == "torch" else "fp32")


def probe_gpu(spec: DetectorSpec, *, recognizer=None, asked_weights: str | None = None,
              timeout_s: float = GPU_PROBE_TIMEOUT_S) -> None:
    """One Ray task granted one GPU builds the detector (and ``recognizer``, an
    :class:`~pipeline.verification.recognizer.OnnxRecognizerConfig` as the actors get it) on the
    device the actors will use, and checks that CUDA is what runs
    (:func:`detector.probe.check_device`). Call inside a Ray session that has a GPU.

    Raises:
        JobConfigError: one line naming the cause (torch without CUDA, onnxruntime without its
            CUDA provider or with the CPU wheel hiding it, a provider that fell back to the CPU,
            a worker that died, no GPU free within ``timeout_s``).
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    from detector.probe import check_device, worker_env

    task = ray.remote(num_gpus=1, max_retries=0)(check_device)
    ref = (task.options(runtime_env=worker_env()) if worker_env() else task).remote(spec, recognizer, asked_weights)
    try:
        problem = ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        problem = f"the GPU check did not finish within {timeout_s:.0f} s (is a GPU free in the cluster?)"
    except RayError as e:
        text = " ".join(str(e).split())
        problem = f"the GPU check's worker failed: {type(e).__name__}: {text[:300]}"
    if problem:
        raise JobConfigError(f"GPU not usable: {problem}")


def _build_dataset(todo: Sequence[tuple[str, str]], config: AlignJobConfig, plan: JobPlan, spec: DetectorSpec,
                   writer: CropWriter | None, *, identity: dict[str, str] | None = None,
                   given: GivenLandmarks | None = None):
    """The crop pass (read -> detect-align actors -> write); with ``writer=None`` the embedding
    pass of ``--recognizer`` (read -> detect-align-embed actors; no write stage). ``identity``:
    per-photo JSON of the identity pass, shipped with the names (:mod:`pipeline.job.identity`).
    ``given``: the ``--landmarks`` points, shipped with the names of the photos they list (80 bytes
    each; the actors then skip detection for those)."""
    import ray
    from ray.data import ExecutionResources

    workers = plan.workers
    # One block per chunk, one row per block holding the chunk's names; each stage then maps a
    # whole block (batch_size=None). Names travel as bytes: file names need not be UTF-8.
    items, start = [], 0
    for size in plan.chunks:
        chunk = todo[start:start + size]
        start += size
        items.append({"src": [os.fsencode(s) for s, _ in chunk], "stem": [os.fsencode(t) for _, t in chunk]})
        if identity is not None:
            items[-1]["identity"] = [identity.get(s, "") for s, _ in chunk]
        if given is not None:
            items[-1]["landmarks"] = [given.packed(s) for s, _ in chunk]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.enable_progress_bars = False  # our own bar counts manifest records
    if plan.budget is not None:
        ds.context.execution_options.resource_limits = ExecutionResources.for_limits(object_store_memory=plan.budget)
    read = {"src_root": str(config.src.resolve()), "decode": workers.decode_in_tasks,
            "max_pixels": config.align.max_pixels, "exif_orientation": config.align.exif_orientation}
    write = None if writer is None else {"writer": writer, "crop_shape": config.align.crop_shape}
    if plan.drafts:  # JPEG drafts at the detection size, uint8 (pipeline.job.feed)
        read["draft"] = config.align.resize
    if not workers.fused:
        ds = ds.map_batches(read_images, batch_size=None, batch_format="numpy", num_cpus=workers.read_cpus,
                            fn_kwargs=read)
    actor_spec = dataclasses.replace(spec, device=workers.device, threads=workers.threads)
    predictor, extra = FaceCropPredictor, {}
    if config.recognizer is not None:  # the identity passes (pipeline.job.identity)
        predictor = IdentityCropPredictor if writer is not None else FaceEmbedPredictor
        if writer is None:
            extra["recognizer"] = actor_recognizer(config.recognizer, device=workers.device, threads=workers.threads)
    # weights from the node's own FACEPREP_WEIGHTS / cache where it lacks the driver's file; on a
    # GPU, the test-only GPU_ON_CPU_ENV applies (detector.probe.on_device)
    predictor = on_granted_device(predictor)
    extra["asked_weights"] = config.detector.weights
    if workers.fused:  # CPU actors: read, decode, detect, align, write, all in the actor
        predictor = with_io(predictor)
        extra.update(read=read, write=write)
    if writer is not None:  # the crop pass records the node of each chunk's actor (summary)
        predictor = tag_node(predictor)
    ds = ds.map_batches(
        # decoded pixels may be split into several blocks (Ray's block size cap): re-bundle them
        predictor, batch_size=workers.batch_size if workers.decode_in_tasks else None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers.num_actors,
                                           max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT_PER_ACTOR),
        num_cpus=workers.cpus_per_actor, num_gpus=workers.gpus_per_actor or None,
        **({"runtime_env": worker_env()} if workers.gpus_per_actor and worker_env() else {}),
        fn_constructor_kwargs={"detector": actor_spec, "align": config.align,
                               "detect_batch_size": workers.detect_batch_size, "on_no_face": config.on_no_face,
                               "draft": not config.exact, "quality_filter": config.quality_filter, **extra},
    )
    if writer is None or workers.fused:
        return ds
    return ds.map_batches(keep_node(write_crops), batch_size=None, batch_format="numpy",
                          num_cpus=workers.write_cpus, fn_kwargs=write)


def _process(config: AlignJobConfig, todo: list[tuple[str, str]], all_inputs: list[str], spec: DetectorSpec,
             writer: CropWriter, *, resources: dict, inputs: Sequence[str] = (),
             given: GivenLandmarks | None = None, t0: float | None = None,
             ray_ready: float | None = None) -> tuple[RunStats, str]:
    """Run the dataset over ``todo`` (inside the job's Ray session, up since ``ray_ready``;
    ``spec`` resolved for its device); records reach the manifest through the writer's sink."""
    # JPEG drafts in the read tasks (pipeline.job.feed), where the actors take them
    takes = takes_read_drafts(FaceCropPredictor) and (
        config.recognizer is None or takes_read_drafts(FaceEmbedPredictor))
    draft = None if config.exact or config.landmarks is not None or not takes else config.align.resize

    def make_plan(rels: list[str]) -> JobPlan:
        return JobPlan.make(resources, todo=rels, src=config.src, device=spec.device, num_workers=config.num_workers,
                            batch_size=config.batch_size, threads=config.threads, decode=config.decode, draft=draft)

    plan = make_plan([rel for rel, _ in todo])
    for note in plan.workers.notes:
        log.warning("align job plan: %s", note)
    log.info("align job: %d to process; %s; detector %s", len(todo), plan.describe(), spec.describe())
    stats = RunStats(job_started=t0)  # with --recognizer, the rates cover both passes
    ready = ray_ready if ray_ready is not None else time.perf_counter()
    stats.ray_ready_s = ready - (t0 if t0 is not None else ready)
    identity = None
    if config.recognizer is not None:  # embedding pass over `inputs`, then the centres

        def embedding_dataset(pairs: list[tuple[str, str]]):
            return _build_dataset(pairs, config, make_plan([rel for rel, _ in pairs]), spec, None, given=given)

        identity = prepare_identities(config, inputs=inputs, crop_todo=[rel for rel, _ in todo],
                                      dataset=embedding_dataset).info
    ds = _build_dataset(todo, config, plan, spec, writer, identity=identity, given=given)
    with ManifestWriter(config.dst / MANIFEST_NAME, durable=config.durable) as manifest, \
            writer.sink(manifest, inputs=all_inputs) as sink, \
            tqdm(total=len(todo), unit="photo", desc="aligning", disable=not config.progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        # a lost node whose work Ray cannot redo on what is left stops the job (NodeLostError)
        for batch in watch_progress(ds.iter_batches(batch_size=None, batch_format="numpy"),
                                    stall_s=config.stall_timeout_s):
            done = [i for i, record in enumerate(batch["record"]) if record]
            statuses = [batch["status"][i] for i in done]
            sink.add([batch["record"][i] for i in done], [batch["payloads"][i] for i in done])
            stats.add(statuses, int(batch["num_outputs"].sum()),
                      node=str(batch[NODE_COLUMN][0]) if len(batch[NODE_COLUMN]) else "")
            bar.update(len(statuses))
            bar.set_postfix({s: stats.counts.get(s, 0) for s in STATUSES}, refresh=False)
            if batch["io_error"][0]:  # the write task could not write to dst: stop here
                code, message, filename = json.loads(batch["io_error"][0])
                raise OSError(code, message, filename or None)
    stats.stop()
    return stats, f"{plan.describe()}; detector: {spec.describe()}"


def run_align_job(config: AlignJobConfig) -> JobSummary:
    """Run (or resume) the job; returns its summary (also printed by the CLI and written to
    ``dst/summary.json``).

    Raises:
        JobConfigError: missing or unreadable ``src``, unwritable ``dst``, an unusable detector,
            or ``dst`` made with other settings.
    """
    t0 = time.perf_counter()
    check_paths(config)
    src, dst = config.src, config.dst
    all_inputs = list_inputs(src, exclude=dst)
    given = _read_landmarks(config)
    inputs = all_inputs if given is None else _landmark_inputs(config, given, all_inputs)
    inputs = inputs if config.limit is None else inputs[: config.limit]
    collide = OutputLayout.colliding(all_inputs)  # stable names whatever --limit is
    stems = {rel: OutputLayout.stem_of(rel, keep_suffix=rel in collide) for rel in inputs}

    def pending() -> tuple[set[str], list[tuple[str, str]]]:
        done = set() if config.overwrite else done_inputs(dst / MANIFEST_NAME, dst) & set(inputs)
        return done, [(rel, stems[rel]) for rel in inputs if rel not in done]

    if config.dry_run:
        done, todo = pending()
        return make_summary(config, inputs=len(inputs), already_done=len(done),
                            counts=final_counts(dst / MANIFEST_NAME, done), stats=None, t0=t0,
                            plan=f"{len(todo)} input(s) to process; workers decided at start")

    # before Ray: the weights and the runtime (a device left to "auto" is checked on the CPU first)
    asked = device_spec(config.detector, "cpu" if config.device == "auto" else config.device)
    if config.device == "auto":  # only the weights and the runtime here: the precision depends on the device
        asked = dataclasses.replace(asked, precision=AUTO)
    spec = check_detector(asked, load=True)
    if config.recognizer is not None:
        check_recognizer(config.recognizer, crop_shape=config.align.crop_shape)
    try:
        return _run_in_ray(config, asked, spec, inputs, all_inputs, pending, t0, given=given)
    finally:
        # Ray's shutdown overlapped the summary and the report; it is over before control returns, so
        # that a caller's own ray.init (a second job, a notebook, a test's cluster) never races it
        finish_shutdown()


def _run_in_ray(config: AlignJobConfig, asked: DetectorSpec, spec: DetectorSpec, inputs: list[str],
                all_inputs: list[str], pending, t0: float, *, given: GivenLandmarks | None) -> JobSummary:
    dst = config.dst
    with contextlib.ExitStack() as ray_up:
        try:
            ray_up.enter_context(ray_session(config.address, verbose=config.verbose, background_shutdown=True))
        except RayConnectError as e:
            raise JobConfigError(f"{e} (--address, or RAY_ADDRESS)" if config.address else str(e)) from e
        import ray

        ray_ready = time.perf_counter()
        resources = ray.cluster_resources()
        device = resolve_device(config.device, resources)
        final = device_spec(config.detector, device)
        if final != asked:
            spec = check_detector(final, load=True)
        if device == "cuda":
            probe_gpu(spec, asked_weights=config.detector.weights, recognizer=None if config.recognizer is None else
                      actor_recognizer(config.recognizer, device=device, threads=config.threads))
        # what runs is what is recorded: the resolved runtime and precision, and the device
        fingerprint = {**config.fingerprint(spec), "device": device}
        check_fingerprint(config, fingerprint)
        try:
            dst.mkdir(parents=True, exist_ok=True)
            if not os.access(dst, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable (permission denied or a read-only file system)", str(dst))
            with exclusive(dst / LOCK_NAME):
                return _run_locked(config, spec, fingerprint, inputs, all_inputs, pending, t0, given=given,
                                   resources=resources, ray_ready=ray_ready, stop_ray=ray_up.close)
        except PermissionError as e:
            raise JobConfigError(f"cannot write to {e.filename or dst}: {e.strerror or e}") from e
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise JobConfigError(f"no space left on the device of {dst} ({e.filename or dst}); free some space "
                                     "and rerun the same command to resume") from e
            if e.errno == errno.EROFS:
                raise JobConfigError(f"cannot write to {e.filename or dst}: read-only file system") from e
            raise


def _read_landmarks(config: AlignJobConfig) -> GivenLandmarks | None:
    """The ``--landmarks`` file, read once in the driver (a bad line stops the job before Ray)."""
    if config.landmarks is None:
        return None
    try:
        return read_landmarks_csv(config.landmarks)
    except LandmarksFileError as e:
        raise JobConfigError(str(e)) from e


def _landmark_inputs(config: AlignJobConfig, given: GivenLandmarks, all_inputs: list[str]) -> list[str]:
    """The inputs with ``--landmarks``: the listed files that do not exist are added (they get
    ``error`` records); with ``--landmarks-only``, the unlisted files are left out (no record)."""
    listed = [rel for rel in all_inputs if rel in given] if config.landmarks_only else all_inputs
    missing = given.missing(all_inputs)
    return sorted(listed + missing) if missing else listed


def _run_locked(config: AlignJobConfig, spec: DetectorSpec, fingerprint: dict, inputs: list[str],
                all_inputs: list[str], pending, t0: float, *, resources: dict, ray_ready: float, stop_ray,
                given: GivenLandmarks | None = None) -> JobSummary:
    dst = config.dst
    writer = make_writer(config.format, dst=dst.resolve(), layout=config.layout, quality=config.quality,
                         durable=config.durable, crop_shape=config.align.crop_shape, shard_bytes=config.shard_bytes)
    remove_temporaries(dst)
    writer.prepare(overwrite=config.overwrite)
    done, todo = pending()
    atomic_write_text(dst / JOB_NAME, json.dumps({"settings": fingerprint}, indent=2) + "\n")
    stats, plan = (_process(config, todo, all_inputs, spec, writer, resources=resources, inputs=inputs, given=given,
                            t0=t0, ray_ready=ray_ready) if todo
                   else (RunStats(), "nothing to process"))
    stop_ray()  # Ray shuts down in the background while the summary and the report are written
    manifest_path = dst / MANIFEST_NAME
    if manifest_path.exists():  # one record per input; records of vanished files are dropped
        compact_manifest(manifest_path, keep=set(all_inputs).union(inputs))  # + listed missing files
    outputs = writer.finalize()
    summary = make_summary(config, inputs=len(inputs), already_done=len(done),
                           counts=final_counts(manifest_path, set(inputs)), stats=stats, plan=plan, t0=t0,
                           outputs=outputs,
                           identity=identity_summary(dst, set(inputs)) if config.recognizer is not None else None)
    atomic_write_text(dst / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
    try:  # dst/report.html, from the manifest alone; `python jobs/report.py DST` rebuilds it
        build_report(dst, ReportConfig(progress=config.progress))
    except (OSError, ReportError) as e:
        log.warning("report not written (%s); rebuild it with: python jobs/report.py %s", e, dst)
    return summary
