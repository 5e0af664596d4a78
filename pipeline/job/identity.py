"""Identity consistency inside the align job (``--recognizer MODEL.onnx``): two Ray Data passes.

1. **Embedding pass** (:class:`FaceEmbedPredictor`, the detector actors with the recogniser loaded
   once in ``__init__``): every candidate face of every listed photo (score >= ``min_score``, box
   side >= ``min_face_size``) is aligned and embedded. The driver appends the L2-normalised
   embeddings to ``dst/.embeddings/part-NNNNNN.npy`` plus ``part-NNNNNN.jsonl`` (one line per photo:
   ``src`` and its candidate faces ``[face index, x1, y1, x2, y2]``, rows in the ``.npy`` in that
   order), a part of at most :data:`PART_ROWS` faces at a time. Both files are written atomically,
   the ``.jsonl`` last: it commits the part. A killed run keeps its committed parts and embeds
   only the photos no part holds (photos whose reading failed are retried).
2. **Centres** (driver, one identity in memory at a time): the committed parts are concatenated,
   in part order, into ``dst/embeddings.npy`` (float32 ``[rows, D]``, unit rows; written through
   a memory map) and ``dst/embeddings_index.jsonl`` (one line per row: ``row``, ``src``,
   ``face``: the face's index in the photo's detections, ``identity``). Rows only ever get
   appended: a later run with more photos keeps the row numbers of earlier records. For each
   identity (the photo's top-level folder; photos directly under ``src`` have none), the centre
   is :func:`pipeline.curation.identity.robust_centre` of its single-face photos (of all its
   faces when it has none), each photo's distance is that of its nearest face, and the
   :class:`pipeline.curation.identity.OutlierRule` gives the folder's threshold. Summary per
   identity: ``dst/identity_centres.json``.
3. **Crop pass** (:class:`IdentityCropPredictor`, the usual actors): each photo arrives with its
   candidates' rows and distances (a JSON column). ``--select identity`` keeps the candidate
   nearest to the centre (matched to the crop pass's detections by face index and box IoU;
   no known distance: the largest face); any other mode keeps its own choice. The record gets
   ``identity``, ``identity_distance`` (``1 - cos`` of the first selected face to the centre,
   ``null`` when unknown), ``identity_outlier`` (``identity_distance`` above the folder's
   threshold) and ``embedding_row`` (that face's row of ``dst/embeddings.npy``, or ``null``).

Records already done are not redone: a run that adds photos moves the centres for the new
records only (rerun with ``--overwrite`` to refresh every record).
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from common.fsio import atomic_path, atomic_write_text
from pipeline.config import AlignConfig
from pipeline.curation.identity import OutlierRule, cosine_distances, nearest_face, robust_centre
from pipeline.manifest import iter_manifest
from pipeline.job.config import MANIFEST_NAME, STATUS_ERROR, AlignJobConfig, JobConfigError
from pipeline.job.stages import FaceCropPredictor
from pipeline.select import select_faces
from pipeline.verification.recognizer import OnnxRecognizerConfig
from pipeline.writers import identity_of

__all__ = [
    "CENTRES_NAME", "EMBEDDINGS_INDEX_NAME", "EMBEDDINGS_NAME", "PARTS_DIR", "EmbeddingStore", "FaceEmbedPredictor",
    "IdentityCropPredictor", "IdentityTable", "actor_recognizer", "check_recognizer",
    "identity_summary", "prepare_identities", "recognizer_fingerprint",
]

log = logging.getLogger(__name__)

PARTS_DIR = ".embeddings"
EMBEDDINGS_NAME = "embeddings.npy"
EMBEDDINGS_INDEX_NAME = "embeddings_index.jsonl"
CENTRES_NAME = "identity_centres.json"
PART_ROWS = 8192
"""Faces per part file (at D = 512: 16 MiB of embeddings held by the driver at most)."""
_STATE_NAME = "consolidated.json"
_PART_RE = re.compile(r"^part-(\d{6,})\.(npy|jsonl)$")
_MATCH_IOU = 0.5


# ------------------------------------------------------------------------------------------- driver checks


def recognizer_fingerprint(recognizer: OnnxRecognizerConfig) -> dict[str, Any]:
    """What decides the embeddings: the model file (path, size, sha256) and its pre-processing."""
    path = Path(recognizer.model).resolve()
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise JobConfigError(f"recogniser {recognizer.model}: cannot read ({e.strerror or e})") from e
    return {"model": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
            "preprocess": recognizer.preprocess.to_json()}


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


# ----------------------------------------------------------------------------------------------- the actors


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


def _iou(a: Sequence[float], b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (x1 y1 x2 y2) with each of ``b`` (``[M, 4]``)."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _match(face: int, box: Sequence[float], candidates: list[list[float]]) -> list[float] | None:
    """The embedding-pass candidate of the crop pass's face ``face`` (same detector, same photo:
    the same index; checked by box IoU, else the best overlap), or ``None``."""
    if not candidates:
        return None
    ious = _iou(box, np.array([c[3:7] for c in candidates]))
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
                j = nearest_face(dist)
                if j < 0:  # no known distance: the largest face
                    boxes = np.array([faces[f]["box"] for f in selected], np.float64)
                    j = int(select_faces(boxes, np.ones(len(boxes)), image_shape=(1, 1), mode="largest")[0])
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


# ----------------------------------------------------------------------------------------------- the store


class EmbeddingStore:
    """The committed parts of the embedding pass under ``dst/.embeddings`` (see the module
    docstring), and their concatenation into ``dst/embeddings.npy`` / ``embeddings_index.jsonl``."""

    def __init__(self, dst: Path, *, durable: bool = False) -> None:
        self.dst = Path(dst)
        self.folder = self.dst / PARTS_DIR
        self.durable = durable

    def reset(self) -> None:
        """Forget every part and the concatenated files (``--overwrite``)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for name in (EMBEDDINGS_NAME, EMBEDDINGS_INDEX_NAME, CENTRES_NAME):
            (self.dst / name).unlink(missing_ok=True)

    def _numbers(self) -> tuple[list[int], int]:
        """Committed part numbers (sorted) and the next free number; drops uncommitted ``.npy``."""
        if not self.folder.is_dir():
            return [], 0
        found: dict[int, set[str]] = {}
        for name in os.listdir(self.folder):
            m = _PART_RE.match(name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
        committed = sorted(n for n, kinds in found.items() if kinds == {"npy", "jsonl"})
        for n, kinds in found.items():
            if kinds == {"npy"}:  # killed between the two writes: never committed
                self._path(n, "npy").unlink(missing_ok=True)
        return committed, max(found, default=-1) + 1

    def _path(self, number: int, kind: str) -> Path:
        return self.folder / f"part-{number:06d}.{kind}"

    def parts(self) -> list[int]:
        return self._numbers()[0]

    def iter_photos(self, number: int) -> Iterable[dict[str, Any]]:
        with open(self._path(number, "jsonl"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def done_sources(self) -> set[str]:
        return {photo["src"] for n in self.parts() for photo in self.iter_photos(n)}

    def write_part(self, photos: list[dict[str, Any]], embeddings: np.ndarray) -> int:
        """Commit one part: ``photos`` (``src``, ``faces``) and their ``[rows, D]`` embeddings."""
        rows = sum(len(p["faces"]) for p in photos)
        if embeddings.shape[0] != rows:
            raise ValueError(f"{rows} faces listed but {embeddings.shape[0]} embeddings")
        self.folder.mkdir(parents=True, exist_ok=True)
        number = self._numbers()[1]
        with atomic_path(self._path(number, "npy"), durable=self.durable) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, np.float32))
        text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in photos)
        atomic_write_text(self._path(number, "jsonl"), text, durable=self.durable)
        return number

    def load(self, number: int) -> np.ndarray:
        return np.load(self._path(number, "npy"), mmap_mode="r")

    def concatenate(self) -> "IdentityTable":
        """Read every committed part's index (not its embeddings) and bring ``dst/embeddings.npy``
        and ``dst/embeddings_index.jsonl`` up to date (rewritten only when parts were added)."""
        numbers = self.parts()
        table = IdentityTable(self)
        dims = set()
        for n in numbers:
            array = self.load(n)
            if array.shape[0]:
                dims.add(int(array.shape[1]))
            for photo in self.iter_photos(n):
                table.add(photo["src"], photo["faces"])
            table.part_rows.append((n, int(array.shape[0])))
        if len(dims) > 1:
            raise JobConfigError(f"{self.folder} holds embeddings of several sizes {sorted(dims)}; rerun with "
                                 "--overwrite")
        table.dim = dims.pop() if dims else 0
        state = {"parts": numbers, "rows": table.rows, "dim": table.dim}
        state_path = self.folder / _STATE_NAME
        try:
            current = json.loads(state_path.read_text(encoding="utf-8")) == state
        except (OSError, ValueError):
            current = False
        if not (current and (self.dst / EMBEDDINGS_NAME).is_file() and (self.dst / EMBEDDINGS_INDEX_NAME).is_file()):
            self._write_concatenation(table)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(state_path, json.dumps(state) + "\n", durable=self.durable)
        return table

    def _write_concatenation(self, table: "IdentityTable") -> None:
        with atomic_path(self.dst / EMBEDDINGS_NAME, durable=self.durable) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(table.rows, table.dim))
            start = 0
            for n, rows in table.part_rows:
                if rows:
                    out[start:start + rows] = self.load(n)
                start += rows
            out.flush()
            del out
        with atomic_path(self.dst / EMBEDDINGS_INDEX_NAME, durable=self.durable) as tmp, \
                open(tmp, "w", encoding="utf-8") as f:
            starts, counts, faces = table.photo_start, table.photo_count, table.row_face
            for p, src in enumerate(table.sources):
                first, identity = int(starts[p]), identity_of(src)
                for row in range(first, first + int(counts[p])):
                    f.write(json.dumps({"row": row, "src": src, "face": int(faces[row]), "identity": identity},
                                       ensure_ascii=False) + "\n")


class IdentityTable:
    """Every embedded photo of the store: its rows in ``dst/embeddings.npy``, face indices and
    boxes (``O(photos + faces)`` small numbers in the driver, never the embeddings)."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self.sources: list[str] = []
        self._start = array("q")  # per photo: its first row
        self._count = array("i")  # per photo: its faces
        self._faces = array("i")  # per row: the face's index in the photo's detections
        self._boxes = array("f")  # per row: x1 y1 x2 y2
        self.part_rows: list[tuple[int, int]] = []
        self.dim = 0
        self.info: dict[str, str] = {}
        self.centres: dict[str, dict[str, Any]] = {}

    def add(self, src: str, faces: list[list[float]]) -> None:
        self.sources.append(src)
        self._start.append(len(self._faces))
        self._count.append(len(faces))
        for face in faces:
            self._faces.append(int(face[0]))
            self._boxes.extend(float(v) for v in face[1:5])

    @property
    def rows(self) -> int:
        return len(self._faces)

    @property
    def photo_start(self) -> np.ndarray:
        """``[photos]`` int64: each photo's first row."""
        return np.array(self._start, dtype=np.int64)

    @property
    def photo_count(self) -> np.ndarray:
        """``[photos]`` int64: each photo's faces (rows)."""
        return np.array(self._count, dtype=np.int64)

    @property
    def row_face(self) -> np.ndarray:
        """``[rows]`` int64: each row's face index in its photo's detections."""
        return np.array(self._faces, dtype=np.int64)

    def score(self, rule: OutlierRule, *, keep: set[str], want: set[str]) -> None:
        """Centres, distances and thresholds, one identity at a time (photos in ``keep``, the
        listed inputs); per-photo JSON for the photos in ``want`` (the crop pass's) in
        :attr:`info`, and per-identity figures in :attr:`centres`."""
        embeddings = np.load(self.store.dst / EMBEDDINGS_NAME, mmap_mode="r")
        starts, counts = self.photo_start, self.photo_count
        groups: dict[str | None, list[int]] = {}
        for p, src in enumerate(self.sources):
            if src in keep:
                groups.setdefault(identity_of(src), []).append(p)
        for identity, photos in groups.items():
            photos = [p for p in photos if counts[p]]
            distances: dict[int, np.ndarray] = {}
            threshold = None
            if identity is not None and photos:
                rows = np.concatenate([np.arange(starts[p], starts[p] + counts[p]) for p in photos])
                faces = np.asarray(embeddings[rows], np.float32)
                sizes = counts[photos]
                single = (np.cumsum(sizes) - sizes)[sizes == 1]  # local rows of the single-face photos
                base = single if single.size else np.arange(len(rows))
                centre_row = int(rows[base[robust_centre(faces[base])]])
                d = np.clip(cosine_distances(faces, embeddings[centre_row]), 0.0, 2.0)
                offset = 0
                for p in photos:
                    distances[p] = d[offset:offset + counts[p]]
                    offset += counts[p]
                nearest = np.array([distances[p].min() for p in photos], np.float64)
                threshold = round(float(rule.threshold(nearest)), 5)
                median = float(np.median(nearest))
                self.centres[identity] = {
                    "photos": len(photos), "single_face_photos": int(single.size),
                    "centre_row": centre_row, "centre_src": self.sources[self._photo_of_row(centre_row)],
                    "threshold": threshold, "rule": "fixed" if len(photos) < rule.min_photos else "folder",
                    "median_distance": round(median, 5),
                    "mad_distance": round(float(np.median(np.abs(nearest - median))), 5),
                    "outliers": int((nearest > threshold).sum()),
                }
            for p in groups[identity]:
                src = self.sources[p]
                if src not in want:
                    continue
                first, k = int(starts[p]), int(counts[p])
                dist = distances.get(p)
                self.info[src] = json.dumps({
                    "identity": identity, "threshold": threshold,
                    "faces": [[self._faces[r], r, None if dist is None else round(float(dist[r - first]), 5),
                               *(round(v, 2) for v in self._boxes[4 * r:4 * r + 4])]
                              for r in range(first, first + k)],
                }, separators=(",", ":"))

    def _photo_of_row(self, row: int) -> int:
        return int(np.searchsorted(self.photo_start, row, side="right") - 1)


# ---------------------------------------------------------------------------------------------- the driver


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
    table.score(config.outlier, keep=set(inputs), want=set(crop_todo))
    atomic_write_text(config.dst / CENTRES_NAME, json.dumps(table.centres, indent=1, ensure_ascii=False) + "\n",
                      durable=config.durable)
    return table


def identity_summary(dst: Path, keep: set[str]) -> dict[str, Any]:
    """For ``summary.json``: photos with an identity distance, outliers among them, identities,
    and the rows of ``dst/embeddings.npy`` (latest record of each input in ``keep``)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in iter_manifest(dst / MANIFEST_NAME):
        if record["src"] in keep:
            latest[record["src"]] = record
    scored = [r for r in latest.values() if r.get("identity_distance") is not None]
    path = dst / EMBEDDINGS_NAME
    rows = int(np.load(path, mmap_mode="r").shape[0]) if path.is_file() else 0
    return {"photos": len(scored), "outliers": sum(bool(r.get("identity_outlier")) for r in scored),
            "identities": len({r.get("identity") for r in scored if r.get("identity") is not None}),
            "embeddings": rows}
