"""The Ray Data actors of the identity passes (see :mod:`pipeline.job.identity`):
:class:`FaceEmbedPredictor` (embedding pass) and :class:`IdentityCropPredictor` (crop pass)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import AlignConfig
from pipeline.curation.identity import identity_face
from pipeline.job.stages import FaceCropPredictor
from pipeline.select import box_iou
from pipeline.verification.recognizer import OnnxRecognizerConfig
from pipeline.writers import identity_of

__all__ = ["FaceEmbedPredictor", "IdentityCropPredictor"]

_MATCH_IOU = 0.5


def _table_column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


class FaceEmbedPredictor(FaceCropPredictor):
    """Ray Data actor of the embedding pass: the job's detect-align actor with every candidate
    face aligned (``select="all"``) and embedded by the recogniser, built once per actor.

    Returns one row per photo: ``src``, ``status``, ``error``, ``candidates`` (JSON
    ``[[face index, x1, y1, x2, y2], ...]``), ``num_faces``, ``dim`` and ``embeddings`` (the
    ``[num_faces, dim]`` float32 unit rows as raw bytes). Other keyword arguments are
    :class:`pipeline.job.stages.FaceCropPredictor`'s.
    """

    def __init__(self, *, recognizer: OnnxRecognizerConfig, align: AlignConfig, **kwargs: Any) -> None:
        kwargs["on_no_face"] = "skip"
        super().__init__(align=dataclasses.replace(align, select="all", max_faces=None), **kwargs)
        self._recognizer = recognizer.build()

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        size = self._recognizer.input_size
        if crops.shape[1:3] != (size, size):
            import cv2

            crops = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
        x = np.asarray(self._recognizer.embed(crops), dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        table = super().__call__(batch)
        h, w = self._crop_shape
        counts = [int(k) for k in _table_column(table, "num_crops")]
        crops = [np.frombuffer(c, np.uint8).reshape(k, h, w, 3) for c, k in
                 zip(_table_column(table, "crops"), counts)]
        flat = [c for c in crops if len(c)]
        emb = self._embed(np.concatenate(flat)) if flat else np.zeros((0, 0), np.float32)
        dim = int(emb.shape[1])
        candidates, payloads, start = [], [], 0
        for faces, selected, k in zip(_table_column(table, "faces"), _table_column(table, "selected"), counts):
            faces, selected = json.loads(faces), json.loads(selected)
            candidates.append(json.dumps([[int(i), *faces[i]["box"]] for i in selected]))
            payloads.append(np.ascontiguousarray(emb[start:start + k]).tobytes())
            start += k
        return pa.table({
            "src": table.column("src"),
            "status": table.column("status"),
            "error": table.column("error"),
            "candidates": pa.array(candidates, pa.string()),
            "num_faces": pa.array(counts, pa.int32()),
            "dim": pa.array([dim] * len(counts), pa.int32()),
            "embeddings": pa.array(payloads, pa.large_binary()),
        })


def _match(face: int, box: Sequence[float], candidates: list[list[float]]) -> list[float] | None:
    """The embedding-pass candidate of the crop pass's face ``face`` (same detector, same photo:
    the same index; checked by box IoU, else the best overlap), or ``None``."""
    if not candidates:
        return None
    ious = box_iou(box, np.array([c[3:7] for c in candidates]))[0]
    for j, c in enumerate(candidates):
        if int(c[0]) == face and ious[j] >= _MATCH_IOU:
            return c
    j = int(np.argmax(ious))
    return candidates[j] if ious[j] >= _MATCH_IOU else None


class IdentityCropPredictor(FaceCropPredictor):
    """Ray Data actor of the crop pass with a recogniser: :class:`FaceCropPredictor`, plus the
    ``identity`` column (JSON fields of the manifest record) built from the batch's ``identity``
    column (:attr:`IdentityTable.info` of each photo, passed through by
    :func:`pipeline.job.stages.read_images`). With ``align.select == "identity"`` every
    candidate face is aligned and the one nearest to the identity's centre is kept."""

    def __init__(self, *, align: AlignConfig, **kwargs: Any) -> None:
        self._by_identity = align.select == "identity"
        if self._by_identity:
            align = dataclasses.replace(align, select="all", max_faces=None)
        super().__init__(align=align, **kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        infos = [json.loads(x) if x else {} for x in batch["identity"]] if "identity" in batch else None
        table = super().__call__(batch)
        if infos is None:
            infos = [{}] * table.num_rows
        h, w = self._crop_shape
        sources = _table_column(table, "src")
        selected_out, counts_out, crops_out, fields_out = [], [], [], []
        for i, (faces, selected, k, crops) in enumerate(zip(
                _table_column(table, "faces"), _table_column(table, "selected"), _table_column(table, "num_crops"),
                _table_column(table, "crops"))):
            faces, selected, info = json.loads(faces), json.loads(selected), infos[i]
            candidates = info.get("faces", [])
            matched = [_match(f, faces[f]["box"], candidates) for f in selected]
            if self._by_identity and selected:
                dist = np.array([np.nan if m is None or m[2] is None else m[2] for m in matched])
                j = identity_face(dist, np.array([faces[f]["box"] for f in selected], np.float64))
                array = np.frombuffer(crops, np.uint8).reshape(k, h, w, 3)
                selected, matched, crops, k = [selected[j]], [matched[j]], array[j:j + 1].tobytes(), 1
            first = matched[0] if matched else None
            distance = None if first is None or first[2] is None else round(float(first[2]), 5)
            threshold = info.get("threshold")
            fields_out.append(json.dumps({
                "identity": info["identity"] if info else identity_of(os.fsdecode(sources[i])),
                "identity_distance": distance,
                "identity_outlier": bool(distance is not None and threshold is not None and distance > threshold),
                "embedding_row": None if first is None else int(first[1]),
            }))
            selected_out.append(json.dumps(selected))
            counts_out.append(int(k))
            crops_out.append(crops)
        table = table.set_column(table.schema.get_field_index("selected"), "selected",
                                 pa.array(selected_out, pa.string()))
        table = table.set_column(table.schema.get_field_index("num_crops"), "num_crops",
                                 pa.array(counts_out, pa.int32()))
        table = table.set_column(table.schema.get_field_index("crops"), "crops",
                                 pa.array(crops_out, pa.large_binary()))
        return table.append_column("identity", pa.array(fields_out, pa.string()))

