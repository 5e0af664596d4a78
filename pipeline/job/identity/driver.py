"""The driver side of the identity pass (see :mod:`pipeline.job.identity`): the recogniser's checks,
the embedding pass's loop, the centres, and the summary's figures."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.fsio import atomic_write_text
from pipeline.job.config import AlignJobConfig, JobConfigError
from pipeline.job.identity.centres import score_identities
from pipeline.job.identity.store import EmbeddingStore, IdentityTable
from pipeline.manifest import iter_records
from pipeline.records import CENTRES_NAME, EMBEDDINGS_NAME, MANIFEST_NAME, STATUS_ERROR, PhotoRecord
from pipeline.verification.recognizer import OnnxRecognizerConfig

__all__ = ["PART_ROWS", "actor_recognizer", "check_recognizer", "identity_summary", "prepare_identities"]

log = logging.getLogger(__name__)

PART_ROWS = 8192
"""Faces per part file (at D = 512: 16 MiB of embeddings held by the driver at most)."""


def check_recognizer(recognizer: OnnxRecognizerConfig, *, crop_shape: tuple[int, int]) -> int:
    """Open the recogniser once in the driver; returns its input side. A missing or unusable model,
    or non-square crops, is one :class:`JobConfigError` line before anything starts."""
    path = Path(recognizer.model)
    if not path.is_file():
        raise JobConfigError(f"recogniser {path} does not exist (--recognizer)")
    if crop_shape[0] != crop_shape[1]:
        raise JobConfigError(f"--recognizer needs square crops, got {crop_shape[0]}x{crop_shape[1]}")
    try:
        model = dataclasses.replace(recognizer, threads=1).build()
    except Exception as e:  # onnxruntime raises its own types for a file that is not a model
        raise JobConfigError(f"recogniser {path} is not a usable ONNX face-embedding model: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return int(model.input_size)


def actor_recognizer(recognizer: OnnxRecognizerConfig, *, device: str, threads: int | None) -> OnnxRecognizerConfig:
    """The recogniser as one actor runs it: an absolute model path (actors run in another folder),
    its intra-op threads, and CUDA first on GPU actors (onnxruntime falls back to the CPU when its
    CUDA provider is not installed)."""
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device.startswith("cuda") else recognizer.providers
    return dataclasses.replace(recognizer, model=Path(recognizer.model).resolve(), threads=threads or 0,
                               providers=providers)



def _embedding_pass(config: AlignJobConfig, store: EmbeddingStore, todo: list[str],
                    dataset: Callable[[list[tuple[str, str]]], Any]) -> int:
    """Run the embedding pass over ``todo``; returns the photos embedded."""
    ds = dataset([(rel, rel) for rel in todo])
    photos: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    rows = embedded = 0

    def flush() -> None:
        nonlocal photos, chunks, rows
        if photos:
            dims = {c.shape[1] for c in chunks if c.shape[0]}
            emb = np.concatenate([c for c in chunks if c.shape[0]]) if dims else np.zeros((0, 0), np.float32)
            store.write_part(photos, emb)
        photos, chunks, rows = [], [], 0

    with tqdm(total=len(todo), unit="photo", desc="embedding", disable=not config.progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["src"])):
                if str(batch["status"][i]) == STATUS_ERROR:  # retried by the next run
                    continue
                k, dim = int(batch["num_faces"][i]), int(batch["dim"][i])
                photos.append({"src": os.fsdecode(batch["src"][i]), "faces": json.loads(batch["candidates"][i])})
                chunks.append(np.frombuffer(batch["embeddings"][i], np.float32).reshape(k, dim if k else 0))
                rows += k
                embedded += 1
            bar.update(len(batch["src"]))
            if rows >= PART_ROWS:
                flush()
        flush()
    return embedded


def prepare_identities(config: AlignJobConfig, *, inputs: Sequence[str], crop_todo: Sequence[str],
                       dataset: Callable[[list[tuple[str, str]]], Any]) -> IdentityTable:
    """The embedding pass over the ``inputs`` no part holds yet, then the concatenated embedding
    files and every identity's centre and threshold. ``dataset(pairs)`` builds the pass's Ray
    dataset (read -> :class:`FaceEmbedPredictor`) for ``(src, stem)`` pairs (from
    :mod:`pipeline.job.run`). Returns the table whose :attr:`IdentityTable.info` holds the
    per-photo JSON of the photos in ``crop_todo``."""
    store = EmbeddingStore(config.dst, durable=config.durable)
    if config.overwrite:
        store.reset()
    done = store.done_sources()
    todo = [rel for rel in inputs if rel not in done]
    if todo:
        log.info("identity: embedding the faces of %d photo(s)", len(todo))
        _embedding_pass(config, store, todo, dataset)
    table = store.concatenate()
    score_identities(table, config.outlier, keep=set(inputs), want=set(crop_todo))
    atomic_write_text(config.dst / CENTRES_NAME, json.dumps(table.centres, indent=1, ensure_ascii=False) + "\n",
                      durable=config.durable)
    return table


def identity_summary(dst: Path, keep: set[str]) -> dict[str, Any]:
    """For ``summary.json``: photos with an identity distance, outliers among them, identities,
    and the rows of ``dst/embeddings.npy`` (latest record of each input in ``keep``)."""
    latest: dict[str, PhotoRecord] = {}
    for record in iter_records(dst / MANIFEST_NAME):
        if record.src in keep:
            latest[record.src] = record
    scored = [r for r in latest.values() if r.identity_distance is not None]
    path = dst / EMBEDDINGS_NAME
    rows = int(np.load(path, mmap_mode="r").shape[0]) if path.is_file() else 0
    return {"photos": len(scored), "outliers": sum(bool(r.identity_outlier) for r in scored),
            "identities": len({r.identity for r in scored if r.identity is not None}),
            "embeddings": rows}
