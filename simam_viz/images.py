"""The one image loader: untrusted bytes in, an upright RGB picture or one clear error out.

Uploads are hostile input. Pillow sniffs content regardless of the file name, so decoders are
limited to an allow-list; a size is checked before any pixel is decoded (decompression bombs);
``load()`` runs inside the guard because ``open()`` is lazy and truncation shows up only then;
EXIF orientation is applied so maps line up with what the browser shows; exotic modes are
converted by their real value range. Nothing here changes Pillow's process-wide settings.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simam_viz.errors import ImageError

__all__ = ["ALLOWED_FORMATS", "MAX_BYTES", "MAX_PIXELS", "image_sha256", "load_image"]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000

_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, KeyError,
    TypeError, ZeroDivisionError, MemoryError, Image.DecompressionBombError,
    Image.DecompressionBombWarning, UnidentifiedImageError,
)


def image_sha256(data: bytes) -> str:
    """Hex sha256 of raw upload bytes (the cache key and manifest identity of an image)."""
    return hashlib.sha256(data).hexdigest()


def _read_bytes(source: bytes | str | Path | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path.name}: no such image file")
        if path.stat().st_size > max_bytes:
            raise ImageError(f"{path.name}: file is over the {max_bytes // 2**20} MB limit")
        data = path.read_bytes()
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"image file is over the {max_bytes // 2**20} MB limit")
    if not data:
        raise ImageError("empty file: expected a JPEG, PNG, WebP, BMP or GIF image")
    return data


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB by the mode's real value range; transparency composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if im.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr, top = arr - lo, max(hi - lo, 1e-12)
        eight = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(
    source: bytes | str | Path | BinaryIO,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into an upright, fully loaded RGB image, or raise :class:`ImageError`.

    Accepts JPEG, PNG, WebP, BMP and GIF (first frame of animations) up to ``max_bytes`` and
    ``max_pixels``; the message is one line saying what is wrong and what is accepted.
    """
    data = _read_bytes(source, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ImageError("image has no pixels")
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} pixels, over the {max_pixels / 1e6:.0f} MP limit"
                )
            if getattr(im, "is_animated", False):
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            rgb.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("unsupported image format: expected JPEG, PNG, WebP, BMP or GIF") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image dimensions are too large (decompression bomb?)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"image is truncated or corrupt ({type(exc).__name__})") from exc
    return rgb
