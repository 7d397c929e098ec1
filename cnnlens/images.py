"""Image decoding: encoded bytes to a Pillow image, safely, and to the modes models take.

:func:`open_image` decodes any format Pillow reads, within :data:`MAX_IMAGE_PIXELS`
and scaled down to :data:`MAX_DECODED_SIDE`; :func:`open_plain_png` is the fast
path for small plain PNGs (MNIST-style data); :func:`to_mode` converts any image
to ``"L"`` or ``"RGB"``.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_DECODED_SIDE",
    "MAX_IMAGE_PIXELS",
    "open_image",
    "open_plain_png",
    "to_mode",
]

MAX_IMAGE_PIXELS = 150_000_000
"""Images with more pixels are refused before decoding (decompression bombs)."""

MAX_DECODED_SIDE = 2048
"""Larger images are scaled down on load; no network here needs more."""


def open_image(data: bytes, name: str = "the image", max_side: int | None = None) -> Image.Image:
    """Decode image bytes safely: pixel cap, EXIF rotation, large images scaled down.

    Args:
        data: the encoded image.
        name: how errors call the image.
        max_side: the longest side wanted, at most :data:`MAX_DECODED_SIDE` (the
            default). Larger images are scaled down with their aspect ratio kept;
            a JPEG is decoded at 1/2, 1/4 or 1/8 scale when that is still large
            enough, so a 12-megapixel photo never sits in memory at full size.

    Raises:
        TypeError: if ``max_side`` is not an integer.
        ValueError: if the bytes are not an image, are truncated, or exceed
            :data:`MAX_IMAGE_PIXELS`, or if ``max_side`` is below 1.
    """
    side = _largest_side(max_side)
    try:
        with warnings.catch_warnings():
            # Our own cap below replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels, over "
                    f"the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit. Scale it down and try again."
                )
            if max(width, height) > side:
                # JPEG decodes straight to the smallest scale that still covers the
                # target box; other formats are scaled after decoding.
                scale = side / max(width, height)
                image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            # In place: a copy of a full-size decode is the memory this avoids.
            ImageOps.exif_transpose(image, in_place=True)
            if max(image.size) > side:
                image.thumbnail((side, side), Image.Resampling.LANCZOS)
            return image
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name} is too large to decode safely: {error}") from error
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image Pillow can read (PNG, JPEG, ...).") from None
    except OSError as error:
        raise ValueError(f"{name} is damaged or truncated and cannot be decoded: {error}") from None


def _largest_side(max_side: int | None) -> int:
    """The longest side :func:`open_image` keeps: ``max_side`` capped at MAX_DECODED_SIDE."""
    if max_side is None:
        return MAX_DECODED_SIDE
    if isinstance(max_side, bool) or not isinstance(max_side, int):
        raise TypeError(f"max_side must be an integer number of pixels, got {max_side!r}.")
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1 pixel, got {max_side}.")
    return min(max_side, MAX_DECODED_SIDE)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Stretch a 16-bit, 32-bit or float image over 8 bits by its own value range."""
    array = np.asarray(image, dtype=np.float64)
    low, high = min(0.0, float(array.min())), float(array.max())
    if high <= low:
        return Image.new("L", image.size, 0)
    scaled = ((array - low) / (high - low) * 255.0).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow image to ``"L"`` or ``"RGB"``.

    Transparent pixels become black (the background of MNIST-style digits);
    16-bit and float images are scaled into 8 bits by their range rather than clipped.

    Raises:
        ValueError: for a mode other than ``"L"`` or ``"RGB"``.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (1 channel) or 'RGB' (3 channels), got {mode!r}.")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# width, height, bit depth, colour type, compression, filter method, interlace
_IHDR = struct.Struct(">IIBBBBB")
_CHUNK = struct.Struct(">I4s")  # length, type
_CRC = struct.Struct(">I")
# Chunks that change no pixel Pillow gives: colour metadata Pillow does not apply,
# resolution, time. Any other (tRNS: alpha; eXIf, tEXt, iTXt, zTXt: orientation
# Pillow would apply) sends the file through Pillow's parser.
_PLAIN_PNG_CHUNKS = frozenset(
    (b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tIME")
)


def open_plain_png(data: bytes, size: tuple[int, int]) -> Image.Image | None:
    """A plain 8-bit grey or RGB PNG of exactly ``size`` (height, width), decoded fast.

    The chunks are walked here, every CRC checked as Pillow does, and the image
    data goes straight to Pillow's PNG decoder: Pillow's pixels, without the
    parser's cost, which is most of a small image's. ``None`` for anything else,
    which :func:`open_image` then opens: other formats, bit depths or sizes,
    palette, alpha, interlacing, text that may hold an orientation, or a broken
    file (Pillow then words the error).
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, 16)
    if depth != 8 or colour not in (0, 2) or compression or filtering or interlace:
        return None
    if (height, width) != tuple(size):
        return None
    stream = _image_data(data)
    if stream is None:
        return None
    mode = "RGB" if colour == 2 else "L"
    try:
        return Image.frombytes(mode, (width, height), stream, "zip", mode)
    except (ValueError, OSError):  # damaged image data
        return None


def _image_data(data: bytes) -> bytes | None:
    """The joined IDAT chunks of a PNG whose chunks are all plain and intact, else ``None``."""
    stream: list[bytes] = []
    at, end = 8, len(data)
    while True:
        if at + 12 > end:
            return None  # truncated before IEND
        length, kind = _CHUNK.unpack_from(data, at)
        body_end = at + 8 + length
        if kind not in _PLAIN_PNG_CHUNKS or body_end + 4 > end:
            return None
        if zlib.crc32(data[at + 4 : body_end]) != _CRC.unpack_from(data, body_end)[0]:
            return None
        if kind == b"IEND":
            return b"".join(stream)
        if kind == b"IDAT":
            stream.append(data[at + 8 : body_end])
        at = body_end + 4
