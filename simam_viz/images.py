"""The one image loader: untrusted bytes in, an upright RGB picture or one clear error out.

Uploads are hostile input (see ``robustness.md``, "Uploads and images"). Pillow sniffs content
whatever the file is called, so decoders are limited to an allow-list; bytes are capped before
anything is decoded and pixels before ``load()`` (decompression bombs); ``load()`` runs inside
the guard because ``open()`` is lazy and truncation shows up only then; EXIF orientation is
applied so heatmaps line up with what the browser shows; exotic modes are converted by their
real value range instead of being clipped. Nothing here changes Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``).

Memory: a few KB of PNG can hold 40 MP, so the size of a decode is bounded, not just its
pixel count. Conversion to RGB (alpha on white, 16-bit, palette, CMYK, EXIF rotation, the
``max_side`` reduction) runs in strips of rows into a compact buffer whose pages go back to the
OS as the result is filled, never on full-size float64 or ``alpha_composite`` copies; a decode
peaks at about 7 bytes a pixel over the process's baseline (under 300 MB at 40 MP, measured in
``tests/test_image_memory.py``). Decoders that need more than that before any of this can run
get lower limits from the header: WebP (libwebp holds ~16 bytes a pixel) stops at
``MAX_WEBP_PIXELS``, and progressive or multi-scan JPEGs (libjpeg buffers all DCT
coefficients) at what fits ``_DECODER_BUDGET``. With ``max_side`` a JPEG decodes at 1/2-1/8
scale to begin with.

Threads: ``_WARNINGS_LOCK`` is held only around ``Image.open`` (where Pillow runs its bomb
checks, and warns) and the EXIF parse, not around the pixel decode and conversion, so one
visitor's 40 MP decode does not stall another's upload. A rare note Pillow emits while it
decodes pixels (an APNG chunk after the image data) is therefore not silenced: in a process
that turns warnings into errors it makes that file an ``ImageError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import mmap
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from simam_viz.errors import ImageError

__all__ = ["ALLOWED_FORMATS", "MAX_ASPECT", "MAX_BYTES", "MAX_PIXELS", "MAX_WEBP_PIXELS",
           "image_sha256", "load_image"]

LOG = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
# Longer side over shorter side. Models resize the *shorter* side to their input size before
# cropping, so a 40000x1 PNG (40 KP, ~200 bytes) would become 6.4 M x 160 pixels: gigabytes.
# 100:1 keeps that to tens of MB at the usual input sizes (160-256) and passes real panoramas.
MAX_ASPECT = 100
# Pillow decodes every WebP with libwebp's animation decoder, which holds about 16 bytes a pixel
# (two canvases, the frame as bytes, the image) inside load(), before any code here can help:
# 40 MP would be 610 MB. 16 MP (phone photos are 12) keeps it under 250 MB like the rest.
MAX_WEBP_PIXELS = 16_000_000

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
# Our own calls hold this lock around catch_warnings so they never overlap, and only around
# the steps that can warn (open, EXIF): decoding and conversion run in parallel.
_WARNINGS_LOCK = threading.Lock()
# Pixels converted per strip: the temporaries of a conversion (crop, mode conversions,
# composite, numpy copies) stay at a few MB whatever the image size.
_STRIP_PIXELS = 1 << 18
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Where a strip of stored rows lands once transposed: (counted from the bottom/right instead
# of the top/left, rows become columns).
_PLACE = {
    Image.Transpose.FLIP_LEFT_RIGHT: (False, False),
    Image.Transpose.FLIP_TOP_BOTTOM: (True, False),
    Image.Transpose.ROTATE_180: (True, False),
    Image.Transpose.TRANSPOSE: (False, True),
    Image.Transpose.ROTATE_90: (False, True),
    Image.Transpose.ROTATE_270: (True, True),
    Image.Transpose.TRANSVERSE: (True, True),
}
_SIXTEEN_BIT: np.ndarray | None = None  # built on first use by _sixteen_bit_table()
# The most a decoder may hold for one image: about our own worst case (7 bytes a pixel at
# MAX_PIXELS: a 40 MP RGBA PNG's decoded source plus its converted copy).
_DECODER_BUDGET = 280 * 2**20
# JPEG start-of-frame markers by the process libjpeg uses (the hierarchical ones it refuses).
_SOF_SEQUENTIAL = frozenset({0xC0, 0xC1, 0xC3, 0xC9, 0xCB})
_SOF_OTHER = frozenset({0xC2, 0xC5, 0xC6, 0xC7, 0xCA, 0xCD, 0xCE, 0xCF})


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


@contextlib.contextmanager
def _pillow_warnings() -> Iterator[None]:
    """Hold ``_WARNINGS_LOCK`` with the bomb warning made fatal and Pillow's notes silenced.

    Only for the short steps that can warn: ``Image.open`` (where Pillow runs its bomb checks,
    GIF and MPO frame 0 included) and the EXIF parse. Pixel decoding runs outside it.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that: make the warning fatal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Corrupt-EXIF notes are about optional metadata, not worth a stderr line per image.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        yield


def _check_size(im: Image.Image, max_pixels: int) -> None:
    """Refuse what is too big to decode, from the header alone."""
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} pixels, over the "
                         f"{max_pixels / 1e6:g} MP limit")
    if im.format == "WEBP" and width * height > MAX_WEBP_PIXELS:
        raise ImageError(f"WebP image is {width}x{height} pixels, over the "
                         f"{MAX_WEBP_PIXELS / 1e6:g} MP limit for WebP")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"image is {width}x{height} pixels, over the "
                         f"{MAX_ASPECT}:1 aspect ratio limit")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_streams(data: bytes) -> bool:
    """Whether libjpeg decodes this JPEG row by row: sequential, first scan has every component.

    Otherwise (progressive, or one scan per component) it first buffers the DCT coefficients
    of the whole image, 2 bytes a sample whatever scale ``draft`` asked for. Only the marker
    segments up to the first scan are read; anything this walk does not follow counts as
    buffered.
    """
    pos, components = 2, 0
    while pos + 4 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
            continue
        if marker in _SOF_SEQUENTIAL and pos + 9 < len(data):
            components = data[pos + 9]
        elif marker in _SOF_OTHER:
            return False
        elif marker == 0xDA:  # start of scan: how many components it carries
            return 0 < components <= data[pos + 4]
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _check_jpeg_buffer(im: Image.Image, data: bytes, size: tuple[int, int]) -> None:
    """Refuse a buffered JPEG (see ``_jpeg_streams``) whose decode needs over the budget.

    ``size`` is the stored size: the coefficients are buffered at full size even when ``im``
    was drafted smaller. A 4:2:0 colour JPEG passes at 40 MP; 4:4:4 and CMYK ones hold 6 and
    8 bytes a pixel, and pass up to what the budget allows (more with ``max_side``).
    """
    if im.format not in ("JPEG", "MPO") or _jpeg_streams(data):
        return
    width, height = size
    factors = [(max(h, 1), max(v, 1)) for _, h, v, _ in getattr(im, "layer", [])] or [(1, 1)]
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    coefficients = 0
    for h, v in factors:  # blocks of 64 two-byte coefficients, rounded up as libjpeg does
        across = _ceil_div(_ceil_div(width * h, h_max), 8)
        down = _ceil_div(_ceil_div(height * v, v_max), 8)
        coefficients += _ceil_div(across, h) * h * _ceil_div(down, v) * v * 128
    need = coefficients + im.width * im.height * (1 if im.mode == "L" else 4)
    if need > _DECODER_BUDGET:
        kind = "progressive" if im.info.get("progressive") else "multi-scan"
        limit = math.floor(_DECODER_BUDGET / need * width * height / 1e5) / 10
        raise ImageError(f"{kind} JPEG is {width}x{height} pixels, over the {limit:g} MP limit "
                         f"for {kind} JPEGs")


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """The transpose that makes ``im`` upright by its EXIF orientation (1-8), if any.

    Unreadable EXIF leaves the pixels as stored: EXIF is optional metadata, a photo whose
    camera wrote a broken tag is still a photo, and a browser shows it unrotated too. Called
    after ``load()``: a PNG may keep its EXIF after the pixels (and reads them to find it).
    """
    try:
        return _TRANSPOSE.get(im.getexif().get(ExifTags.Base.Orientation, 1))
    except _DECODE_ERRORS:  # TypeError included: a garbage value that is not hashable
        return None


def _sixteen_bit_table() -> np.ndarray:
    """0..65535 -> 0..255, rounded so that the ends hit 0 and 255: a 64 KB lookup table."""
    global _SIXTEEN_BIT
    if _SIXTEEN_BIT is None:  # a race only computes the same table twice
        _SIXTEEN_BIT = _gray_to_8bit(np.arange(65536, dtype=np.float64), 0.0, 65535.0)
    return _SIXTEEN_BIT


def _gray_to_8bit(arr: np.ndarray, bottom: float, top: float) -> np.ndarray:
    """Map ``[bottom, top]`` linearly onto 0..255 (rounded, so the ends hit 0 and 255)."""
    scale = 255.0 / max(top - bottom, 1e-12)
    return np.clip(np.round((arr.astype(np.float64) - bottom) * scale), 0, 255).astype(np.uint8)


def _wide_to_gray(im: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """Strip converter for 16-bit, 32-bit and float gray: by the data's real value range.

    ``convert("RGB")`` alone clips 16-bit gray to near-white. The range is decided once for
    the whole image (``getextrema`` runs in C, without a copy); an integer ``transparency``
    value becomes white.
    """
    mode, key = im.mode, im.info.get("transparency")
    lo, hi = (im.getextrema() or (0, 0)) if mode in ("I", "F") else (0, 65535)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        table = _sixteen_bit_table()  # 16-bit data (older Pillow reads it as "I")

        def to_gray(arr: np.ndarray) -> np.ndarray:
            return table[arr]
    else:
        bottom, top = (0.0, 1.0) if mode == "F" and lo >= 0 and hi <= 1 else (lo, hi)

        def to_gray(arr: np.ndarray) -> np.ndarray:  # floats in [0, 1], or stretched
            return _gray_to_8bit(arr, bottom, top)

    def convert(strip: Image.Image) -> Image.Image:
        arr = np.asarray(strip)
        gray = to_gray(arr)
        if isinstance(key, int) and not isinstance(key, bool):
            gray[arr == key] = 255
        return Image.fromarray(gray)

    return convert


def _on_white(gray: bool) -> Callable[[Image.Image], Image.Image]:
    """Strip converter for anything with alpha: composited on opaque white, strip by strip.

    ``alpha_composite`` on strips (a white strip made once per strip size) instead of on the
    whole picture: the same pixels, without a full-size white image and two full-size copies.
    """
    whites: dict[tuple[int, int], Image.Image] = {}

    def convert(strip: Image.Image) -> Image.Image:
        rgba = strip if strip.mode == "RGBA" else strip.convert("RGBA")
        white = whites.get(rgba.size) or whites.setdefault(
            rgba.size, Image.new("RGBA", rgba.size, (255, 255, 255, 255)))
        flat = Image.alpha_composite(white, rgba)
        return flat.getchannel("R") if gray else flat.convert("RGB")

    return convert


def _strip_converter(im: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """How a strip of ``im`` becomes "L" (gray) or "RGB" pixels by its mode's real value range.

    Anything transparent is composited on white: ``convert("RGB")`` drops alpha and leaves
    whatever colour the transparent pixels happen to store (often black). Gray modes stay
    one byte a pixel until the very end.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_gray(im)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            "transparency" in im.info and mode in ("1", "L", "P", "RGB")):
        # palette/colour-key transparency becomes a real alpha first (convert("RGBA"))
        return _on_white(gray=mode in ("1", "L", "LA", "La"))
    if mode in ("1", "L"):
        return lambda strip: strip.convert("L")
    return lambda strip: strip.convert("RGB")


class _Pixels:
    """Converted (and reduced) pixels, one or three bytes each, in anonymous memory.

    Not a Pillow image: Pillow keeps RGB at four bytes a pixel, so this holds a 40 MP result
    in 120 MB while the decoded source is still alive, and hands its memory back to the OS
    row by row as :meth:`image` copies it out (``madvise``), so source, copy and result are
    never all full-size at once.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self._size = int(np.prod(shape))
        self._memory = mmap.mmap(-1, max(self._size, 1))
        self.array = np.frombuffer(self._memory, np.uint8, self._size).reshape(shape)
        self._released = 0

    def release(self, rows: int) -> None:
        """Give the pages of the first ``rows`` rows back; they read as zeros afterwards."""
        end = rows * self._size // max(self.array.shape[0], 1) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > self._released and hasattr(self._memory, "madvise"):
            self._memory.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    @classmethod
    def of(cls, im: Image.Image, factor: int) -> _Pixels:
        """``im`` converted strip by strip, each strip reduced ``factor`` times (box filter)."""
        convert = _strip_converter(im)
        width, height = im.size
        step = max(1, _STRIP_PIXELS // width) // factor * factor or factor
        pixels: _Pixels | None = None
        for top in range(0, height, step):
            strip = convert(im.crop((0, top, width, min(top + step, height))))
            if factor > 1:
                strip = strip.reduce(factor)
            arr = np.asarray(strip)
            if pixels is None:
                pixels = cls((_ceil_div(height, factor), *arr.shape[1:]))
            pixels.array[top // factor : top // factor + len(arr)] = arr
        assert pixels is not None  # Pillow opens nothing with no rows
        return pixels

    def image(self, method: Image.Transpose | None) -> Image.Image:
        """The RGB image, turned upright by ``method``; strips are transposed one at a time."""
        height, width = self.array.shape[:2]
        flipped, swapped = _PLACE.get(method, (False, False))
        out = Image.new("RGB", (height, width) if swapped else (width, height), None)
        step = max(1, _STRIP_PIXELS // width)
        for top in range(0, height, step):
            bottom = min(top + step, height)
            piece = Image.fromarray(self.array[top:bottom])
            if method is not None:
                piece = piece.transpose(method)
            start, end = (height - bottom, height - top) if flipped else (top, bottom)
            out.paste(piece, (start, 0, end, width) if swapped else (0, start, width, end))
            del piece
            self.release(bottom)
        return out


def _fit(im: Image.Image, max_side: int | None) -> Image.Image:
    """``im`` shrunk (LANCZOS, aspect kept) so that its longer side is at most ``max_side``."""
    longer = max(im.size)
    if max_side is None or longer <= max_side:
        return im
    width, height = im.size
    size = (max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer)))
    return im.resize(size, Image.Resampling.LANCZOS)


def _to_rgb(im: Image.Image, method: Image.Transpose | None = None, factor: int = 1, *,
            consume: bool = False) -> Image.Image:
    """``im`` (loaded) as RGB, upright by ``method`` and ``factor`` times smaller.

    RGB by each mode's real value range, transparency on white (see ``_strip_converter``). A
    plain RGB image that needs none of it comes back as is: a new ``Image`` over the same
    pixels, not a copy. With ``consume``, ``im`` is closed as soon as its pixels are
    converted, so the decoded source is gone before the result is built.
    """
    if im.mode == "RGB" and "transparency" not in im.info and method is None and factor == 1:
        return im._new(im.im)  # what copy() does, minus the copy: 160 MB at 40 MP
    pixels = _Pixels.of(im, factor)
    if consume:
        im.close()
    return pixels.image(method)


def load_image(
    source: bytes | bytearray | memoryview | str | Path | BinaryIO,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an upright, fully loaded RGB image, or raise :class:`ImageError`.

    ``source`` is the raw bytes, a path, or a binary file object (read from where it stands).
    Accepts JPEG, PNG, WebP, BMP and GIF (the first frame of animations) up to ``max_bytes``
    and ``max_pixels`` (WebP up to ``MAX_WEBP_PIXELS``, large progressive JPEGs less, see
    ``_check_jpeg_buffer``), with sides at most ``MAX_ASPECT`` to 1. Every problem with the
    input, whatever Pillow raised, comes out as one ``ImageError`` whose one-line message says
    what is wrong and what is accepted. Caller bugs are not ``ImageError``: a source of the
    wrong Python type or a ``max_side`` that is not an int raises ``TypeError``, a
    ``max_side`` under 1 ``ValueError``.

    ``max_side``: the longer side of the result is at most this, aspect kept (never enlarged).
    A JPEG is then decoded at 1/2, 1/4 or 1/8 scale directly (``draft``); anything else is
    box-reduced by an integer factor, strip by strip as it is converted, to at least twice
    ``max_side``, and the last step is LANCZOS (as ``thumbnail`` does). Callers that keep only
    a small copy (the app keeps 1024 px: the models look at ~224 px crops) should ask for it
    here rather than shrink the result: the full-size RGB picture then never exists.

    Why it is built like this: uploads are hostile, and a 75 KB PNG can hold 40 MP. Converting
    such a picture on full-size float64 arrays and ``alpha_composite`` copies, as this did,
    took +0.8 to +1.1 GB per decode, under a lock that made every other upload wait. Now the
    conversion runs in strips (see the module docstring): at most about 7 bytes a pixel over
    the process's baseline, under 300 MB at 40 MP (``tests/test_image_memory.py``), and with
    ``max_side=1024`` what the decoder itself needs (JPEG: ~20 MB). Only ``Image.open`` and
    the EXIF parse hold the lock.
    """
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int)):
        raise TypeError(f"max_side must be an int or None, not {type(max_side)}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    data = _read_bytes(source, max_bytes)
    try:
        with _pillow_warnings():
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # lands on frame 0
            _check_size(im, max_pixels)
            width, height = im.size
        if max_side is not None and max(width, height) > max_side:
            longer = max(width, height)
            # JPEG only (a no-op elsewhere): the decoder scales by 1/2, 1/4 or 1/8, keeping
            # each side at least the size asked for.
            im.draft(im.mode, (max(1, width * max_side // longer),
                               max(1, height * max_side // longer)))
        _check_jpeg_buffer(im, data, (width, height))
        im.load()  # outside the lock: open() is lazy, this is the decode (and truncation)
        with _pillow_warnings():
            method = _orientation(im)
        # Box-reduce to at least twice the final size, then LANCZOS (what thumbnail() does).
        factor = 1 if max_side is None else max(1, max(im.size) // (2 * max_side))
        rgb = _fit(_to_rgb(im, method, factor, consume=True), max_side)
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
    LOG.debug("decoded a %dx%d image (%d bytes) into %dx%d", width, height, len(data),
              *rgb.size)
    return rgb
