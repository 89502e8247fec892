"""The image loader under decompression bombs: bounded memory, right pixels, no global stall.

Each 40 MP bomb is a few KB to 2 MB on disk, built here once per module, and decoded in a fresh
subprocess that measures its peak RSS above the baseline it had after importing the loader
(sampled from /proc every 2 ms, and the kernel's high-water mark VmHWM). "MB" is 2**20 bytes, as in
the loader's messages. A decode may cost at most 300 MB at full size; with ``max_side=1024``
(what the app asks for) less, and a JPEG is decoded small to begin with.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import simam_viz.images as images
from simam_viz.errors import ImageError
from simam_viz.images import MAX_PIXELS, MAX_WEBP_PIXELS, load_image

LOG = logging.getLogger(__name__)
MB = 2**20
SIDE = 6324  # 6324 x 6324 = 39.99 MP, just under MAX_PIXELS
BLOCK = 64  # a block in a corner of each bomb: where it lands shows values and orientation
FULL_LIMIT, SIDE_LIMIT, DRAFT_LIMIT = 300 * MB, 200 * MB, 60 * MB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/statm")


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _with_block(mode: str, size: int, background, block) -> Image.Image:
    im = Image.new(mode, (size, size), background)
    im.paste(block, (0, 0, BLOCK, BLOCK))
    return im


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _gray16() -> bytes:
    arr = np.full((SIDE, SIDE), 65535, np.uint16)
    arr[:BLOCK, :BLOCK] = 0
    return _save(Image.fromarray(arr), "PNG")


def _palette() -> bytes:
    im = _with_block("P", SIDE, 0, 1)
    im.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)  # entry 0 would show as near-black
    return _save(im, "PNG", transparency=0)


WHITE, RED, CYAN = (255, 255, 255), (200, 10, 10), (0, 255, 255)
# name: (bytes, colour of the corner block, of the rest, where the block ends up, tolerance)
BOMBS: dict[str, tuple[Callable[[], bytes], tuple, tuple, str, int]] = {
    "16-bit gray PNG": (_gray16, (0, 0, 0), WHITE, "top left", 0),
    "RGBA PNG": (lambda: _save(_with_block("RGBA", SIDE, (0, 0, 0, 0), (*RED, 255)), "PNG"),
                 RED, WHITE, "top left", 0),
    "palette PNG, transparent": (_palette, (200, 0, 0), WHITE, "top left", 0),
    "LA PNG": (lambda: _save(_with_block("LA", SIDE, (0, 0), (90, 255)), "PNG"),
               (90, 90, 90), WHITE, "top left", 0),
    "CMYK JPEG": (lambda: _save(_with_block("CMYK", SIDE, (0, 0, 0, 0), (255, 0, 0, 0)), "JPEG",
                                quality=90), CYAN, WHITE, "top left", 8),
    # orientation 6: stored row 0 is shown on the right, so the block lands top right
    "RGB JPEG, rotated": (lambda: _save(_with_block("RGB", SIDE, (30, 120, 220), (250, 250, 10)),
                                        "JPEG", quality=90, exif=_exif(6)),
                          (250, 250, 10), (30, 120, 220), "top right", 8),
    "one-colour RGB PNG": (lambda: _save(Image.new("RGB", (SIDE, SIDE), (30, 120, 220)), "PNG"),
                           (30, 120, 220), (30, 120, 220), "top left", 0),
    # libwebp holds ~16 bytes a pixel while it decodes: WebP stops at MAX_WEBP_PIXELS
    "RGBA WebP at its limit": (lambda: _save(_with_block("RGBA", 4000, (0, 0, 0, 0), (*RED, 255)),
                                             "WEBP", lossless=True), RED, WHITE, "top left", 0),
}

_MEASURE = r"""
import gc, json, os, sys, threading, time
import numpy as np
from PIL import Image
from simam_viz.images import load_image

path, side = sys.argv[1], None if sys.argv[2] == "full" else int(sys.argv[2])
with open(path, "rb") as fh:
    data = fh.read()
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page

def high_water():  # this process's peak RSS (not ru_maxrss: that counts the parent's too)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

gc.collect()
base = rss()
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the high-water mark to the current RSS (Linux 4.0+)
except OSError:
    pass
peak = [base]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
image = load_image(data, max_side=side)
seconds = time.perf_counter() - start
stop.set()
sampler.join()
w, h = image.size
at = lambda fx, fy: list(image.getpixel((min(w - 1, int(fx * w)), min(h - 1, int(fy * h)))))
print(json.dumps({"peak": max(peak[0], high_water()) - base, "seconds": seconds, "size": [w, h],
                  "mode": image.mode, "top left": at(0.005, 0.005),
                  "top right": at(0.995, 0.005), "centre": at(0.5, 0.5),
                  "bottom right": at(0.995, 0.995)}))
"""


def _measure(path: Path, max_side: int | None) -> dict:
    """Decode ``path`` in a fresh interpreter: peak bytes over its baseline, time, samples."""
    package_root = str(Path(images.__file__).resolve().parents[1])  # the loader under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(max_side or "full")],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for i, (name, (make, *_)) in enumerate(BOMBS.items()):
        paths[name] = folder / f"bomb{i}"
        paths[name].write_bytes(make())
    return paths


def _close(got: list[int], want: tuple, tolerance: int) -> bool:
    return max(abs(a - b) for a, b in zip(got, want, strict=True)) <= tolerance


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_decode_in_bounded_memory_with_the_right_pixels(
    name: str, bomb_files: dict[str, Path],
) -> None:
    _, block, rest, corner, tolerance = BOMBS[name]
    path = bomb_files[name]
    assert path.stat().st_size < 2 * MB  # a tiny upload...
    full, small = _measure(path, None), _measure(path, 1024)
    LOG.info("%s: %d KB; full size %.0f MB %.2f s; max_side=1024 %.0f MB %.2f s", name,
             path.stat().st_size // 1024, full["peak"] / MB, full["seconds"],
             small["peak"] / MB, small["seconds"])
    with Image.open(path) as im:
        width, height = im.size
    assert width * height <= MAX_PIXELS
    assert full["size"] == [width, height] and full["mode"] == "RGB"
    assert max(small["size"]) == 1024 and small["mode"] == "RGB"
    assert small["size"][0] * height == pytest.approx(small["size"][1] * width, rel=0.01)
    for result in (full, small):
        assert _close(result[corner], block, tolerance), (result, corner)
        for where in ("centre", "bottom right"):
            assert _close(result[where], rest, tolerance), (result, where)
    # ...that decodes to gigabytes of pixels, within a bounded amount of memory
    assert full["peak"] < FULL_LIMIT
    if "WebP" in name:  # libwebp decodes at full size whatever is kept
        assert small["peak"] < FULL_LIMIT
    elif "JPEG" in name:  # decoded at 1/4 scale to begin with
        assert small["peak"] < DRAFT_LIMIT
    else:  # a PNG is decoded at full size, then converted strip by strip at 1/3
        assert small["peak"] < SIDE_LIMIT
        if "one-colour" not in name:  # (that one is its own result at full size: no copy)
            assert small["peak"] < full["peak"]


@pytest.mark.slow
def test_a_small_decode_is_not_stuck_behind_a_large_one(
    bomb_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warnings lock covers open() and the EXIF parse only: while one visitor's 40 MP bomb
    decodes, another's small upload goes through."""
    big = bomb_files["16-bit gray PNG"].read_bytes()
    small = _save(Image.new("RGB", (64, 48), (1, 2, 3)), "PNG")
    start = time.perf_counter()
    load_image(big)
    alone = time.perf_counter() - start

    decoding = threading.Event()  # set once the large image's pixels are being decoded
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # noqa: ANN202
        if self.size == (SIDE, SIDE):
            decoding.set()
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    finished: dict[str, float] = {}

    def decode_big() -> None:
        load_image(big)
        finished["big"] = time.perf_counter()

    worker = threading.Thread(target=decode_big)
    worker.start()
    assert decoding.wait(timeout=60)
    begun = time.perf_counter()
    assert load_image(small).getpixel((0, 0)) == (1, 2, 3)
    finished["small"] = time.perf_counter()
    worker.join()
    assert finished["small"] < finished["big"]
    assert finished["small"] - begun < alone / 4, (finished["small"] - begun, alone)


def _cmyk_progressive_declaring(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", progressive=True))
    sof = data.index(b"\xff\xc2")
    data[sof + 5 : sof + 9] = (height).to_bytes(2, "big") + (width).to_bytes(2, "big")
    return bytes(data)


def test_decoders_that_need_more_memory_get_a_lower_limit() -> None:
    """Progressive JPEGs buffer all DCT coefficients (8 bytes a pixel for CMYK) and WebP holds
    about 16 bytes a pixel: refused from the header, before any of that is allocated."""
    with pytest.raises(ImageError) as exc:
        load_image(_cmyk_progressive_declaring(SIDE, SIDE))
    assert str(exc.value) == ("progressive JPEG is 6324x6324 pixels, over the 24.4 MP limit "
                              "for progressive JPEGs")
    with pytest.raises(ImageError) as exc:  # a smaller copy is cheaper, but not enough
        load_image(_cmyk_progressive_declaring(SIDE, SIDE), max_side=1024)
    assert "over the 35.5 MP limit for progressive JPEGs" in str(exc.value)
    # a 4:2:0 progressive colour JPEG needs 3 bytes a pixel: 40 MP pass
    ok = _save(Image.new("RGB", (40, 30), (30, 120, 220)), "JPEG", progressive=True)
    assert load_image(ok).size == (40, 30)

    webp = _save(Image.new("RGB", (4001, 4000), (1, 2, 3)), "WEBP", lossless=True)
    assert MAX_WEBP_PIXELS < 4001 * 4000
    with pytest.raises(ImageError) as exc:
        load_image(webp)
    assert str(exc.value) == "WebP image is 4001x4000 pixels, over the 16 MP limit for WebP"


def _sof(marker: int, components: int) -> bytes:
    body = bytes([8, 0, 16, 0, 16, components]) + bytes(3 * components)
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _sos(components: int) -> bytes:
    body = bytes([components]) + bytes(2 * components) + bytes(3)
    return b"\xff\xda" + (len(body) + 2).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    ("data", "streams"),
    [
        (b"\xff\xd8" + _sof(0xC0, 3) + _sos(3), True),  # baseline, interleaved
        (b"\xff\xd8\xff\xff" + _sof(0xC1, 1) + _sos(1), True),  # gray, after a fill byte
        (b"\xff\xd8" + _sof(0xC0, 3) + _sos(1), False),  # one scan per component
        (b"\xff\xd8" + _sof(0xC2, 3) + _sos(3), False),  # progressive
        (b"\xff\xd8" + _sof(0xC0, 4) + b"\xff\xfe\x00\x04hi" + _sos(4), True),  # a comment
        (b"\xff\xd8" + _sof(0xC0, 3), False),  # no scan
        (b"\xff\xd8\x00\x00" + _sof(0xC0, 3) + _sos(3), False),  # not a marker
        (b"\xff\xd8" + _sos(3), False),  # scan before frame
    ],
)
def test_which_jpegs_libjpeg_streams(data: bytes, streams: bool) -> None:
    assert images._jpeg_streams(data) is streams


def test_real_jpegs_are_classified_as_pillow_sees_them() -> None:
    rgb = Image.new("RGB", (32, 32), (1, 2, 3))
    assert images._jpeg_streams(_save(rgb, "JPEG", exif=_exif(6)))
    assert images._jpeg_streams(_save(rgb.convert("CMYK"), "JPEG"))
    assert not images._jpeg_streams(_save(rgb, "JPEG", progressive=True))


# ---- max_side -----------------------------------------------------------------------------

def _pattern(scale: int) -> np.ndarray:
    """3 wide, 2 high blocks of ``scale`` pixels, every block distinct (see test_images)."""
    arr = np.zeros((2, 3, 3), np.uint8)
    for y in range(2):
        for x in range(3):
            arr[y, x] = (40 * x + 20, 100 * y + 50, 60 + 30 * x + 90 * y)
    return arr.repeat(scale, axis=0).repeat(scale, axis=1)


# How each orientation stores an upright picture (as in test_images.STORED)
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, -1),
}


def _block_centres(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image).astype(int)
    h, w = arr.shape[:2]
    return np.array([[arr[(2 * y + 1) * h // 4, (2 * x + 1) * w // 6] for x in range(3)]
                     for y in range(2)])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", list(STORED))
def test_max_side_keeps_aspect_and_orientation(orientation: int, fmt: str) -> None:
    upright = _pattern(200)  # 600 x 400: a JPEG drafts at 1/2, a PNG box-reduces by 2
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    data = _save(stored, fmt, exif=_exif(orientation), **({"quality": 95} if fmt == "JPEG" else {}))
    loaded = load_image(data, max_side=150)
    assert loaded.mode == "RGB" and loaded.size == (150, 100)
    assert np.abs(_block_centres(loaded) - _pattern(1).astype(int)).max() <= 8


def test_max_side_never_enlarges_and_is_checked() -> None:
    data = _save(Image.new("RGB", (30, 20), (5, 6, 7)), "PNG")
    assert load_image(data, max_side=1024).size == (30, 20)
    assert load_image(data, max_side=30).size == (30, 20)
    assert load_image(data, max_side=15).size == (15, 10)
    assert load_image(data, max_side=1).size == (1, 1)  # 100:1 at most, never a 0 side
    for bad, error in [(0, ValueError), (-5, ValueError), (True, TypeError), (2.5, TypeError)]:
        with pytest.raises(error):
            load_image(data, max_side=bad)  # type: ignore[arg-type]


# ---- the strip machinery: the same pixels as whole-image conversion -----------------------

def _reference_rgb(im: Image.Image) -> Image.Image:
    """The loader's conversion before it worked in strips, on the whole image in float64."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
            bottom, top = 0.0, 65535.0
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            bottom, top = 0.0, 1.0
        else:
            bottom, top = lo, hi
        scale = 255.0 / max(top - bottom, 1e-12)
        eight = np.clip(np.round((arr - bottom) * scale), 0, 255).astype(np.uint8)
        key = im.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):
            eight[arr == key] = 255
        return Image.fromarray(eight).convert("RGB")
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _odd_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    shape = (37, 29)
    u8 = rng.integers(0, 256, (*shape, 4), np.uint8)
    wide = rng.integers(0, 65536, shape).astype(np.uint16)
    wide[::5, ::3] = 1234
    out = {
        "RGBA": Image.fromarray(u8),
        "RGBa": Image.fromarray(u8).convert("RGBa"),
        "LA": Image.merge("LA", [Image.fromarray(u8[..., 0].copy()),
                                 Image.fromarray(u8[..., 3].copy())]),
        "RGB": Image.fromarray(u8[..., :3].copy()),
        "L": Image.fromarray(u8[..., 0].copy()),
        "1": Image.fromarray(u8[..., 0].copy()).convert("1"),
        "CMYK": Image.fromarray(u8).convert("CMYK"),
        "I;16": Image.fromarray(wide),
        "I;16 keyed": Image.fromarray(wide),
        "I 16-bit": Image.fromarray(wide.astype(np.int32)),
        "I stretched": Image.fromarray(wide.astype(np.int32) - 40000),
        "F unit": Image.fromarray(wide.astype(np.float32) / 65535),
        "F stretched": Image.fromarray(wide.astype(np.float32) / 100 - 300),
    }
    out["I;16 keyed"].info["transparency"] = 1234
    pal = Image.fromarray(u8[..., :3].copy()).quantize(50)
    out["P"] = pal
    for name, key in [("P keyed", 3), ("P alpha bytes", bytes(range(0, 250, 5)))]:
        out[name] = pal.copy()
        out[name].info["transparency"] = key
    for mode, key in [("L keyed", 77), ("RGB keyed", tuple(u8[3, 4, :3].tolist()))]:
        out[mode] = out[mode.split()[0]].copy()
        out[mode].info["transparency"] = key
    out["PA"] = pal.convert("PA")
    return out


@pytest.mark.parametrize("name", list(_odd_images()))
@pytest.mark.parametrize("strip_pixels", [1, 100, 1 << 18])
def test_strips_give_the_same_pixels_as_whole_image_conversion(
    name: str, strip_pixels: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    im = _odd_images()[name]
    expected = np.asarray(_reference_rgb(im.copy()))
    monkeypatch.setattr(images, "_STRIP_PIXELS", strip_pixels)
    for method in [None, *images._TRANSPOSE.values()]:
        got = np.asarray(images._to_rgb(im.copy(), method))
        upright = expected if method is None else np.asarray(
            Image.fromarray(expected).transpose(method))
        np.testing.assert_array_equal(got, upright, err_msg=f"{name}, {method}")


@pytest.mark.parametrize("strip_pixels", [1, 50, 1 << 18])
@pytest.mark.parametrize("factor", [2, 3, 5])
def test_reduced_strips_match_a_whole_image_reduce(
    strip_pixels: int, factor: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rgb = Image.fromarray(np.random.default_rng(factor).integers(0, 256, (53, 41, 3), np.uint8))
    monkeypatch.setattr(images, "_STRIP_PIXELS", strip_pixels)
    for method in [None, *images._TRANSPOSE.values()]:
        expected = rgb.reduce(factor)
        if method is not None:
            expected = expected.transpose(method)
        got = images._to_rgb(rgb, method, factor)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=str(method))


def test_plain_rgb_is_returned_without_a_copy() -> None:
    data = _save(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    image = load_image(data)
    assert type(image) is Image.Image and image.getpixel((7, 7)) == (1, 2, 3)
    source = Image.open(io.BytesIO(data))
    source.load()
    assert images._to_rgb(source).im is source.im  # the same pixels in memory


# ---- the lock -----------------------------------------------------------------------------

LOCK_CASES = {
    "PNG": lambda: _save(Image.new("RGBA", (64, 48), (1, 2, 3, 4)), "PNG", exif=_exif(6)),
    "JPEG drafted": lambda: _save(Image.new("RGB", (640, 480), (1, 2, 3)), "JPEG"),
    "MPO": lambda: _save(Image.new("RGB", (64, 48)), "MPO", save_all=True,
                         append_images=[Image.new("RGB", (64, 48))]),
    "GIF animated": lambda: _save(Image.new("P", (64, 48)), "GIF", save_all=True,
                                  append_images=[Image.new("P", (64, 48), 1)]),
    "WEBP": lambda: _save(Image.new("RGBA", (64, 48)), "WEBP", lossless=True),
    "BMP": lambda: _save(Image.new("L", (64, 48)), "BMP"),
}


@pytest.mark.parametrize("name", list(LOCK_CASES))
def test_every_pillow_bomb_check_of_the_file_runs_under_the_lock(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow's bomb checks (which warn) run inside Image.open for the allowed formats: the
    lock and its warnings filter can stay off the pixel decode. Checks outside the lock are
    only our own strip crops, smaller than what was checked inside it."""
    calls: list[tuple[bool, int]] = []
    check = Image._decompression_bomb_check

    def spy(size: tuple[int, int], **kwargs) -> None:
        calls.append((images._WARNINGS_LOCK.locked(), size[0] * size[1]))
        check(size, **kwargs)

    monkeypatch.setattr(Image, "_decompression_bomb_check", spy)
    load_image(LOCK_CASES[name](), max_side=200 if "drafted" in name else None)
    locked = [pixels for held, pixels in calls if held]
    assert locked and max(locked) == (640 * 480 if name == "JPEG drafted" else 64 * 48)
    assert all(pixels <= max(locked) for held, pixels in calls if not held), calls

