"""pipeline.images: content-sniffed decoding, EXIF orientation, conversions and typed errors."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.images import (
    ImageFormat,
    ImageReadError,
    apply_exif_orientation,
    decode_image,
    probe_image,
    read_image,
    sniff_format,
)
from tests.shared import asset

DEEPFACE = "verification/deepface"


def _pattern(h: int = 48, w: int = 64) -> np.ndarray:
    """An asymmetric BGR test pattern (every flip/rotation of it is distinct)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), x * y * 255 // ((h - 1) * (w - 1))],
                   axis=-1).astype(np.uint8)
    img[2:10, 3:20] = (255, 0, 0)
    return img


def _encode(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _pil_bytes(rgb_or_mode_image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    rgb_or_mode_image.save(out, format=fmt, **kw)
    return out.getvalue()


def _with_orientation(img_bgr: np.ndarray, orientation: int, fmt: str) -> bytes:
    """Stored pixels such that applying EXIF ``orientation`` gives back ``img_bgr``."""
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    stored = apply_exif_orientation(img_bgr, inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    pil = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    return _pil_bytes(pil, fmt, exif=exif.tobytes(), **kw)


# ------------------------------------------------------------------ real files
def test_deepface_photos_decode_like_opencv_and_webp_is_sniffed():
    folder = asset(DEEPFACE)
    files = sorted(folder.glob("*.jpg"))
    assert len(files) == 62
    webp = asset(f"{DEEPFACE}/img47.jpg")
    assert sniff_format(webp.read_bytes()) is ImageFormat.WEBP
    for path in [webp, *files[:6]]:
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous
        # none of these carries an EXIF rotation: identical to OpenCV's own decoder
        np.testing.assert_array_equal(img, cv2.imread(str(path), cv2.IMREAD_COLOR))
    rgb = read_image(webp, color="rgb")
    np.testing.assert_array_equal(rgb, read_image(webp)[:, :, ::-1])
    raw = webp.read_bytes()
    for form in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        np.testing.assert_array_equal(decode_image(form), rgb[:, :, ::-1])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG", "TIFF"])
def test_exif_orientation_all_eight_values(fmt):
    upright = _pattern()
    for orientation in range(1, 9):
        data = _with_orientation(upright, orientation, fmt)
        info = probe_image(data)
        assert info.orientation == orientation
        img = decode_image(data)
        assert img.shape == upright.shape
        # same as Pillow's exif_transpose on the same bytes
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")))[:, :, ::-1]
        if fmt == "JPEG":
            assert np.abs(img.astype(int) - upright).mean() < 3
            assert np.abs(img.astype(int) - ref).mean() < 1
        else:
            np.testing.assert_array_equal(img, upright)
            np.testing.assert_array_equal(img, ref)
        if fmt != "TIFF":  # TIFF readers may orient while decoding
            stored = decode_image(data, exif_orientation=False)
            np.testing.assert_array_equal(apply_exif_orientation(stored, orientation), img)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff", ".webp"])
def test_lossless_formats_round_trip(ext):
    img = _pattern()
    params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == ".webp" else ()  # > 100: lossless
    data = _encode(img, ext, params)
    assert sniff_format(data) is ImageFormat(ext[1:])
    np.testing.assert_array_equal(decode_image(data), img)


# ------------------------------------------------------------------ documented conversions
def test_grayscale_16bit_and_alpha_conversions():
    gray = _pattern()[:, :, 1]
    img = decode_image(_encode(gray, ".png"))
    assert img.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], gray)

    wide = (np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3) * 21 % 65536).astype(np.uint16)
    img16 = decode_image(_encode(wide, ".png"), source="deep.png")
    assert img16.dtype == np.uint8
    np.testing.assert_array_equal(img16, (wide >> 8).astype(np.uint8))  # high byte kept
    gray16 = decode_image(_encode(wide[:, :, 0], ".png"))
    np.testing.assert_array_equal(gray16[:, :, 2], (wide[:, :, 0] >> 8).astype(np.uint8))

    bgra = np.dstack([_pattern(), np.linspace(0, 255, 64, dtype=np.uint8)[None].repeat(48, 0)])
    img4 = decode_image(_encode(bgra, ".png"))
    np.testing.assert_array_equal(img4, bgra[:, :, :3])  # alpha dropped, colours as stored

    pal = Image.fromarray(cv2.cvtColor(_pattern(), cv2.COLOR_BGR2RGB)).convert("P")
    imgp = decode_image(_pil_bytes(pal, "PNG"))
    np.testing.assert_array_equal(imgp, np.asarray(pal.convert("RGB"))[:, :, ::-1])


def test_one_pixel_png_is_a_valid_image():
    data = _encode(np.array([[[10, 20, 30]]], dtype=np.uint8), ".png")
    img = decode_image(data)
    assert img.shape == (1, 1, 3)
    np.testing.assert_array_equal(img[0, 0], [10, 20, 30])


# ------------------------------------------------------------------ errors
def _raises(data, match, source="bad.jpg", **kw) -> ImageReadError:
    with pytest.raises(ImageReadError, match=match) as info:
        decode_image(data, source=source, **kw)
    assert info.value.path == source
    assert str(info.value).startswith(f"{source}: ")
    return info.value


def test_zero_byte_and_text_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file") as info:
        read_image(empty)
    assert info.value.path == str(empty) and isinstance(info.value, ValueError)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageReadError, match=r"not a supported image.*text 'this is '"):
        read_image(text)
    _raises(b"GIF89a\x01\x00\x01\x00", "not a supported image")
    with pytest.raises(ImageReadError, match="cannot read file") as info:
        read_image(tmp_path / "missing.png")
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_truncated_and_corrupt_files():
    raw = asset(f"{DEEPFACE}/img2.jpg").read_bytes()
    for cut in (len(raw) // 3, len(raw) * 9 // 10, len(raw) - 2):  # the last cut drops only EOI
        _raises(raw[:cut], "truncated JPEG")
    _raises(raw[:300], "truncated JPEG|corrupt or truncated JPEG")
    # bytes after EOI (camera trailers, motion photos) are fine
    np.testing.assert_array_equal(decode_image(raw + b"\x00trailer" * 10), decode_image(raw))

    png = _encode(_pattern(), ".png")
    _raises(png[: len(png) * 2 // 3], "corrupt or truncated PNG", source="cut.png")
    body = bytearray(png)
    body[len(png) // 2] ^= 0xFF  # breaks the IDAT CRC / zlib stream
    _raises(bytes(body), "corrupt or truncated PNG", source="flip.png")
    webp = _encode(_pattern(), ".webp")
    _raises(webp[: len(webp) // 2], "corrupt or truncated WEBP", source="cut.webp")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_pixel_cap_is_checked_before_decoding():
    data = _encode(_pattern(48, 64), ".png")
    err = _raises(data, r"too many pixels: 64x48 = 3,072 > cap 3,000", source="big.png", max_pixels=3000)
    assert err.reason.startswith("too many pixels")
    assert decode_image(data, max_pixels=3072).shape == (48, 64, 3)
    assert decode_image(data, max_pixels=None).shape == (48, 64, 3)
    # a 50000 x 40000 "bomb" (2 GP) of a few bytes: refused from its header, nothing decoded
    _raises(_png_header_only(50_000, 40_000), "too many pixels", source="bomb.png")


def test_error_is_picklable_and_typed():
    err = ImageReadError("a/b.jpg", "truncated JPEG")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageReadError) and isinstance(back, ValueError)
    assert (back.path, back.reason, str(back)) == ("a/b.jpg", "truncated JPEG", "a/b.jpg: truncated JPEG")
    assert ImageReadError(None, "x").path == "<bytes>"


def test_apply_exif_orientation_matches_pillow_transposes():
    img = _pattern(5, 7)
    pil = Image.fromarray(img)
    ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for orientation, op in ops.items():
        np.testing.assert_array_equal(apply_exif_orientation(img, orientation), np.asarray(pil.transpose(op)))
    assert apply_exif_orientation(img, 1) is img
    with pytest.raises(ValueError):
        apply_exif_orientation(img, 9)
