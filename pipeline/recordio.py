"""MXNet RecordIO (``.rec`` / ``.idx`` / ``property``) without mxnet.

Binary layout, as written by dmlc-core's ``RecordIOWriter`` and read by
``mx.recordio.MXRecordIO`` / ``MXIndexedRecordIO``:

* A record on disk is ``uint32 magic (0xced7230a)``, ``uint32 lrec``, the payload, then zero bytes
  up to the next multiple of 4. ``lrec = cflag << 29 | length`` (length in the lower 29 bits).
* If the 4-byte magic occurs in the payload at a 4-byte-aligned offset, the payload is split there
  into parts (the magic itself is dropped and re-inserted by the reader): ``cflag`` 1 = first part,
  2 = middle part, 3 = last part; 0 = a record in one part.
* The ``.idx`` file has one ``"<key>\\t<byte offset of the record's magic>\\n"`` line per record.
* A record's payload starts with an ``IRHeader`` packed as little-endian ``IfQQ`` (24 bytes:
  ``flag``, ``label``, ``id``, ``id2``). When ``flag > 0`` the header's float is unused and
  ``flag`` float32 labels follow the header; the image bytes come after.

The ArcFace training layout (insightface ``face2rec2.py``, read by arcface_torch's
``MXFaceDataset``): record 0 has ``flag=2`` and label ``[first_identity_record, end]``; image records
are keys ``1 .. first_identity_record-1``; each identity record ``k`` in
``[first_identity_record, end)`` has label ``[first_image, end_image)`` of that identity.
``MXFaceDataset`` reads record 0 and, since ``flag > 0``, uses ``range(1, int(label[0]))`` as its
image indices, taking ``label`` (or ``label[0]`` when it is an array) of each as the class id.
``property`` holds ``"<num_classes>,<height>,<width>"``.
"""

from __future__ import annotations

import numbers
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple

import cv2
import numpy as np

from common.fsio import atomic_write_text, temp_path
from pipeline.manifest import iter_records
from pipeline.records import IDENTITIES_NAME, MANIFEST_NAME, STATUS_OK

__all__ = [
    "MAGIC",
    "IRHeader",
    "pack",
    "unpack",
    "RecordIOWriter",
    "RecordIOReader",
    "IndexedRecordIOWriter",
    "IndexedRecordIOReader",
    "ArcFaceRecordWriter",
    "ArcFaceRecordDataset",
    "RecordIOFormatError",
    "ArcFaceProperty",
    "write_arcface_records",
    "write_recordio_from_manifest",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24

# cflag values of a record part
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


class RecordIOFormatError(ValueError):
    """The bytes are not a valid RecordIO stream (bad magic, truncated record, bad index)."""


class IRHeader(NamedTuple):
    """mxnet's image record header. ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Header + payload as one record payload (mxnet ``recordio.pack``).

    A numeric ``label`` is stored in the header (``flag`` forced to 0); an array label is stored as
    ``len(label)`` float32 values after the header, with ``flag = len(label)``.
    """
    if isinstance(header.label, numbers.Number):
        head = struct.pack(_IR_FORMAT, 0, float(header.label), int(header.id), int(header.id2))
        return head + bytes(payload)
    labels = np.ascontiguousarray(header.label, dtype="<f4").reshape(-1)
    if labels.size == 0:
        raise ValueError("an array label needs at least one value")
    head = struct.pack(_IR_FORMAT, labels.size, 0.0, int(header.id), int(header.id2))
    return head + labels.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of :func:`pack` (mxnet ``recordio.unpack``)."""
    if len(record) < _IR_SIZE:
        raise RecordIOFormatError(f"record of {len(record)} bytes is shorter than its header")
    flag, label, rid, rid2 = struct.unpack_from(_IR_FORMAT, record, 0)
    body = record[_IR_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOFormatError(f"record announces {flag} labels but is too short")
        labels = np.frombuffer(body, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, labels, rid, rid2), body[4 * flag:]
    return IRHeader(flag, label, rid, rid2), body


def _encode_lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << _LENGTH_BITS) | length)


class RecordIOWriter:
    """Sequential RecordIO writer over a binary file object (dmlc ``RecordIOWriter``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def tell(self) -> int:
        return self._stream.tell()

    def write(self, record: bytes) -> int:
        """Append one record; returns the offset of its first magic (what ``.idx`` stores)."""
        data = memoryview(bytes(record))
        size = len(data)
        if size > _MAX_LENGTH:
            raise ValueError(f"a RecordIO record must be under 2**29 bytes, got {size}")
        start = self._stream.tell()
        parts: list[tuple[int, memoryview]] = []
        begin = 0
        for i in range(0, size - size % 4, 4):  # the magic is only escaped at aligned offsets
            if data[i:i + 4] == _MAGIC_BYTES:
                parts.append((_FIRST if begin == 0 else _MIDDLE, data[begin:i]))
                begin = i + 4
        parts.append((_LAST if parts else _WHOLE, data[begin:]))
        for cflag, part in parts:
            self._stream.write(_MAGIC_BYTES)
            self._stream.write(_encode_lrec(cflag, len(part)))
            self._stream.write(part)
        pad = -size % 4  # inner parts are multiples of 4 long, so only the end needs padding
        if pad:
            self._stream.write(b"\0" * pad)
        return start


class RecordIOReader:
    """Sequential / random-access RecordIO reader over a binary file object."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def seek(self, offset: int) -> None:
        self._stream.seek(offset)

    def read(self) -> bytes | None:
        """The next record's payload, or ``None`` at the end of the stream."""
        chunks: list[bytes] = []
        while True:
            head = self._stream.read(8)
            if not head and not chunks:
                return None
            if len(head) != 8:
                raise RecordIOFormatError("truncated record header")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOFormatError(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
            cflag, length = lrec >> _LENGTH_BITS, lrec & _MAX_LENGTH
            if cflag > _LAST:
                raise RecordIOFormatError(f"bad continuation flag {cflag}")
            if (cflag in (_WHOLE, _FIRST)) != (not chunks):
                raise RecordIOFormatError("record parts out of order")
            padded = length + (-length % 4)
            body = self._stream.read(padded)
            if len(body) != padded:
                raise RecordIOFormatError("truncated record payload")
            chunks.append(body[:length])
            if cflag in (_WHOLE, _LAST):
                return b"".join(chunks)
            chunks.append(_MAGIC_BYTES)

    def __iter__(self) -> Iterator[bytes]:
        while (record := self.read()) is not None:
            yield record


class IndexedRecordIOWriter:
    """``.rec`` + ``.idx`` writer (mxnet ``MXIndexedRecordIO(idx, rec, 'w')``)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="ascii", newline="\n")
        self._writer = RecordIOWriter(self._rec)
        self._keys: set[int] = set()

    def write_idx(self, key: int, record: bytes) -> int:
        if key in self._keys:
            raise ValueError(f"duplicate RecordIO key {key}")
        pos = self._writer.write(record)
        self._idx.write(f"{int(key)}\t{pos}\n")
        self._keys.add(key)
        return pos

    def overwrite_at(self, pos: int, record: bytes, *, old_length: int) -> None:
        """Rewrite the record at ``pos`` in place with one of the same payload length."""
        if len(record) != old_length or _MAGIC_BYTES in record:
            raise ValueError("an in-place replacement must have the same length and no magic")
        end = self._rec.tell()
        self._rec.seek(pos)
        self._writer.write(record)
        self._rec.seek(end)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> IndexedRecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexedRecordIOReader:
    """``.rec`` + ``.idx`` reader (mxnet ``MXIndexedRecordIO(idx, rec, 'r')``)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.positions: dict[int, int] = {}
        self.keys: list[int] = []
        with open(idx_path, encoding="ascii") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise RecordIOFormatError(f"{idx_path}:{lineno}: expected 'key<TAB>offset'")
                key = int(fields[0])
                self.positions[key] = int(fields[1])
                self.keys.append(key)
        self._rec = open(rec_path, "rb")
        self._reader = RecordIOReader(self._rec)

    def read_idx(self, key: int) -> bytes:
        self._reader.seek(self.positions[key])
        record = self._reader.read()
        if record is None:
            raise RecordIOFormatError(f"index points past the end of the file for key {key}")
        return record

    def close(self) -> None:
        self._rec.close()

    def __enter__(self) -> IndexedRecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# ArcFace training layout (train.rec / train.idx / property)

REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"


def _header_record(first_identity: int, end: int) -> bytes:
    return pack(IRHeader(2, np.array([first_identity, end], np.float32), 0, 0), b"")


class ArcFaceRecordWriter:
    """Writes an insightface-style ``train.rec`` / ``train.idx`` / ``property`` folder.

    Images must arrive grouped by label with labels ``0, 1, 2, ...`` in order (labels may not be
    skipped: arcface_torch takes ``num_classes`` from ``property`` and uses labels as class
    indices). Files are written under temporary names and renamed on :meth:`close`, so an
    interrupted write never leaves a ``train.rec`` that looks complete.

    Record 0 is written first as a fixed-size placeholder and rewritten in place on close, so the
    file starts with its header and ``train.idx`` is sorted by key.
    """

    def __init__(self, folder: str | os.PathLike, *, image_size: tuple[int, int]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._tmp = {name: temp_path(self.folder / name)
                     for name in (REC_NAME, IDX_NAME, PROPERTY_NAME)}
        self._rio = IndexedRecordIOWriter(self._tmp[REC_NAME], self._tmp[IDX_NAME])
        placeholder = _header_record(0, 0)
        self._header_len = len(placeholder)
        self._header_pos = self._rio.write_idx(0, placeholder)
        self._next_key = 1
        self._identity_ranges: list[tuple[int, int]] = []  # [first_key, end_key) per label
        self._closed = False

    @property
    def num_images(self) -> int:
        return self._next_key - 1

    def add(self, label: int, jpeg: bytes) -> int:
        """Append one image of class ``label``; returns its record key."""
        label = int(label)
        current = len(self._identity_ranges) - 1
        if label == current + 1:
            self._identity_ranges.append((self._next_key, self._next_key))
        elif label != current:
            raise ValueError(
                f"labels must arrive grouped and in order 0, 1, 2, ...; got {label} after {current}"
            )
        key = self._next_key
        self._rio.write_idx(key, pack(IRHeader(0, float(label), key, 0), jpeg))
        first, _ = self._identity_ranges[label]
        self._identity_ranges[label] = (first, key + 1)
        self._next_key += 1
        return key

    def close(self) -> None:
        """Write the identity records and the real header, then move the files into place."""
        if self._closed:
            return
        first_identity = self._next_key
        for offset, (first, end) in enumerate(self._identity_ranges):
            rng = np.array([first, end], np.float32)
            self._rio.write_idx(first_identity + offset, pack(IRHeader(2, rng, first_identity + offset, 0), b""))
        end = first_identity + len(self._identity_ranges)
        if end >= 1 << 24:
            raise ValueError("record keys beyond 2**24 are not exact as float32 labels")
        self._rio.overwrite_at(
            self._header_pos, _header_record(first_identity, end), old_length=self._header_len
        )
        self._rio.close()
        h, w = self.image_size
        self._tmp[PROPERTY_NAME].write_text(f"{len(self._identity_ranges)},{h},{w}\n", encoding="ascii")
        for name, tmp in self._tmp.items():
            os.replace(tmp, self.folder / name)
        self._closed = True

    def abort(self) -> None:
        """Close and delete the temporary files (nothing is published)."""
        if self._closed:
            return
        self._rio.close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ArcFaceRecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class ArcFaceProperty:
    num_classes: int
    height: int
    width: int


class ArcFaceRecordDataset:
    """Reads an ArcFace ``train.rec`` folder the way arcface_torch's ``MXFaceDataset`` does.

    ``dataset[i]`` is ``(label, image_bytes)`` for the i-th image record; ``image_indices`` are the
    record keys MXFaceDataset iterates (``range(1, label0)`` when record 0 has ``flag > 0``, else
    every key in ``train.idx``).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._rio = IndexedRecordIOReader(self.folder / REC_NAME, self.folder / IDX_NAME)
        self.header, _ = unpack(self._rio.read_idx(0))
        if self.header.flag > 0:
            label = np.asarray(self.header.label)
            self.header0 = (int(label[0]), int(label[1]))
            self.image_indices = np.arange(1, self.header0[0])
        else:
            self.header0 = None
            self.image_indices = np.array(self._rio.keys)
        prop = self.folder / PROPERTY_NAME
        self.property: ArcFaceProperty | None = None
        if prop.exists():
            num_classes, h, w = (int(v) for v in prop.read_text(encoding="ascii").strip().split(","))
            self.property = ArcFaceProperty(num_classes, h, w)

    def __len__(self) -> int:
        return len(self.image_indices)

    def record(self, key: int) -> tuple[IRHeader, bytes]:
        return unpack(self._rio.read_idx(int(key)))

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        header, payload = self.record(int(self.image_indices[index]))
        label = header.label
        if not isinstance(label, numbers.Number):
            label = label[0]
        return int(label), payload

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for i in range(len(self)):
            yield self[i]

    def identity_ranges(self) -> list[tuple[int, int]]:
        """``[first_key, end_key)`` of each identity, from the identity records."""
        if self.header0 is None:
            return []
        out = []
        for key in range(*self.header0):
            header, _ = self.record(key)
            label = np.asarray(header.label)
            out.append((int(label[0]), int(label[1])))
        return out

    def close(self) -> None:
        self._rio.close()

    def __enter__(self) -> ArcFaceRecordDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_arcface_records(
    folder: str | os.PathLike, samples: Iterable[tuple[int, bytes]], *, image_size: tuple[int, int]
) -> int:
    """Write ``(label, jpeg)`` samples (grouped by label, labels 0..K-1 in order); returns count."""
    with ArcFaceRecordWriter(folder, image_size=image_size) as writer:
        for label, jpeg in samples:
            writer.add(label, jpeg)
        return writer.num_images


def write_recordio_from_manifest(dst: Path, *, image_size: tuple[int, int], quality: int) -> dict[str, Any]:
    """Pack every ``ok`` crop listed in the (compacted, sorted) manifest into ``dst/train.rec``.

    Label = index of the input's top-level folder, numbered in order of the sorted relative
    paths (``dst/identities.tsv`` maps label -> folder). Inputs directly under ``src`` have no
    identity and are left out (counted). PNG crops are re-encoded as JPEG.
    """
    identities: list[tuple[str, int]] = []  # (folder, images) in label order
    seen: set[str] = set()
    skipped = 0
    with ArcFaceRecordWriter(dst, image_size=image_size) as writer:
        for record in iter_records(dst / MANIFEST_NAME):
            if record.status != STATUS_OK or not record.outputs:
                continue
            parts = PurePosixPath(record.src).parts
            if len(parts) < 2:
                skipped += 1
                continue
            if not identities or identities[-1][0] != parts[0]:
                if parts[0] in seen:
                    raise ValueError(f"{dst / MANIFEST_NAME} is not sorted by src; compact it first")
                seen.add(parts[0])
                identities.append((parts[0], 0))
            label = len(identities) - 1
            for rel in record.outputs:
                data = (dst / rel).read_bytes()
                if not rel.lower().endswith((".jpg", ".jpeg")):
                    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    data = _jpeg(img, quality)
                writer.add(label, data)
                identities[-1] = (parts[0], identities[-1][1] + 1)
        num_images = writer.num_images
    atomic_write_text(dst / IDENTITIES_NAME,
                      "".join(f"{i}\t{name}\t{count}\n" for i, (name, count) in enumerate(identities)))
    return {"images": num_images, "identities": len(identities), "skipped_without_identity": skipped,
            "rec": str(dst / "train.rec")}


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("could not encode a crop as JPEG")
    return buf.tobytes()
