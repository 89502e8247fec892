"""The image loader: every bad input of the robustness list gives one clear ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from simam_viz.errors import ImageError
from simam_viz.images import load_image


def _png(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny real PNG whose IHDR declares huge dimensions (CRC fixed up)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _jpeg_half() -> bytes:
    rng = np.random.default_rng(0)
    data = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    return data[: len(data) // 2]


BAD = {
    "empty": (b"", "empty"),
    "random bytes": (bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8)),
                     "unsupported"),
    "truncated jpeg": (_jpeg_half(), "truncated or corrupt"),
    "bomb": (_bomb(), "too large"),
    "huge but under pillow's limit": (_bomb(8000, 8000), "over the"),
    "pdf renamed": (_save(Image.new("RGB", (8, 8)), "PDF"), "unsupported"),
    "tiff renamed": (_save(Image.new("RGB", (8, 8)), "TIFF"), "unsupported"),
    "eps renamed": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "unsupported"),
    "psd renamed": (b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03\x00\x00\x00\x08\x00\x00\x00\x08"
                    b"\x00\x08\x00\x03" + b"\x00" * 64, "unsupported"),
    "over byte cap": (b"\x89PNG" + b"\x00" * (11 * 2**20), "limit"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gives_one_line(name: str) -> None:
    data, expected = BAD[name]
    with pytest.raises(ImageError) as exc:
        load_image(data)
    message = str(exc.value)
    assert expected in message and "\n" not in message and len(message) < 120


def test_missing_path_and_file_like(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such image"):
        load_image(tmp_path / "nope.png")
    path = tmp_path / "ok.png"
    path.write_bytes(_png(Image.new("RGB", (5, 4), (1, 2, 3))))
    assert load_image(path).size == (5, 4)
    with path.open("rb") as fh:
        assert load_image(fh).getpixel((0, 0)) == (1, 2, 3)


def _upright() -> Image.Image:
    arr = np.zeros((2, 3, 3), np.uint8)  # 3 wide, 2 high, every pixel distinct
    for y in range(2):
        for x in range(3):
            arr[y, x] = (40 * x, 100 * y, 10 + x + 3 * y)
    return Image.fromarray(arr)


# stored pixels for each orientation: the inverse of what the viewer applies
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_upright_image(orientation: int) -> None:
    upright = _upright()
    method = _STORE[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = load_image(_png(stored, exif=exif.tobytes()))
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(upright))


def test_16_bit_gray_uses_full_range() -> None:
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256).repeat(4, axis=0)
    loaded = np.asarray(load_image(_png(Image.fromarray(ramp))))
    assert loaded.shape == (4, 256, 3)
    np.testing.assert_allclose(loaded[0, :, 0], np.round(ramp[0] / 65535 * 255), atol=1)
    assert loaded.min() == 0 and loaded.max() == 255


def test_cmyk_palette_alpha_animated() -> None:
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    r, g, b = load_image(_save(cyan, "JPEG", quality=95)).getpixel((4, 4))
    assert r < 20 and g > 235 and b > 235

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    loaded = load_image(_png(pal, transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert loaded.getpixel((1, 1)) == (200, 0, 0)

    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert load_image(_png(rgba)).getpixel((0, 0)) == (127, 127, 127)

    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert load_image(buf.getvalue()).getpixel((3, 3)) == (255, 0, 0)
    webp = io.BytesIO()
    frames[1].save(webp, "WEBP", save_all=True, append_images=frames[:1], lossless=True)
    assert load_image(webp.getvalue()).getpixel((3, 3)) == (0, 0, 255)
    gray = load_image(_save(Image.new("L", (3, 3), 77), "BMP"))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)
