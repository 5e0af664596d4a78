"""How verification runs its workers: in this process, or one Ray actor per worker (an
``ActorPool``), with torch's intra-op threads set per worker; and the check of the models the
workers will load, made in the driver before any of them starts (:func:`check_models`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from detector.hub import CheckpointError
from detector.spec import DetectorSpec

__all__ = ["VerificationSetupError", "check_models", "run_workers", "torch_threads"]


class VerificationSetupError(ValueError):
    """A model the evaluation needs is missing or unusable (one line; the command exits with 2)."""


def check_models(*, detectors: Iterable[DetectorSpec], recognizer: Any) -> None:
    """Before any worker starts: every detector's weights are found (``$FACEPREP_WEIGHTS``, the
    cache, or downloaded, as :func:`detector.hub.resolve_weights`) and of the right kind, its
    runtime is installed (:meth:`detector.spec.DetectorSpec.check`: no torch, no model loaded), and
    the recogniser's model file exists; else :class:`VerificationSetupError`."""
    for spec in dict.fromkeys(detectors):
        try:
            spec.check()
        except CheckpointError as e:
            hint = "" if "FACEPREP_WEIGHTS" in str(e) else (
                ". With the file at hand, pass --weights PATH or set FACEPREP_WEIGHTS to the folder that holds it")
            raise VerificationSetupError(f"detector weights not usable: {str(e).rstrip('.')}{hint}.") from e
    model = getattr(recognizer, "model", None)
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise VerificationSetupError(f"recogniser model {model} does not exist (--model)")


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

    def process(self, tasks: Sequence[Any]) -> Any:
        return self.worker.process(tasks)


def run_workers(worker_cls: type, worker_kwargs: dict, chunks: list[list[Any]], *, bar: tqdm,
                num_workers: int, threads: int | None, address: str | None, stats: dict[str, Any]) -> Iterable[Any]:
    """``worker_cls(threads=..., **worker_kwargs).process(chunk)`` for every chunk, in this process
    (``num_workers == 1``) or on Ray actors (see
    :attr:`pipeline.verification.runner.EvaluationConfig.num_workers`), unordered."""
    if num_workers == 1:
        return _run_local(worker_cls, worker_kwargs, chunks, bar, threads or 0)
    return _run_ray(worker_cls, worker_kwargs, chunks, bar, num_workers, threads or 1, address, stats)


def _run_local(worker_cls: type, worker_kwargs: dict, chunks: list[list[Any]], bar: tqdm,
               threads: int) -> Iterable[Any]:
    with torch_threads(threads):
        worker = worker_cls(**worker_kwargs, threads=threads)
        for chunk in chunks:
            result = worker.process(chunk)
            bar.update(len(chunk))
            yield result


def _run_ray(worker_cls: type, worker_kwargs: dict, chunks: list[list[Any]], bar: tqdm, num_workers: int,
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
