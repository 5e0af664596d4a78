"""Where the align job's crops go: the output layout and the writer interface, one class per format.

A :class:`CropWriter` is used in three places of the job:

* ``write(stem, crops)`` in the Ray write tasks (in parallel): encode the crops and, for file
  formats, write each one atomically; returns the outputs to record and the payloads (encoded
  crops) that the driver must still place.
* ``sink(manifest, inputs)`` in the driver, fed every record in arrival order: appends a record to
  the manifest only once its outputs are in place (a killed run then redoes exactly the inputs
  whose outputs are not complete: no duplicate, no missing sample).
* ``finalize()`` after the manifest is compacted: post-passes (RecordIO packing).

Formats (:data:`FORMATS`): ``folder`` (crop files mirroring ``src``), ``recordio`` (the files,
then ``train.rec``/``.idx``/``property`` for arcface_torch), ``webdataset`` (tar shards of about
``shard_bytes`` with ``KEY.jpg`` + ``KEY.json`` per crop). Adding a format is one class here and
its name in :data:`FORMATS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import cv2
import numpy as np

from common.fsio import TEMP_MARKER, atomic_write_bytes, atomic_write_text, remove_temporaries, temp_path
from pipeline.manifest import (
    ManifestWriter,
    compact_manifest,
    iter_manifest,
    iter_records,
    load_manifest,
    outputs_complete,
)
from pipeline.records import MANIFEST_NAME, PhotoRecord

__all__ = [
    "FORMATS", "TEMP_MARKER", "CropWriter", "FolderCropWriter", "ManifestWriter", "OutputLayout", "RecordIOCropWriter",
    "RecordSink", "WebDatasetCropWriter", "atomic_write_bytes", "atomic_write_text", "compact_manifest",
    "encode_crop", "identity_labels", "identity_of", "iter_manifest", "load_manifest", "make_writer",
    "outputs_complete", "remove_temporaries",
]


@dataclass(frozen=True)
class OutputLayout:
    """Maps a source file's relative path to its output path(s) under ``dst``.

    ``a/b.png`` -> stem ``a/b`` -> ``a/b.jpg`` (one face) or ``a/b_0.jpg``, ``a/b_1.jpg``...
    (``per_face``). Inputs whose stems would collide (``a/b.png`` and ``a/b.jpg``, found by
    :meth:`colliding`) keep their extension in the stem (``stem_of(rel, keep_suffix=True)``):
    ``a/b.png.jpg`` and ``a/b.jpg.jpg``.
    """

    ext: str = "jpg"
    per_face: bool = False

    def __post_init__(self) -> None:
        if not self.ext or "/" in self.ext or self.ext.startswith("."):
            raise ValueError(f"ext must be a bare extension like 'jpg', got {self.ext!r}")

    @staticmethod
    def stem_of(rel: str, *, keep_suffix: bool = False) -> str:
        p = PurePosixPath(rel)
        return str(p) if keep_suffix else str(p.with_suffix(""))

    @staticmethod
    def colliding(rels: Iterable[str]) -> set[str]:
        """The relative paths whose suffix-less stems collide with another input's."""
        by_stem: dict[str, list[str]] = {}
        for rel in rels:
            by_stem.setdefault(OutputLayout.stem_of(rel), []).append(rel)
        return {r for group in by_stem.values() if len(group) > 1 for r in group}

    def outputs(self, stem: str, num_crops: int) -> list[str]:
        """Relative output paths for ``num_crops`` crops of the input with output stem ``stem``."""
        if self.per_face:
            return [f"{stem}_{i}.{self.ext}" for i in range(num_crops)]
        if num_crops > 1:
            raise ValueError("one output per input unless per_face")
        return [f"{stem}.{self.ext}"] * num_crops


def encode_crop(crop: np.ndarray, ext: str, quality: int) -> bytes:
    """One crop as JPEG (``quality``) or PNG bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(f".{ext}", crop, params)
    if not ok:
        raise RuntimeError(f"could not encode a crop as {ext}")
    return buf.tobytes()


def identity_of(rel: str) -> str | None:
    """The identity of a photo: its top-level folder under ``src`` (``None`` directly under it)."""
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 else None


def identity_labels(inputs: Iterable[str]) -> dict[str, int]:
    """Label of each top-level folder: its index among the sorted folders of ``inputs``."""
    folders = sorted({name for name in map(identity_of, inputs) if name is not None})
    return {name: i for i, name in enumerate(folders)}


class RecordSink:
    """Driver side of a writer: appends each record as soon as it arrives (its outputs are files
    the write task has already put in place)."""

    def __init__(self, manifest: ManifestWriter) -> None:
        self.manifest = manifest

    def add(self, records: Sequence[str], payloads: Sequence[Sequence[bytes]]) -> None:
        self.manifest.append_many(records)

    def close(self) -> None:
        pass

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, kw_only=True)
class CropWriter:
    """Base class: see the module docstring. Instances are frozen and travel to the write tasks."""

    dst: str
    layout: OutputLayout
    crop_shape: tuple[int, int] = (112, 112)
    quality: int = 95
    durable: bool = False

    name: ClassVar[str] = ""

    def prepare(self, *, overwrite: bool) -> None:
        """Driver, before any record (under the job's lock)."""

    def write(self, stem: str, crops: np.ndarray) -> tuple[list[str], list[bytes]]:
        """Write task: -> (outputs recorded now, payloads the driver's sink still has to place)."""
        raise NotImplementedError

    def sink(self, manifest: ManifestWriter, *, inputs: Sequence[str]) -> RecordSink:
        return RecordSink(manifest)

    def finalize(self) -> dict[str, Any] | None:
        """After the run and the manifest's compaction; returns a summary for ``summary.json``."""
        return None


@dataclass(frozen=True, kw_only=True)
class FolderCropWriter(CropWriter):
    """One image file per crop, mirroring ``src``'s relative paths (:class:`OutputLayout`)."""

    name: ClassVar[str] = "folder"

    def write(self, stem: str, crops: np.ndarray) -> tuple[list[str], list[bytes]]:
        outputs = self.layout.outputs(stem, len(crops)) if len(crops) else []
        for rel, crop in zip(outputs, crops):
            atomic_write_bytes(os.path.join(self.dst, rel), encode_crop(crop, self.layout.ext, self.quality),
                               durable=self.durable)
        return outputs, []


@dataclass(frozen=True, kw_only=True)
class RecordIOCropWriter(FolderCropWriter):
    """The crop files, then ``train.rec``/``train.idx``/``property`` packed from the manifest
    (:func:`pipeline.recordio.write_recordio_from_manifest`)."""

    name: ClassVar[str] = "recordio"

    def finalize(self) -> dict[str, Any] | None:
        from pipeline.recordio import write_recordio_from_manifest

        return write_recordio_from_manifest(Path(self.dst), image_size=self.crop_shape, quality=self.quality)


_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")


@dataclass(frozen=True, kw_only=True)
class WebDatasetCropWriter(CropWriter):
    """Tar shards ``dst/shards/shard-NNNNNN.tar`` readable by ``webdataset.WebDataset``: per crop
    ``KEY.jpg`` (or ``.png``) and ``KEY.json`` (``label``: index of the top-level folder among the
    listed ones, ``identity``, ``src``, ``face``: box, score, landmarks, ``face_index``).

    The driver fills a shard under a temporary name and renames it into place at about
    ``shard_bytes``; the records of its samples reach the manifest only then. A killed run loses
    only the unfinished shard (deleted on the next start) and redoes its inputs. A record's output
    is ``shards/shard-NNNNNN.tar#KEY``.
    """

    name: ClassVar[str] = "webdataset"
    shard_bytes: int = 1 << 30
    folder: ClassVar[str] = "shards"

    def prepare(self, *, overwrite: bool) -> None:
        if overwrite:  # every record is redone: old samples would be duplicates
            for path in (Path(self.dst) / self.folder).glob("shard-*.tar"):
                path.unlink()

    def write(self, stem: str, crops: np.ndarray) -> tuple[list[str], list[bytes]]:
        return [], [encode_crop(crop, self.layout.ext, self.quality) for crop in crops]

    def sink(self, manifest: ManifestWriter, *, inputs: Sequence[str]) -> RecordSink:
        return _ShardSink(self, manifest, identity_labels(inputs))

    def finalize(self) -> dict[str, Any] | None:
        shards = sorted((Path(self.dst) / self.folder).glob("shard-*.tar"))
        samples = sum(len(r.outputs) for r in iter_records(Path(self.dst) / MANIFEST_NAME))
        return {"shards": len(shards), "samples": samples, "folder": str(Path(self.dst) / self.folder)}


class _ShardSink(RecordSink):
    def __init__(self, writer: WebDatasetCropWriter, manifest: ManifestWriter, labels: Mapping[str, int]) -> None:
        super().__init__(manifest)
        self.writer = writer
        self.labels = labels
        self.folder = Path(writer.dst) / writer.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        used = [int(m.group(1)) for p in self.folder.iterdir() if (m := _SHARD_RE.match(p.name))]
        self.next_shard = max(used, default=-1) + 1
        self._tar: Any = None
        self._tmp: Path | None = None
        self._pending: list[str] = []
        self._samples = 0

    def _open(self) -> None:
        import webdataset as wds

        self._name = f"shard-{self.next_shard:06d}.tar"
        self._tmp = temp_path(self.folder / self._name)
        self._stream = open(self._tmp, "wb")
        self._tar = wds.TarWriter(self._stream)
        self._samples = 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # also closes the stream
        final = self.folder / self._name
        if self.writer.durable:
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(self._tmp, final)
        self.manifest.append_many(self._pending)
        self._pending, self._tar, self._tmp = [], None, None
        self.next_shard += 1

    def add(self, records: Sequence[str], payloads: Sequence[Sequence[bytes]]) -> None:
        ext = self.writer.layout.ext
        direct = []
        for line, crops in zip(records, payloads):
            if not len(crops):
                direct.append(line)  # no sample: nothing to wait for
                continue
            if self._tar is None:
                self._open()
            record = PhotoRecord.from_json(line)
            identity = identity_of(record.src)
            outputs = []
            for j, data in enumerate(crops):
                key = f"{self.next_shard:06d}-{self._samples:06d}"
                self._samples += 1
                face_index = record.selected[j] if j < len(record.selected) else None
                meta = {"label": self.labels.get(identity, -1) if identity else -1, "identity": identity,
                        "src": record.src, "face_index": face_index,
                        "face": record.faces[face_index].to_json() if face_index is not None else None}
                self._tar.write({"__key__": key, ext: bytes(data), "json": json.dumps(meta).encode("utf-8")})
                outputs.append(f"{self.writer.folder}/{self._name}#{key}")
            self._pending.append(dataclasses.replace(record, outputs=tuple(outputs)).to_json())
        self.manifest.append_many(direct)
        if self._tar is not None and self._stream.tell() >= self.writer.shard_bytes:
            self._close_shard()

    def close(self) -> None:
        self._close_shard()


FORMATS: dict[str, type[CropWriter]] = {w.name: w for w in (FolderCropWriter, RecordIOCropWriter, WebDatasetCropWriter)}


def make_writer(format: str, *, dst: str | os.PathLike, layout: OutputLayout, quality: int, durable: bool,
                crop_shape: tuple[int, int], **options: Any) -> CropWriter:
    """The writer for ``format`` (a key of :data:`FORMATS`); ``options`` that the format has no
    field for (``shard_bytes`` for a folder) are ignored."""
    try:
        cls = FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown output format {format!r}; choose from {', '.join(FORMATS)}") from None
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(dst=str(dst), layout=layout, crop_shape=tuple(crop_shape), quality=int(quality), durable=durable,
               **{k: v for k, v in options.items() if k in known})
