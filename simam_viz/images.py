"""The one image loader: untrusted bytes in, an upright RGB picture or one clear error out.

Uploads are hostile input (see ``robustness.md``, "Uploads and images"). Pillow sniffs content
whatever the file is called, so decoders are limited to an allow-list; bytes are capped before
anything is decoded and pixels before ``load()`` (decompression bombs); ``load()`` runs inside
the guard because ``open()`` is lazy and truncation shows up only then; EXIF orientation is
applied so heatmaps line up with what the browser shows; exotic modes are converted by their
real value range instead of being clipped. Nothing here changes Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simam_viz.errors import ImageError

__all__ = ["ALLOWED_FORMATS", "MAX_ASPECT", "MAX_BYTES", "MAX_PIXELS", "image_sha256",
           "load_image"]

LOG = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
# Longer side over shorter side. Models resize the *shorter* side to their input size before
# cropping, so a 40000x1 PNG (40 KP, ~200 bytes) would become 6.4 M x 160 pixels: gigabytes.
# 100:1 keeps that to tens of MB at the usual input sizes (160-256) and passes real panoramas.
MAX_ASPECT = 100

_ACCEPTED = "expected a JPEG, PNG, WebP, BMP or GIF image"
# Magic numbers of the allowed formats: a file that starts like one of them but that Pillow
# cannot identify is a broken file of that format, not an unsupported one.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
# What Pillow's decoders raise on malformed data (tests/test_images.py fuzzes every allowed
# format against this list);
# ``Warning`` covers a process that runs with warnings turned into errors.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, KeyError, TypeError,
    ZeroDivisionError, OverflowError, MemoryError, Image.DecompressionBombError, Warning,
)
# ``warnings.catch_warnings`` swaps the process-global filter list and is not thread-safe before
# Python 3.14: two overlapping calls (one Streamlit session = one thread) can restore each
# other's state and leave "DecompressionBombWarning -> error" installed for the whole process.
# Loads are serialised on this lock so our own calls never overlap.
_WARNINGS_LOCK = threading.Lock()


def image_sha256(data: bytes) -> str:
    """Hex sha256 of the raw upload bytes: the cache key and manifest identity of an image.

    Keyed on bytes rather than on arrays or PIL images, because Streamlit's hashing of those
    samples large arrays and once ignored palettes (collisions show one user another's result).
    """
    return hashlib.sha256(data).hexdigest()


def _size_text(n_bytes: int) -> str:
    """``10 MB`` / ``512 KB`` / ``100 bytes``: a limit as people read it."""
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:g} MB"
    if n_bytes >= 2**10:
        return f"{n_bytes / 2**10:g} KB"
    return f"{n_bytes} bytes"


def _read_bytes(source: bytes | bytearray | memoryview | str | Path | BinaryIO,
                max_bytes: int) -> bytes:
    """All of ``source`` as bytes, never reading more than ``max_bytes + 1`` of it.

    The cap comes first so that a huge upload or file costs neither memory nor decode time.
    """
    over = f"image file is over the {_size_text(max_bytes)} limit"
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        try:
            if not path.is_file():
                raise ImageError(f"{path.name or path}: no such image file")
            if path.stat().st_size > max_bytes:
                raise ImageError(f"{path.name}: {over}")
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)  # the file may have grown since stat()
        except (OSError, ValueError) as exc:
            if isinstance(exc, ImageError):
                raise
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ImageError(f"{path.name or path}: cannot read image file ({reason})") from exc
    elif hasattr(source, "read"):
        chunks, total = [], 0
        while total <= max_bytes:  # raw streams may return short reads before EOF
            chunk = source.read(max_bytes + 1 - total)
            if not chunk:
                break
            if not isinstance(chunk, bytes | bytearray):
                raise TypeError("load_image needs a binary file object, not a text one")
            chunks.append(bytes(chunk))
            total += len(chunk)
        data = b"".join(chunks)
    else:
        raise TypeError(f"load_image takes bytes, a path or a binary file, not {type(source)}")
    if len(data) > max_bytes:
        raise ImageError(over)
    if not data:
        raise ImageError(f"empty file: {_ACCEPTED}")
    return data


def _sniff(data: bytes) -> str | None:
    """The allowed format ``data`` claims to be by its magic number, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (1-8); unreadable EXIF leaves the pixels as stored.

    EXIF is optional metadata: a photo whose camera wrote a broken tag is still a photo, and a
    browser shows it unrotated too, so this must not refuse the image.
    """
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _gray_to_8bit(arr: np.ndarray, top: float, bottom: float = 0.0) -> Image.Image:
    """Map ``[bottom, top]`` linearly onto 0..255 (rounded, so the ends hit 0 and 255)."""
    scale = 255.0 / max(top - bottom, 1e-12)
    eight = np.clip(np.round((arr - bottom) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB by each mode's real value range; anything transparent composited on white.

    ``convert("RGB")`` alone clips 16-bit gray to near-white and drops alpha, which leaves
    whatever colour the transparent pixels happen to store (often black).
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
            gray = _gray_to_8bit(arr, 65535.0)  # 16-bit data (older Pillow reads it as "I")
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            gray = _gray_to_8bit(arr, 1.0)  # float images in [0, 1]
        else:
            gray = _gray_to_8bit(arr, hi, lo)  # no fixed range: stretch what is there
        key = im.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):
            gray.paste(255, mask=Image.fromarray(((arr == key) * 255).astype(np.uint8)))
        return gray.convert("RGB")
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        im = im.convert("RGBA")  # palette/colour-key transparency becomes a real alpha
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(
    source: bytes | bytearray | memoryview | str | Path | BinaryIO,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into an upright, fully loaded RGB image, or raise :class:`ImageError`.

    ``source`` is the raw bytes, a path, or a binary file object (read from where it stands).
    Accepts JPEG, PNG, WebP, BMP and GIF (the first frame of animations) up to ``max_bytes``
    and ``max_pixels``, with sides at most ``MAX_ASPECT`` to 1. Every problem with the input,
    whatever Pillow raised, comes out as one ``ImageError`` whose one-line message says what is
    wrong and what is accepted; a source of the wrong Python type is a caller bug and raises
    ``TypeError``.
    """
    data = _read_bytes(source, max_bytes)
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that: make the warning fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Corrupt-EXIF notes are about optional metadata, not worth a stderr line per image.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # lands on frame 0
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} pixels, over the "
                                 f"{max_pixels / 1e6:g} MP limit")
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise ImageError(f"image is {width}x{height} pixels, over the "
                                 f"{MAX_ASPECT}:1 aspect ratio limit")
            im.load()
            rgb = _to_rgb(_upright(im))
            rgb.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        fmt = _sniff(data)
        if fmt is None:
            raise ImageError(f"unsupported image format: {_ACCEPTED}") from exc
        raise ImageError(f"{fmt} image is truncated or corrupt (header unreadable)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image dimensions are too large: at most {max_pixels / 1e6:g} MP "
                         "accepted") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"image is truncated or corrupt ({type(exc).__name__})") from exc
    LOG.debug("decoded a %dx%d image (%d bytes)", rgb.width, rgb.height, len(data))
    return rgb
