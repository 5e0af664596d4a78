"""RecordIO: exact bytes of the dmlc/mxnet format and the arcface_torch header semantics."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest

from pipeline.recordio import (
    MAGIC,
    ArcFaceRecordDataset,
    ArcFaceRecordWriter,
    IndexedRecordIOReader,
    IndexedRecordIOWriter,
    IRHeader,
    RecordIOFormatError,
    RecordIOReader,
    RecordIOWriter,
    pack,
    unpack,
    write_arcface_records,
)
from tests.shared import asset

MAGIC_LE = bytes.fromhex("0a23d7ce")  # 0xced7230a little-endian


def _write(payload: bytes) -> bytes:
    buf = io.BytesIO()
    RecordIOWriter(buf).write(payload)
    return buf.getvalue()


def test_single_record_bytes_match_the_dmlc_layout():
    # magic, lrec = (cflag 0 << 29) | 3, payload, one zero byte of padding to a multiple of 4
    assert _write(b"abc") == MAGIC_LE + bytes.fromhex("03000000") + b"abc\0"
    assert _write(b"") == MAGIC_LE + bytes(4)
    assert _write(b"abcd") == MAGIC_LE + bytes.fromhex("04000000") + b"abcd"


def test_magic_inside_payload_is_split_with_continuation_flags():
    payload = b"AAAA" + MAGIC_LE + b"BBBB" + MAGIC_LE + b"CCCCC"
    expected = (
        MAGIC_LE + struct.pack("<I", (1 << 29) | 4) + b"AAAA"    # cflag 1: first part
        + MAGIC_LE + struct.pack("<I", (2 << 29) | 4) + b"BBBB"  # cflag 2: middle part
        + MAGIC_LE + struct.pack("<I", (3 << 29) | 5) + b"CCCCC" + b"\0\0\0"  # cflag 3: last part
    )
    assert _write(payload) == expected
    assert RecordIOReader(io.BytesIO(expected)).read() == payload
    # a magic at an unaligned offset is data, not a separator
    unaligned = b"x" + MAGIC_LE + b"yz"
    assert _write(unaligned) == MAGIC_LE + struct.pack("<I", 7) + unaligned + b"\0"


def test_random_payloads_round_trip_sequentially():
    rng = np.random.default_rng(0)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 5, 64, 1001)]
    payloads.append(MAGIC_LE * 3 + b"tail")  # magic at the very start, repeated
    buf = io.BytesIO()
    writer = RecordIOWriter(buf)
    offsets = [writer.write(p) for p in payloads]
    assert all(o % 4 == 0 for o in offsets) and len(buf.getvalue()) % 4 == 0
    buf.seek(0)
    assert list(RecordIOReader(buf)) == payloads


def test_truncated_or_foreign_stream_raises():
    good = _write(b"0123456789")
    with pytest.raises(RecordIOFormatError):
        RecordIOReader(io.BytesIO(good[:-3])).read()
    with pytest.raises(RecordIOFormatError):
        RecordIOReader(io.BytesIO(b"\xff\xd8\xff\xe0" + good[4:])).read()


def test_pack_layout_matches_mxnet_irheader():
    scalar = pack(IRHeader(7, 3.0, 42, 0), b"JPEG")  # flag is forced to 0 for a numeric label
    assert scalar == struct.pack("<IfQQ", 0, 3.0, 42, 0) + b"JPEG"
    header, body = unpack(scalar)
    assert (header.flag, header.label, header.id, header.id2, body) == (0, 3.0, 42, 0, b"JPEG")

    array = pack(IRHeader(0, [5, 9], 0, 0), b"")
    assert array == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 5, 9)
    header, body = unpack(array)
    assert header.flag == 2 and header.label.tolist() == [5.0, 9.0] and body == b""


def test_indexed_records_random_access(tmp_path):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    with IndexedRecordIOWriter(rec, idx) as w:
        for key in (3, 1, 2):
            w.write_idx(key, f"record-{key}".encode())
    lines = idx.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["3", "1", "2"]
    assert lines[0] == "3\t0"  # offset of the first record's magic
    with IndexedRecordIOReader(rec, idx) as r:
        assert r.keys == [3, 1, 2]
        assert r.read_idx(2) == b"record-2" and r.read_idx(3) == b"record-3"


def _jpeg_crops(count: int) -> list[bytes]:
    image = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    assert image is not None
    crops = []
    for i in range(count):
        patch = cv2.resize(image[40 * i: 40 * i + 300, 90 * i: 90 * i + 300], (112, 112))
        ok, enc = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        crops.append(enc.tobytes())
    return crops


def _mxface_image_indices(folder) -> tuple[list[int], tuple[int, int] | None]:
    """arcface_torch MXFaceDataset.__init__, written against the raw files (no project reader)."""
    idx = {}
    for line in (folder / "train.idx").read_text().splitlines():
        key, pos = line.split("\t")
        idx[int(key)] = int(pos)
    raw = (folder / "train.rec").read_bytes()
    pos = idx[0]
    magic, lrec = struct.unpack_from("<II", raw, pos)
    assert magic == MAGIC and lrec >> 29 == 0
    record = raw[pos + 8: pos + 8 + (lrec & ((1 << 29) - 1))]
    flag, _label, _id, _id2 = struct.unpack_from("<IfQQ", record)
    if flag > 0:
        label = struct.unpack_from(f"<{flag}f", record, 24)
        return list(range(1, int(label[0]))), (int(label[0]), int(label[1]))
    return sorted(idx), None


def test_arcface_layout_header_identities_and_property(tmp_path):
    crops = _jpeg_crops(5)
    labels = [0, 0, 1, 2, 2]
    n = write_arcface_records(tmp_path, zip(labels, crops), image_size=(112, 112))
    assert n == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["property", "train.idx", "train.rec"]
    assert (tmp_path / "property").read_text() == "3,112,112\n"

    image_keys, header0 = _mxface_image_indices(tmp_path)
    assert image_keys == [1, 2, 3, 4, 5]
    assert header0 == (6, 9)  # 5 images -> identity records 6, 7, 8
    assert (tmp_path / "train.idx").read_text().splitlines()[0] == "0\t0"  # header first in file

    with ArcFaceRecordDataset(tmp_path) as ds:
        assert len(ds) == 5 and ds.property.num_classes == 3
        assert [ds[i] for i in range(5)] == list(zip(labels, crops))
        assert ds.identity_ranges() == [(1, 3), (3, 4), (4, 6)]
        header, payload = ds.record(4)
        assert (header.flag, header.label, header.id) == (0, 2.0, 4)
        decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (112, 112, 3)


def test_arcface_writer_rejects_unordered_labels_and_publishes_nothing(tmp_path):
    crop = _jpeg_crops(1)[0]
    with pytest.raises(ValueError, match="grouped and in order"):
        with ArcFaceRecordWriter(tmp_path, image_size=(112, 112)) as w:
            w.add(0, crop)
            w.add(2, crop)  # label 1 skipped
    assert list(tmp_path.iterdir()) == []
