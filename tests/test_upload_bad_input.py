"""Every bad input of ../shared/reference/robustness.md through the real upload path.

Each file is made here (nothing binary is committed), uploaded through the browser into a
running `streamlit run`, and must give either the intended result (the analysed image the
browser receives matches an independent expectation) or one short message in the page, never
a traceback; the same session keeps working, and the server's memory does not jump.
`tests/test_images.py` checks the same files against the loader directly; this test checks
that the app's upload path really goes through it.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from apphost import (
    CHROMIUM,
    CHROMIUM_ARGS,
    alerts,
    idle,
    input_pixels,
    open_session,
    png_bytes,
    rss_mb,
    serve,
    start_app,
    stop_app,
    upload,
)
from PIL import Image, ImageOps
from test_browser import tiny_demo_set

from simam_viz.preprocess import Preprocessing

playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")
SRCS = "Array.from(document.querySelectorAll(\"[data-testid='stImage'] img\")).map(i => i.src)"
# Memory the refused files may add to the server: nothing of theirs is kept, so only allocator
# noise (measured: under 10 MB); a decoded bomb alone would be 1.2 GB (20000 x 20000 x 3).
# Good uploads are left out of this bound: their results are cached on purpose (24 entries at
# most, ~20 MB each for the three demo models at all 16 blocks).
RSS_GROWTH_MB = 100


# ---- files -------------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _pattern(w: int = 120, h: int = 80) -> Image.Image:
    """Asymmetric: red left, blue right, a green band on top, so any rotation or flip shows."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 30, 30)
    arr[:, w // 2 :] = (30, 30, 220)
    arr[: h // 4] = (30, 200, 30)
    return Image.fromarray(arr)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb() -> bytes:
    """A ~20 KB PNG that declares 20000 x 20000 pixels (1.2 GB once decoded)."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 20000 * 3
    body = zlib.compress(row * 7, 9)  # a few rows are enough: the size is in the header
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def _psd() -> bytes:
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3) + b"\x00" * 16
            + b"\x00" * 64 * 64 * 3)


def _eps() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
            b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def _pdf() -> bytes:
    return _encode(Image.new("RGB", (64, 64), "red"), "PDF")


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (96, 96), c) for c in ((200, 40, 40), (40, 40, 200), (40, 200, 40))]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_pattern(), "JPEG", quality=95, exif=exif)


def _sixteen_bit() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 128), (96, 1)).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


def _cmyk() -> bytes:
    return _encode(_pattern().convert("CMYK"), "JPEG", quality=95)


def _palette_transparent() -> bytes:
    """A palette PNG whose left half is transparent (index 0) and right half opaque blue."""
    im = Image.new("P", (120, 80), 0)
    im.putpalette([0, 0, 0, 30, 30, 220] + [0] * 762)
    im.paste(1, (60, 0, 120, 80))
    return _encode(im, "PNG", transparency=0)


# ---- expectations ------------------------------------------------------------------------------


def _seen(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """What the models see of an image: the checkpoint's resize + centre crop."""
    return np.asarray(prep.crop_image(image.convert("RGB")), dtype=np.float64)


def _expect_close(expected: Image.Image,
                  tolerance: float) -> Callable[[np.ndarray, Preprocessing], None]:
    def check(pixels: np.ndarray, prep: Preprocessing) -> None:
        want = _seen(expected, prep)
        assert pixels.shape == want.shape
        assert np.abs(pixels - want).mean() < tolerance
    return check


def _expect_white_left_blue_right(pixels: np.ndarray, prep: Preprocessing) -> None:
    h, w, _ = pixels.shape
    assert pixels[h // 2, : w // 4].mean(axis=0).min() > 240  # transparent -> white, not black
    assert np.allclose(pixels[h // 2, -w // 4 :].mean(axis=0), (30, 30, 220), atol=12)


def _expect_gray_ramp(pixels: np.ndarray, prep: Preprocessing) -> None:
    row = pixels[pixels.shape[0] // 2].mean(axis=1)
    assert row[0] < 40 and row[-1] > 215  # a full ramp, not the near-white of a clipped convert
    assert np.all(np.diff(row) >= -3)  # increasing left to right


CASES: list[tuple[str, str, Callable[[], bytes], object]] = [
    # (id, file name, bytes, expected: a message fragment or a pixel check)
    ("bomb", "bomb.png", _bomb, "at most 40 MP"),  # Pillow's own bomb check fires first
    ("truncated-jpeg", "half.jpg",
     lambda: _encode(_pattern(400, 300), "JPEG")[: len(_encode(_pattern(400, 300), "JPEG")) // 2],
     "truncated or corrupt"),
    ("psd-as-png", "x.png", _psd, "unsupported image format"),
    ("eps-as-png", "x.png", _eps, "unsupported image format"),
    ("pdf-as-png", "x.png", _pdf, "unsupported image format"),
    ("zero-bytes", "empty.png", lambda: b"", "empty file"),
    ("random-bytes", "noise.png",
     lambda: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
     "unsupported image format"),
    ("over-pixel-cap", "huge.png", lambda: _encode(Image.new("L", (9000, 5000)), "PNG"),
     "over the 40 MP limit"),  # under Pillow's bomb limit: the app's own cap
    ("very-wide", "wide.png", lambda: _encode(_pattern(4000, 90), "PNG"),
     _expect_close(_pattern(4000, 90), 2.0)),
    ("16-bit", "ramp16.png", _sixteen_bit, _expect_gray_ramp),
    ("cmyk", "cmyk.jpg", _cmyk, _expect_close(_pattern().convert("CMYK").convert("RGB"), 8.0)),
    ("palette-transparency", "pal.png", _palette_transparent, _expect_white_left_blue_right),
    ("animated-gif", "anim.gif", lambda: _animated("GIF"),
     _expect_close(Image.new("RGB", (96, 96), (200, 40, 40)), 6.0)),
    ("animated-webp", "anim.webp", lambda: _animated("WEBP"),
     _expect_close(Image.new("RGB", (96, 96), (200, 40, 40)), 8.0)),
] + [
    (f"exif-{o}", f"exif{o}.jpg", (lambda o=o: _exif_jpeg(o)),
     _expect_close(ImageOps.exif_transpose(Image.open(io.BytesIO(_exif_jpeg(o)))), 6.0))
    for o in range(1, 9)
]


# ---- the run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, server pid or None): a fresh server, or the one `$SIMAM_VIZ_URL` names."""
    ckpt = tiny_demo_set(tmp_path_factory.mktemp("bad_input_ckpt"))
    if os.environ.get("SIMAM_VIZ_URL"):
        with serve() as url:
            yield url, None
        return
    url, proc = start_app(ckpt)
    try:
        yield url, proc.pid
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def session(app):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context, page = open_session(browser, app[0])
        yield page
        context.close()
        browser.close()


COUNT_RUNS = """() => {
  if (window.__runs !== undefined) return;
  window.__runs = 0;
  const app = document.querySelector("[data-testid='stApp']");
  // count runs that ended: one record per change, even when several arrive in one callback
  new MutationObserver((records) => {
    for (const r of records) if (r.oldValue === "running") window.__runs++;
  }).observe(app, {attributes: true, attributeOldValue: true,
                   attributeFilter: ["data-test-script-state"]});
}"""


def _send(page, name: str, data: bytes) -> tuple[list[str], np.ndarray | None]:
    """Upload; wait for the script run it starts to end; return (messages, analysed pixels).

    Runs are counted in the page (the messages of two bad files in a row can be identical, and
    right after an upload the old figures are still up), so every upload waits for its own runs.
    """
    page.evaluate(COUNT_RUNS)
    runs = page.evaluate("window.__runs")
    before = page.evaluate(SRCS)
    mime = "image/jpeg" if name.endswith(".jpg") else f"image/{name.rsplit('.', 1)[-1]}"
    upload(page, name, data, mime)
    page.wait_for_function(f"window.__runs > {runs}", timeout=60_000, polling=20)
    # a new file can take two runs (the old file leaves, the new one arrives): wait until the
    # page has been idle for a while with no further run
    while True:
        idle(page)
        runs = page.evaluate("window.__runs")
        page.wait_for_timeout(800)
        if page.evaluate("window.__runs") == runs:
            idle(page)
            break
    figures = page.evaluate(SRCS)
    fresh = len(figures) >= 4 and len(set(figures) - set(before)) >= 4
    return alerts(page), (input_pixels(page) if fresh else None)


def _prep(page) -> Preprocessing:
    side = input_pixels(page).shape[0]
    return Preprocessing(resize=side, crop=side)


def test_every_bad_input_gives_its_result_or_one_message(app, session) -> None:
    page = session
    messages, pixels = _send(page, "warm.png", png_bytes(7))
    assert pixels is not None and not [m for m in messages if "error" in m.lower()]
    prep = _prep(page)
    start_rss = rss_mb(app[1]) if app[1] else None
    failures = []
    refused_rss = None
    for case, name, make, expected in CASES:
        if refused_rss is None and not isinstance(expected, str) and start_rss is not None:
            refused_rss = rss_mb(app[1])  # every refused file is behind us
        messages, pixels = _send(page, name, make())
        assert "Traceback" not in page.content(), case
        if isinstance(expected, str):
            hits = [m for m in messages if expected in m]
            if len(hits) != 1 or pixels is not None or len(hits[0].splitlines()) > 2:
                failures.append(f"{case}: expected one message with {expected!r}, "
                                f"got {messages} (figures: {pixels is not None})")
        else:
            if pixels is None:
                failures.append(f"{case}: no figures; messages {messages}")
                continue
            try:
                expected(pixels, prep)
            except AssertionError as exc:
                failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)
    # the same session still works after all of that
    messages, pixels = _send(page, "after.png", png_bytes(8))
    assert pixels is not None
    if start_rss is not None:
        refused = sum(isinstance(c[3], str) for c in CASES)
        print(f"server RSS {start_rss:.0f} MB; +{refused_rss - start_rss:.0f} MB after {refused} "
              f"refused files; +{rss_mb(app[1]) - start_rss:.0f} MB after all {len(CASES)}")
        assert refused_rss - start_rss < RSS_GROWTH_MB
