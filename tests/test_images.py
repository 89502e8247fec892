"""The image loader: every hostile input of the robustness list gives one clear ImageError, and
every odd-but-valid image loads with the pixel values a browser would show.

All fixtures are built here with Pillow/numpy, so nothing binary is committed.
"""

from __future__ import annotations

import io
import random
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line
from PIL import Image, ImageFile, features

from simam_viz.errors import ImageError
from simam_viz.images import (
    ALLOWED_FORMATS,
    MAX_BYTES,
    MAX_PIXELS,
    _to_rgb,
    image_sha256,
    load_image,
)


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so it parses)."""
    data = bytearray(_save(Image.new("P", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def _gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen size
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_save(_noise(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _psd() -> bytes:
    """A minimal valid 8x8 RGB Photoshop file (Pillow cannot write PSD)."""
    header = b"8BPS" + struct.pack(">H", 1) + b"\x00" * 6 + struct.pack(">HIIHH", 3, 8, 8, 8, 3)
    sections = struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0)  # empty blocks, raw data
    return header + sections + b"\x00" * (8 * 8 * 3)


def _fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8",
             "NAXIS   =                    2", "NAXIS1  =                    8",
             "NAXIS2  =                    8", "END"]
    return "".join(c.ljust(80) for c in cards).encode().ljust(2880) + bytes(2880)


def _one_line(exc: pytest.ExceptionInfo[ImageError]) -> str:
    """The message, checked to be what a user can be shown as-is."""
    assert type(exc.value) is ImageError
    return one_line(exc, limit=100)


# ---- hostile input ----------------------------------------------------------------------

_RGB8 = Image.new("RGB", (8, 8), (10, 20, 30))
# Other formats Pillow would happily decode: each is renamed x.png and must be refused.
FOREIGN = {
    "PSD": _psd,
    "EPS": lambda: _save(_RGB8, "EPS"),
    "PDF": lambda: _save(_RGB8, "PDF"),
    "TIFF": lambda: _save(_RGB8, "TIFF"),
    "JPEG2000": lambda: _save(_RGB8, "JPEG2000"),
    "FITS": _fits,
    "ICO": lambda: _save(_RGB8, "ICO"),
    "TGA": lambda: _save(_RGB8, "TGA"),
    "QOI": lambda: _save(_RGB8, "QOI"),
    "DDS": lambda: _save(_RGB8, "DDS"),
    "PPM": lambda: _save(_RGB8, "PPM"),
}


@pytest.mark.parametrize("fmt", list(FOREIGN))
def test_other_formats_renamed_png_are_refused(fmt: str, tmp_path: Path) -> None:
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("this Pillow has no OpenJPEG to build the fixture")
    data = FOREIGN[fmt]()
    if fmt != "PDF":  # Pillow only writes PDF; every other one really is decodable
        assert Image.open(io.BytesIO(data)).format == fmt
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as exc:
        load_image(path)
    message = _one_line(exc)
    assert "unsupported image format" in message and "PNG" in message


BAD = {
    "0 bytes": (lambda: b"", "empty file"),
    "random bytes": (lambda: random.Random(1).randbytes(4096), "unsupported image format"),
    "text": (lambda: b"<html>not an image</html>", "unsupported image format"),
    "half a jpeg": (lambda: (d := _save(_noise(), "JPEG"))[: len(d) // 2],
                    "truncated or corrupt"),
    "half a png": (lambda: (d := _save(_noise(), "PNG"))[: len(d) // 2], "truncated or corrupt"),
    "png signature only": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                           "PNG image is truncated or corrupt"),
    "jpeg markers only": (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 16,
                          "JPEG image is truncated or corrupt"),
    "png 20000x20000": (lambda: _png_declaring(20000, 20000), "too large"),
    "png 10000x10000 (pillow only warns)": (lambda: _png_declaring(10000, 10000), "too large"),
    "png 8000x8000 (under pillow's limit)": (lambda: _png_declaring(8000, 8000),
                                             "8000x8000 pixels, over the 40 MP limit"),
    "png 1x50000000": (lambda: _png_declaring(1, 50_000_000), "over the 40 MP limit"),
    "png 40000x1 (tiny, but huge once resized)": (lambda: _png_declaring(40000, 1),
                                                  "40000x1 pixels, over the 100:1 aspect"),
    "gif 65535x65535": (lambda: _gif_declaring(65535, 65535), "too large"),
    "jpeg 65535x65535": (lambda: _jpeg_declaring(65535, 65535), "too large"),
    "over the byte cap": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES), "over the 10 MB limit"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gives_one_clear_image_error(name: str) -> None:
    make, expected = BAD[name]
    with pytest.raises(ImageError) as exc:
        load_image(make())
    assert expected in _one_line(exc)


def test_bomb_fixture_is_small_and_the_pixel_cap_applies_before_decoding() -> None:
    bomb = _png_declaring(20000, 20000)
    assert len(bomb) < 20_000  # a few bytes claiming 400 MP (1.2 GB as RGB)
    # a real image over a caller's lower cap: refused by size, not by a failed decode
    with pytest.raises(ImageError) as exc:
        load_image(_save(_noise(300, 200), "PNG"), max_pixels=50_000)
    assert "300x200 pixels, over the 0.05 MP limit" in _one_line(exc)
    assert load_image(_save(_noise(300, 200), "PNG"), max_pixels=60_000).size == (300, 200)
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # ours triggers before Pillow's warning


def test_byte_cap_holds_for_paths_and_streams_without_reading_everything(
    tmp_path: Path,
) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as fh:  # sparse: 1 GB on paper, nothing on disk
        fh.truncate(2**30)
    with pytest.raises(ImageError) as exc:
        load_image(big)
    assert _one_line(exc) == "big.png: image file is over the 10 MB limit"

    class CountingStream(io.RawIOBase):
        """An endless stream that records how much was asked of it."""

        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[override]
            n = min(len(buffer), 4096)  # short reads, like a socket
            buffer[:n] = b"\x00" * n
            self.served += n
            return n

    stream = CountingStream()
    with pytest.raises(ImageError) as exc:
        load_image(stream, max_bytes=100 * 2**10)
    assert "over the 100 KB limit" in _one_line(exc)
    assert stream.served <= 100 * 2**10 + 4096


def test_paths_that_are_not_image_files(tmp_path: Path) -> None:
    for path, expected in [(tmp_path / "nope.png", "nope.png: no such image file"),
                           (tmp_path, "no such image file")]:
        with pytest.raises(ImageError) as exc:
            load_image(path)
        assert expected in _one_line(exc)
    with pytest.raises(ImageError):
        load_image("bad\x00name.png")  # a NUL in a path is a ValueError inside os.stat


def test_wrong_argument_types_are_caller_bugs() -> None:
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load_image(io.StringIO("text"))  # type: ignore[arg-type]


def _mutations(seed_data: bytes, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(seed_data)
        for _ in range(rng.choice([1, 2, 4, 16])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.25:
            data = data[: rng.randrange(len(data))]
        out.append(bytes(data))
    return out


def _exif(orientation: int, maker: str = "a camera maker name") -> bytes:
    exif = Image.Exif()
    exif[0x010F] = maker
    exif[0x0112] = orientation
    return exif.tobytes()


FUZZ_SEEDS = {
    "JPEG": lambda: _save(_noise(), "JPEG", exif=_exif(6)),
    "PNG": lambda: _save(_noise(), "PNG", exif=_exif(6)),
    "PNG 16-bit": lambda: _save(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8)
                                                * 1000), "PNG"),
    "WEBP": lambda: _save(_noise(), "WEBP", exif=_exif(6)),
    "BMP": lambda: _save(_noise(), "BMP"),
    "GIF": lambda: _save(_noise().convert("P"), "GIF", save_all=True,
                         append_images=[_noise(seed=1).convert("P")]),
}


@pytest.mark.parametrize("fmt", list(FUZZ_SEEDS))
def test_mutated_files_never_escape_as_another_exception(fmt: str) -> None:
    """Bit flips and cuts in every allowed format: an RGB image or an ImageError, nothing else,
    even in a process that turns warnings into errors (Pillow warns about corrupt EXIF)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in _mutations(FUZZ_SEEDS[fmt](), 150, seed=len(fmt)):
            try:
                image = load_image(data)
            except ImageError as exc:
                assert "\n" not in str(exc)
            else:
                assert image.mode == "RGB" and image.size[0] * image.size[1] <= MAX_PIXELS


def test_no_process_wide_state_changes_even_under_threads() -> None:
    filters_before = list(warnings.filters)
    limit, truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    inputs = [_save(_noise(), "PNG"), _png_declaring(10000, 10000),
              _png_declaring(20000, 20000), b"junk",
              _save(Image.new("LA", (300, 200), (10, 128)), "PNG", exif=_exif(6))]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        for i in range(100):
            try:
                load_image(inputs[(i + offset) % len(inputs)], max_side=(None, 64)[i % 2])
            except ImageError:
                pass
            except BaseException as exc:  # collected: an assert in a thread would be lost
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert list(warnings.filters) == filters_before
    assert (limit, truncated) == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


# ---- odd but valid input ----------------------------------------------------------------

def _upright() -> np.ndarray:
    """3 wide, 2 high, every pixel distinct: any flip or rotation changes it."""
    arr = np.zeros((2, 3, 3), np.uint8)
    for y in range(2):
        for x in range(3):
            arr[y, x] = (40 * x, 100 * y, 10 + x + 3 * y)
    return arr


# How each orientation stores an upright picture, written from the EXIF definition (where the
# stored row 0 / column 0 are shown) in numpy, not with Pillow's own transpose table.
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # row 0 top, column 0 right
    3: lambda a: a[::-1, ::-1],  # row 0 bottom, column 0 right
    4: lambda a: a[::-1],  # row 0 bottom, column 0 left
    5: lambda a: a.swapaxes(0, 1),  # row 0 left, column 0 top
    6: lambda a: np.rot90(a, 1),  # row 0 right, column 0 top (phone held upright)
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # row 0 right, column 0 bottom
    8: lambda a: np.rot90(a, -1),  # row 0 left, column 0 bottom
}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", list(STORED))
def test_exif_orientation_gives_the_upright_image(orientation: int, fmt: str) -> None:
    upright = _upright()
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    extra = {"lossless": True} if fmt == "WEBP" else {}
    loaded = load_image(_save(stored, fmt, exif=_exif(orientation), **extra))
    np.testing.assert_array_equal(np.asarray(loaded), upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_a_jpeg(orientation: int) -> None:
    """Lossy, so compare the centres of flat 16-pixel blocks of the same 3x2 pattern."""
    upright = _upright().repeat(16, axis=0).repeat(16, axis=1)
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    loaded = np.asarray(load_image(_save(stored, "JPEG", quality=95, exif=_exif(orientation))))
    assert loaded.shape == upright.shape
    centres = loaded[8::16, 8::16].astype(int)
    assert np.abs(centres - _upright().astype(int)).max() <= 8


def test_corrupt_exif_still_loads_without_warnings() -> None:
    broken = _exif(6, maker="x" * 40)[:-30]  # the maker string points past the end
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        image = load_image(_save(Image.new("RGB", (4, 2), (9, 9, 9)), "PNG", exif=broken))
    assert image.getpixel((0, 0)) == (9, 9, 9) and not seen


def test_16_bit_gray_uses_the_full_range() -> None:
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256).repeat(4, axis=0)
    data = _save(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    loaded = np.asarray(load_image(data))
    assert loaded.shape == (4, 256, 3)
    expected = np.round(ramp[0] / 65535 * 255)
    np.testing.assert_allclose(loaded[0, :, 0], expected, atol=1)  # not clipped to white
    assert loaded.min() == 0 and loaded.max() == 255 and 120 < loaded.mean() < 135
    assert (loaded[..., 0] == loaded[..., 2]).all()


def test_16_bit_gray_with_a_transparent_value() -> None:
    arr = np.full((2, 2), 1000, np.uint16)
    arr[0, 0] = 30000
    loaded = load_image(_save(Image.fromarray(arr), "PNG", transparency=1000))
    assert loaded.getpixel((0, 0)) == (117, 117, 117)  # 30000 / 65535 * 255
    assert loaded.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", [[0, 65535]], [0, 255]),  # 16-bit data read as 32-bit (older Pillow)
        ("I", [[-10, 10]], [0, 255]),  # no fixed range: stretched
        ("F", [[0.0, 0.5]], [0, 128]),  # floats in [0, 1]
        ("F", [[-3.0, 5.0]], [0, 255]),
    ],
)
def test_wide_modes_are_scaled_not_clipped(mode: str, values: list, expected: list) -> None:
    dtype = np.int32 if mode == "I" else np.float32
    image = _to_rgb(Image.fromarray(np.array(values, dtype), mode=mode))
    assert [image.getpixel((x, 0))[0] for x in range(2)] == expected


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 0, 0), (255, 0, 255)),
        ((0, 0, 255, 0), (255, 255, 0)),
        ((0, 0, 0, 255), (0, 0, 0)),
        ((0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_cmyk_jpeg_pure_colours(cmyk: tuple, rgb: tuple) -> None:
    data = _save(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    got = load_image(data).getpixel((8, 8))
    assert max(abs(a - b) for a, b in zip(got, rgb, strict=True)) <= 6, got


def _palette_with_transparency() -> Image.Image:
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)  # entry 0 would show as near-black
    pal.putpixel((1, 1), 1)
    return pal


@pytest.mark.parametrize(
    ("data", "transparent_xy", "opaque_xy", "opaque"),
    [
        (lambda: _save(_palette_with_transparency(), "PNG", transparency=0),
         (0, 0), (1, 1), (200, 0, 0)),
        (lambda: _save(_palette_with_transparency(), "GIF", transparency=0),
         (0, 0), (1, 1), (200, 0, 0)),
        (lambda: _save(Image.new("L", (2, 2), 5), "PNG", transparency=5), (0, 0), None, None),
        (lambda: _save(Image.new("RGB", (2, 2), (1, 2, 3)), "PNG", transparency=(1, 2, 3)),
         (0, 0), None, None),
        (lambda: _save(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "PNG"), (0, 0), None, None),
        (lambda: _save(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "WEBP", lossless=True),
         (0, 0), None, None),
        (lambda: _save(Image.new("LA", (2, 2), (0, 0)), "PNG"), (0, 0), None, None),
    ],
    ids=["png palette", "gif palette", "png gray key", "png rgb key", "png rgba", "webp rgba",
         "png la"],
)
def test_transparent_pixels_become_white(data, transparent_xy, opaque_xy, opaque) -> None:
    loaded = load_image(data())
    assert loaded.mode == "RGB"
    assert loaded.getpixel(transparent_xy) == (255, 255, 255)
    if opaque_xy is not None:
        assert loaded.getpixel(opaque_xy) == opaque


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
        ("LA", (0, 128), (127, 127, 127)),
    ],
)
def test_half_alpha_is_composited_on_white(mode: str, colour: tuple, expected: tuple) -> None:
    assert load_image(_save(Image.new(mode, (2, 2), colour), "PNG")).getpixel((1, 1)) == expected


_RED, _BLUE = Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [("GIF", {"duration": 50, "loop": 0}), ("WEBP", {"lossless": True}), ("PNG", {}),
     ("MPO", {})],
)
def test_animations_give_frame_zero(fmt: str, extra: dict) -> None:
    data = _save(_RED, fmt, save_all=True, append_images=[_BLUE], **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    got = load_image(data).getpixel((3, 3))
    assert max(abs(a - b) for a, b in zip(got, (255, 0, 0), strict=True)) <= 2, got


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("L", (3, 3), 77), "BMP", (77, 77, 77)),
        (Image.new("1", (3, 3), 1), "PNG", (255, 255, 255)),
        (Image.new("1", (3, 3), 0), "BMP", (0, 0, 0)),
        (Image.new("RGB", (3, 3), (1, 2, 3)).quantize(4), "GIF", (1, 2, 3)),
        (Image.new("RGB", (3, 3), (1, 2, 3)).quantize(4), "BMP", (1, 2, 3)),
        (Image.new("RGBA", (3, 3), (1, 2, 3, 255)), "BMP", (1, 2, 3)),
        (Image.new("RGB", (3, 3), (1, 2, 3)), "WEBP", None),
    ],
)
def test_plain_modes_become_rgb(image: Image.Image, fmt: str, expected: tuple | None) -> None:
    extra = {"lossless": True} if fmt == "WEBP" else {}
    loaded = load_image(_save(image, fmt, **extra))
    assert loaded.mode == "RGB" and loaded.size == (3, 3)
    assert loaded.getpixel((1, 1)) == (expected or (1, 2, 3))


def test_every_kind_of_source_gives_the_same_image(tmp_path: Path) -> None:
    data = _save(_noise(5, 4), "PNG")
    path = tmp_path / "ok.png"
    path.write_bytes(data)
    expected = np.asarray(_noise(5, 4))
    with path.open("rb") as fh:
        sources = [data, bytearray(data), memoryview(data), path, str(path), fh]
        for source in sources:
            np.testing.assert_array_equal(np.asarray(load_image(source)), expected)
    assert load_image(io.BytesIO(data)).size == (5, 4)
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def test_image_sha256_is_of_the_raw_bytes() -> None:
    assert image_sha256(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert image_sha256(b"a") != image_sha256(b"b")
