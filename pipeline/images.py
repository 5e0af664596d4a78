"""Robust image reading for face preprocessing: files or bytes in, ``HxWx3`` uint8 out.

What :func:`decode_image` guarantees:

* the format is decided from the content (magic bytes), never from the file name: JPEG, PNG, WebP,
  BMP and TIFF are accepted; anything else (GIF, HEIC, text, empty input) raises;
* the image is read header-first (Pillow, lazy) to get its size and EXIF orientation, and its pixel
  count is checked against ``max_pixels`` *before* any pixel is decoded (decompression bombs);
* pixels are decoded by OpenCV (``cv2.imdecode``: libjpeg-turbo, libpng, libwebp, BMP) with its
  own EXIF handling switched off, then the EXIF orientation (values 1-8) is applied explicitly,
  so results do not depend on the OpenCV version; TIFF is decoded by Pillow (TIFF readers
  differ in whether they apply the orientation tag themselves; whatever orientation Pillow has
  not applied is applied afterwards);
* conversions: grayscale -> 3 identical channels; palette -> colour; alpha is dropped (the colour
  channels are kept as stored, not composited); 16-bit -> 8-bit by keeping the high byte
  (``v >> 8``, OpenCV's rule; TIFF: 16-bit grayscale likewise, 16-bit colour as Pillow reduces
  it; 32-bit integer/float TIFFs are refused); the result is C-contiguous, writable, BGR by
  default (``color="rgb"`` gives RGB);
* EXIF is looked for where the format keeps it: JPEG APP1, WebP ``EXIF`` chunk, TIFF IFD0, and
  PNG ``eXIf`` chunks before the image data (an ``eXIf`` after ``IDAT`` is not seen: finding it
  would mean reading the whole file twice);
* a JPEG whose entropy-coded data has no EOI marker (a truncated download) raises, whatever the
  OpenCV version does with it (older OpenCV decodes such files partially, with grey rows);
* every failure raises :class:`ImageReadError` (a ``ValueError``) naming the file and the problem.

Pillow raises its own ``DecompressionBombError`` above ``2 * PIL.Image.MAX_IMAGE_PIXELS``
(~179 MP) while reading the header; that is reported as the same "too many pixels" error, so a
``max_pixels`` above that needs ``PIL.Image.MAX_IMAGE_PIXELS`` raised by the application too. The
default cap (80 MP) sits below Pillow's warning threshold (~89 MP).
"""

from __future__ import annotations

import enum
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ImageFormat",
    "ImageInfo",
    "ImageReadError",
    "apply_exif_orientation",
    "decode_image",
    "draft_factor",
    "probe_image",
    "read_image",
    "sniff_format",
]

DEFAULT_MAX_PIXELS = 80_000_000
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File extensions (lower case) that folder-walking jobs treat as photos."""

BytesLike = bytes | bytearray | memoryview | np.ndarray
ColorOrder = Literal["bgr", "rgb"]


class ImageReadError(ValueError):
    """An image could not be read. ``path`` names the file (or the bytes' source); ``reason``
    says what is wrong. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = "<bytes>" if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across processes (Ray, DataLoader workers)
        return (type(self), (self.path, self.reason))


class ImageFormat(str, enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    BMP = "bmp"
    TIFF = "tiff"


_PIL_FORMATS = {ImageFormat.JPEG: "JPEG", ImageFormat.PNG: "PNG", ImageFormat.WEBP: "WEBP",
                ImageFormat.BMP: "BMP", ImageFormat.TIFF: "TIFF"}


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format named by the leading magic bytes, or ``None`` if not one we accept."""
    head = bytes(data[:16])
    if head[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if head[:2] == b"BM" and len(head) >= 14:
        return ImageFormat.BMP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    return None


def _describe_head(data: bytes) -> str:
    head = bytes(data[:8])
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return f"text {head.decode('ascii')!r}"
    return f"bytes {head.hex(' ')}"


def _jpeg_has_eoi(data: bytes) -> tuple[bool, str]:
    """Walk the JPEG marker segments to the first SOS, then look for the EOI marker after it.

    Inside entropy-coded data 0xFF is always stuffed (``FF 00``) and restart markers are
    ``FF D0..D7``, so ``FF D9`` after the first SOS is the end of the image; bytes after EOI
    (camera trailers, motion-photo videos) are allowed. EOI inside an EXIF thumbnail (before SOS)
    does not count.
    """
    n = len(data)
    pos = 2
    while True:
        while pos < n and data[pos] != 0xFF:  # tolerate junk between segments, as libjpeg does
            pos += 1
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return False, "truncated JPEG (ends before the image data)"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return False, "corrupt JPEG (EOI before any image data)"
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if pos + 2 > n:
            return False, "truncated JPEG (ends inside a marker segment)"
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            return False, f"corrupt JPEG (bad segment length {length} for marker FF{marker:02X})"
        if marker == 0xDA:
            if data.find(b"\xff\xd9", pos + length) < 0:
                return False, "truncated JPEG (no end-of-image marker after the image data)"
            return True, ""
        pos += length


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about an encoded image (read without decoding pixels).

    ``width``/``height`` are the header's (as stored, before EXIF orientation; for TIFF, Pillow
    may already report the upright size); ``orientation`` is the EXIF value 1-8 (1 when absent or
    invalid); ``mode`` is Pillow's mode (e.g. ``"RGB"``, ``"I;16"``).
    """

    format: ImageFormat
    width: int
    height: int
    orientation: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _as_bytes(data: BytesLike) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"encoded image array must be uint8, got {data.dtype}")
        return data.tobytes()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes-like encoded image data, got {type(data).__name__}")


def _exif_orientation(im: Image.Image) -> int:
    # PNG's getexif() decodes the whole image when no eXIf chunk came before IDAT; only ask
    # when the header already holds EXIF.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    if im.format == "BMP":
        return 1
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: ignore it, as viewers do
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def probe_image(data: BytesLike, *, source: str | os.PathLike | None = None) -> ImageInfo:
    """Read format, size and EXIF orientation from the header (no pixel decoding).

    Raises:
        ImageReadError: empty input, unknown format, or a header Pillow cannot parse.
    """
    raw = _as_bytes(data)
    if len(raw) == 0:
        raise ImageReadError(source, "empty file (0 bytes)")
    fmt = sniff_format(raw)
    if fmt is None:
        raise ImageReadError(
            source, f"not a supported image (JPEG, PNG, WebP, BMP, TIFF); starts with {_describe_head(raw)}"
        )
    try:
        with Image.open(io.BytesIO(raw), formats=[_PIL_FORMATS[fmt]]) as im:
            width, height = im.size
            mode = im.mode
            orientation = _exif_orientation(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(source, f"too many pixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        detail = "Pillow cannot parse it" if isinstance(e, UnidentifiedImageError) else str(e)
        raise ImageReadError(source, f"corrupt or truncated {fmt.value.upper()} header ({detail})") from e
    if width < 1 or height < 1:
        raise ImageReadError(source, f"invalid image size {width}x{height}")
    return ImageInfo(format=fmt, width=width, height=height, orientation=orientation, mode=mode)


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image upright according to the EXIF orientation value (1-8).

    Same result as ``PIL.ImageOps.exif_transpose``; returns a C-contiguous array (the input itself
    for orientation 1).
    """
    if orientation == 1:
        return image
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:  # transpose
        return np.ascontiguousarray(np.swapaxes(image, 0, 1))
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:  # transverse
        return np.ascontiguousarray(np.swapaxes(image, 0, 1)[::-1, ::-1])
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")


_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _decode_tiff_with_pillow(raw: bytes, source) -> tuple[np.ndarray, int]:
    """TIFF pixels as ``HxWx3`` uint8 BGR and the orientation still to apply.

    TIFF readers disagree about the orientation tag: OpenCV applies it in some versions and
    layouts, Pillow applies it while loading (and then drops the tag) in recent versions. Pillow
    is used, and whatever orientation its image still carries after loading is returned, so the
    result is upright with either behaviour.
    """
    try:
        with Image.open(io.BytesIO(raw), formats=["TIFF"]) as im:
            im.load()
            residual = _exif_orientation(im)
            if im.mode in _PIL_16BIT_MODES:
                gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
                return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), residual
            if im.mode in ("I", "F"):
                raise ImageReadError(source, f"unsupported TIFF sample format (Pillow mode {im.mode})")
            rgb = np.asarray(im.convert("RGB"))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(source, f"corrupt or truncated TIFF data ({e})") from e
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), residual


_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def draft_factor(height: int, width: int, scale: float) -> int:
    """The largest JPEG draft reduction (1, 2, 4 or 8) that still leaves at least ``scale`` of the
    image's size: decoding at 1/N skips most of the JPEG decoder's work, and an image that is
    about to be shrunk by ``scale`` loses nothing the shrink would keep."""
    factor = 1
    for n in (2, 4, 8):
        if n * scale <= 1.0 and min(height, width) >= 16 * n:
            factor = n
    return factor


def decode_image(data: BytesLike, *, source: str | os.PathLike | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, exif_orientation: bool = True,
                 color: ColorOrder = "bgr", reduce: int = 1, info: ImageInfo | None = None) -> np.ndarray:
    """Decode an encoded image to an upright ``HxWx3`` uint8 array.

    Args:
        data: the encoded file content.
        source: what to call the data in errors (usually its path).
        max_pixels: refuse images with more pixels than this (``None``: no cap of ours).
        exif_orientation: apply the EXIF orientation tag.
        color: ``"bgr"`` (OpenCV order, what the detector takes) or ``"rgb"``.
        reduce: 2, 4 or 8: a JPEG is decoded at about 1/``reduce`` of its size by the decoder's
            DCT scaling (several times faster; see :func:`draft_factor`); other formats ignore it.
        info: :func:`probe_image` of ``data`` when the caller has it already (not read again).

    Returns:
        ``[H, W, 3]`` uint8, C-contiguous.

    Raises:
        ImageReadError: empty, unsupported, corrupt, truncated or oversized input.
    """
    if color not in ("bgr", "rgb"):
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    raw = _as_bytes(data)
    info = info or probe_image(raw, source=source)
    if max_pixels is not None and info.pixels > max_pixels:
        raise ImageReadError(
            source, f"too many pixels: {info.width}x{info.height} = {info.pixels:,} > cap {max_pixels:,}"
        )
    if info.format is ImageFormat.JPEG:
        ok, why = _jpeg_has_eoi(raw)
        if not ok:
            raise ImageReadError(source, why)
    orientation = info.orientation
    if info.format is ImageFormat.TIFF:
        img, orientation = _decode_tiff_with_pillow(raw, source)
    else:
        buf = np.frombuffer(raw, dtype=np.uint8)
        flags = cv2.IMREAD_COLOR
        if reduce != 1 and info.format is ImageFormat.JPEG:
            if reduce not in _REDUCED_FLAGS:
                raise ValueError(f"reduce must be 1, 2, 4 or 8, got {reduce!r}")
            flags = _REDUCED_FLAGS[reduce]
        img = cv2.imdecode(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise ImageReadError(
                source, f"corrupt or truncated {info.format.value.upper()} data (decoder failed)"
            )
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ImageReadError(source, f"decoder returned unexpected {img.dtype} array {img.shape}")
    if exif_orientation:
        img = apply_exif_orientation(img, orientation)
    if color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               exif_orientation: bool = True, color: ColorOrder = "bgr") -> np.ndarray:
    """Read an image file; see :func:`decode_image` (same arguments and guarantees).

    Raises:
        ImageReadError: also for files that cannot be opened (missing, permissions), chained to
            the ``OSError``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ImageReadError(p, f"cannot read file ({e.strerror or e})") from e
    return decode_image(raw, source=p, max_pixels=max_pixels, exif_orientation=exif_orientation,
                        color=color)
