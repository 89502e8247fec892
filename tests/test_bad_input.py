"""Every bad input of robustness.md ("Uploads and images") through the app's real upload path.

Why a browser: `tests/test_images.py` proves the loader handles these files, but only a real
upload (chromium -> Streamlit's HTTP upload endpoint -> `file_uploader` -> `load_image` ->
analysis -> media URL) proves the app routes every byte through it, turns each refusal into
one short message instead of a traceback, and still works in the same session afterwards.

Every file is built here from code (nothing binary is committed). A case either

* is refused: exactly one `stAlert` on the page, containing the expected one-line message,
  and no figures; or
* is analysed: fresh figures appear, and the analysed image the browser receives (the
  "Input (as the models see it)" panel) matches an expectation computed here independently of
  the app's loader (EXIF via `ImageOps.exif_transpose`, modes from the numbers we wrote).

Between cases the upload is removed, so the page goes back to the bundled default example:
its figures, the caption "Image: scene_dog_3.png" and no message. The next outcome is then
recognisable even when two refusals read the same: an error (the example shows none), or
figures under a caption naming the upload (the page shows it only after a successful analysis).
The server's RSS is sampled around the series; `SIMAM_VIZ_URL` (a container) skips only that.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import DEFAULT_EXAMPLE
from PIL import Image, ImageOps

from harness.apphost import (
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
from harness.runstate import SNAPSHOT_JS
from simam_viz.networks.preprocess import Preprocessing

playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")

WAIT_MS = 180_000  # this 2-core machine runs other heavy jobs: generous, failures are still fast
EXAMPLE = DEFAULT_EXAMPLE.name  # what the page analyses while nothing is uploaded
# Server memory bounds, MB. Measured on the 2-core dev box (tiny 160-px demo models), from
# ~1300 MB after the warm-up (app/serve.py's start-up pass, then this session's first upload):
# the refused files moved RSS and peak (VmHWM) by <= 3 MB;
# the 14 analysed files and the final PNG added ~190 MB, the result cache filling up (24
# analyses of ~9 MB; flat once full). A refused file that got decoded anyway costs far more
# than 40 MB: the 45 MP gray PNG is 45 MB as L plus 135 MB as RGB, the bomb 1.2 GB, and the
# 40000x1 PNG reached a 5.2 GB peak before images.py capped the aspect ratio.
REFUSED_GROWTH_MB = 40
TOTAL_GROWTH_MB = 300  # a full cache (~230 MB) plus margin; a leak per upload shows past it

# What the page shows right now (harness.runstate's snapshot, read in one go so a check cannot
# see a half-updated page), with the figures of `name` required for "settled".
_PAGE = """
  const s = (""" + SNAPSHOT_JS + """)({detail: true, count: 4, name});
  const chips = document.querySelectorAll("[data-testid='stFileChipDeleteBtn']").length;
"""
# The page has settled on the outcome of uploading `name`: the run is over and either an
# error or that file's figures (under its "Image: <name>" caption) are up.
OUTCOME = "(name) => {" + _PAGE + "  return s.ended && (s.errors > 0 || s.settled);\n}"
# The page is back at the default example: the run is over, no error, the example's figures;
# and, unless `keepChip`, no file left in the uploader (its chip is gone).
SHOWING_EXAMPLE = ("([name, keepChip]) => {" + _PAGE
                   + "  return s.settled && s.errors === 0 && (keepChip || chips === 0);\n}")


# ---- files (all built here) ---------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _quadrants(w: int = 120, h: int = 80) -> Image.Image:
    """Four differently coloured quadrants: every flip and rotation gives a different picture,
    and the centre crop the models see still holds a piece of each quadrant."""
    arr = np.empty((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (220, 40, 40)
    arr[: h // 2, w // 2 :] = (40, 190, 40)
    arr[h // 2 :, : w // 2] = (40, 40, 220)
    arr[h // 2 :, w // 2 :] = (230, 220, 40)
    return Image.fromarray(arr)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb() -> bytes:
    """A ~20 KB valid-looking PNG declaring 20000x20000 RGB (1.2 GB once decoded).

    The IDAT holds only the first ~340 rows of zeros: the size is in the header, and the
    test is that nothing gets as far as allocating it.
    """
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(340 * (1 + 20000 * 3)), 9)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))
    assert 15_000 < len(data) < 25_000
    return data


def _truncated_jpeg() -> bytes:
    """The first half of a real JPEG (noise, so half the bytes is half the scan data)."""
    rng = np.random.default_rng(1)
    data = _encode(Image.fromarray(rng.integers(0, 256, (300, 400, 3), np.uint8)), "JPEG")
    return data[: len(data) // 2]


def _real(data: bytes, fmt: str) -> bytes:
    """``data``, checked to be a file Pillow would hand to its ``fmt`` decoder if allowed to."""
    assert Image.open(io.BytesIO(data)).format == fmt
    return data


def _psd() -> bytes:
    """A minimal valid 64x64 RGB Photoshop file (Pillow can read PSD but not write it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3)
    # empty colour-mode, resources and layer sections; raw (uncompressed) planar data
    body = struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(64 * 64 * 3)
    return _real(header + body, "PSD")


def _eps() -> bytes:
    """A minimal Encapsulated PostScript file (Pillow only parses it; drawing needs gs)."""
    return _real(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
                 b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n", "EPS")


def _pdf() -> bytes:
    """A real one-page PDF holding an image (Pillow writes PDF, it cannot read it)."""
    return _encode(_quadrants(), "PDF")


def _random_bytes() -> bytes:
    data = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    assert not data.startswith((b"BM", b"GIF", b"\x89PNG", b"\xff\xd8", b"RIFF"))
    return data


def _wide() -> Image.Image:
    """4000x90: far from square but well inside every limit, so it must be analysed."""
    arr = np.zeros((90, 4000, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, 4000)[None, :]  # a red ramp: the crop shows the middle
    arr[:45, :, 1] = 200
    return Image.fromarray(arr)


def _sixteen_bit() -> np.ndarray:
    """A 16-bit gray ramp over the full 0..65535 range, darker bottom rows (asymmetric)."""
    ramp = np.tile(np.linspace(0, 65535, 160), (120, 1))
    ramp[60:] *= 0.5
    return ramp.astype(np.uint16)


def _mode(data: bytes, mode: str) -> bytes:
    """``data``, checked to decode (without our loader) in the exotic ``mode`` it is about."""
    assert Image.open(io.BytesIO(data)).mode == mode
    return data


def _png16() -> bytes:
    return _mode(_encode(Image.fromarray(_sixteen_bit()), "PNG"), "I;16")


def _cmyk() -> bytes:
    """A CMYK JPEG written from explicit ink values (C=255-R, M=255-G, Y=255-B, K=0)."""
    cmyk = np.concatenate([255 - np.asarray(_quadrants()), np.zeros((80, 120, 1), np.uint8)], 2)
    return _mode(_encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95), "CMYK")


PALETTE = {0: (0, 0, 0), 1: (30, 30, 220), 2: (220, 30, 30)}  # index 0 is transparent


def _palette_indices() -> np.ndarray:
    idx = np.zeros((80, 120), np.uint8)  # left half transparent (stored colour: black)
    idx[:, 60:] = 1
    idx[:20, 60:] = 2
    return idx


def _palette_png() -> bytes:
    im = Image.fromarray(_palette_indices(), "P")
    im.putpalette([c for i in range(3) for c in PALETTE[i]] + [0] * (256 - 3) * 3)
    data = _mode(_encode(im, "PNG", transparency=0), "P")
    assert Image.open(io.BytesIO(data)).info["transparency"] == 0
    return data


def _frames() -> list[Image.Image]:
    """Three clearly different frames: the first one is the picture that must be analysed."""
    first = _quadrants(96, 96)
    return [first, first.transpose(Image.Transpose.ROTATE_180), Image.new("RGB", (96, 96), "gray")]


def _animated(fmt: str, **kw) -> bytes:
    frames = _frames()
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100,
                   loop=0, **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # really animated
    return data


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_quadrants(), "JPEG", quality=95, exif=exif)


# ---- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One upload and what must come of it: a message fragment, or the expected picture."""

    id: str
    name: str
    make: Callable[[], bytes]
    message: str | None = None  # refused with one alert containing this
    expected: Callable[[], Image.Image] | None = None  # analysed: the upright RGB picture
    tolerance: float = 3.0  # mean absolute difference allowed (JPEG is lossy)
    not_expected: Callable[[], Image.Image] | None = None  # a picture it must NOT look like


def _exif_case(o: int) -> Case:
    return Case(
        f"exif-{o}", f"exif{o}.jpg", lambda: _exif_jpeg(o),
        expected=lambda: ImageOps.exif_transpose(Image.open(io.BytesIO(_exif_jpeg(o)))),
        tolerance=6.0,
        # the pixels as stored, unrotated: what a loader that ignores EXIF would analyse
        not_expected=None if o == 1 else lambda: Image.open(io.BytesIO(_exif_jpeg(o))),
    )


REFUSED = [
    # Pillow's own bomb check (400 MP is over twice its 89.5 MP default) fires inside open()
    Case("bomb", "bomb.png", _bomb, "image dimensions are too large: at most 40 MP"),
    Case("truncated-jpeg", "half.jpg", _truncated_jpeg, "image is truncated or corrupt"),
    Case("psd-as-png", "x.png", _psd, "unsupported image format"),
    Case("eps-as-png", "x.png", _eps, "unsupported image format"),
    Case("pdf-as-png", "x.png", _pdf, "unsupported image format"),
    Case("zero-bytes", "empty.png", lambda: b"", "empty file"),
    Case("random-bytes", "noise.png", _random_bytes, "unsupported image format"),
    # a real 45 MP PNG: under Pillow's limit, over the app's own 40 MP cap (checked before load)
    Case("over-pixel-cap", "huge.png", lambda: _encode(Image.new("L", (9000, 5000)), "PNG"),
         "image is 9000x5000 pixels, over the 40 MP limit"),
    # 40000x1 is only 40 KP, but resizing its short side to the model's input makes it
    # 6.4 M x 160 pixels: gigabytes from a 200-byte file
    Case("extreme-aspect", "line.png", lambda: _encode(Image.new("RGB", (40000, 1)), "PNG"),
         "image is 40000x1 pixels, over the 100:1 aspect ratio limit"),
]
ANALYSED = [
    Case("very-wide", "wide.png", lambda: _encode(_wide(), "PNG"), expected=_wide, tolerance=2.0),
    Case("16-bit", "ramp16.png", _png16,
         # scaled to 8 bit by value (65535 -> 255), not clipped to near-white
         expected=lambda: Image.fromarray(np.round(_sixteen_bit() / 257).astype(np.uint8)),
         tolerance=2.0),
    Case("cmyk", "cmyk.jpg", _cmyk, expected=_quadrants, tolerance=8.0),
    Case("palette-transparency", "pal.png", _palette_png,
         # transparent pixels composited on white, not left as their stored black
         expected=lambda: Image.fromarray(np.array(
             [(255, 255, 255)] + [PALETTE[i] for i in (1, 2)], np.uint8)[_palette_indices()]),
         tolerance=2.0),
    Case("animated-gif", "anim.gif", lambda: _animated("GIF"),
         expected=lambda: _frames()[0], tolerance=3.0,
         not_expected=lambda: _frames()[1]),
    Case("animated-webp", "anim.webp", lambda: _animated("WEBP", lossless=True),
         expected=lambda: _frames()[0], tolerance=3.0,
         not_expected=lambda: _frames()[1]),
    *[_exif_case(o) for o in range(1, 9)],
]
CASES = REFUSED + ANALYSED
REFUSED_IDS = {c.id for c in REFUSED} | {"over-upload-cap"}


# ---- the app and the session --------------------------------------------------------------------


@dataclass
class Session:
    """One browser session on one server, shared by the cases in order (as a user would)."""

    page: object
    pid: int | None  # the server's, None for `$SIMAM_VIZ_URL`
    prep: Preprocessing
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # (RSS, peak) MB


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest) -> Iterator[tuple[str, int | None]]:
    """(url, server pid or None): a fresh server on tiny models, or `$SIMAM_VIZ_URL`."""
    if os.environ.get("SIMAM_VIZ_URL"):
        with serve() as url:
            yield url, None
        return
    url, proc = start_app(request.getfixturevalue("demo_checkpoints"))
    try:
        yield url, proc.pid
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def session(app) -> Iterator[Session]:
    """One chromium, one Streamlit session, warmed up with a good PNG (models loaded)."""
    url, pid = app
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context, page = open_session(browser, url)
        try:
            data = png_bytes(101, (200, 150))
            errors, pixels = _send(page, "warm.png", data)
            assert pixels is not None and not errors, errors
            # the crop side the models use; checked right here against an independent crop
            prep = Preprocessing(resize=pixels.shape[0], crop=pixels.shape[0])
            _assert_close(pixels, Image.open(io.BytesIO(data)), prep, 1.0)
            s = Session(page, pid, prep)
            if pid is not None:
                s.memory["start"] = _memory(pid)
            yield s
        finally:
            context.close()
            browser.close()


def peak_mb(pid: int) -> float:
    """The server's peak RSS so far (VmHWM), in MB: catches a spike that was freed again."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _memory(pid: int) -> tuple[float, float]:
    return rss_mb(pid), peak_mb(pid)


def _mime(name: str) -> str:
    ext = name.rsplit(".", 1)[-1]
    return {"jpg": "image/jpeg"}.get(ext, f"image/{ext}")


def _clear(page) -> None:
    """Remove the current upload and wait for the default example's figures, no message."""
    delete = page.locator("[data-testid='stFileChipDeleteBtn'] button")
    if delete.count():
        delete.first.click()
        idle(page, WAIT_MS)
    # an emptied uploader keeps the last good upload on screen (no flash of the example when
    # a file is replaced); the button goes back to the examples
    back = page.get_by_role("button", name="Back to the examples")
    if back.count():
        back.first.click()
    page.wait_for_function(SHOWING_EXAMPLE, arg=[EXAMPLE, False], timeout=WAIT_MS, polling=100)


def _send(page, name: str, data: bytes) -> tuple[list[str], np.ndarray | None]:
    """Upload from the clean example page; return (error messages, analysed pixels or None)."""
    _clear(page)
    upload(page, name, data, _mime(name))
    page.wait_for_function(OUTCOME, arg=name, timeout=WAIT_MS, polling=100)
    page.wait_for_timeout(500)  # nothing may follow: the outcome must still hold
    page.wait_for_function(OUTCOME, arg=name, timeout=WAIT_MS, polling=100)
    html = page.content()
    assert "Traceback" not in html and page.locator("[data-testid='stException']").count() == 0
    errors = page.locator("[data-testid='stAlertContentError']").all_inner_texts()
    figures = page.locator("[data-testid='stImage']").count()
    return errors, (input_pixels(page) if figures >= 4 else None)


def _crop(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    return np.asarray(prep.crop_image(image.convert("RGB")), dtype=np.float64)


def _assert_close(pixels: np.ndarray, image: Image.Image, prep: Preprocessing,
                  tolerance: float) -> None:
    want = _crop(image, prep)
    assert pixels.shape == want.shape
    diff = np.abs(pixels - want).mean()
    assert diff < tolerance, f"analysed image differs from the expected one by {diff:.1f}/px"


# ---- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_over_the_upload_cap_is_refused_by_the_uploader(session: Session) -> None:
    """11 MB: Streamlit's uploader refuses it (maxUploadSize = 10) before any byte is sent, so
    the message is the widget's own, not an `stAlert`, and the app never sees the file: the
    page keeps showing the default example's figures, with no message.

    Runs first (file order), so its memory sample counts with the refused files'.
    """
    page = session.page
    _clear(page)
    upload(page, "big.png", b"\x89PNG\r\n\x1a\n" + bytes(11 * 2**20))
    uploader = page.locator("[data-testid='stFileUploader']")
    uploader.get_by_text("or smaller", exact=False).wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(500)
    # the refused file may keep a chip (with the widget's error) in the uploader
    page.wait_for_function(SHOWING_EXAMPLE, arg=[EXAMPLE, True], timeout=WAIT_MS, polling=100)
    assert "File must be 10.0MB or smaller." in uploader.inner_text()
    assert "Traceback" not in page.content() and not alerts(page)
    assert page.locator("[data-testid='stCaptionContainer']").filter(
        has_text=f"Image: {EXAMPLE}").count() == 1  # the example's figures, nothing else
    if session.pid is not None:
        session.memory["over-upload-cap"] = _memory(session.pid)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_its_result_or_one_message(session: Session, case: Case) -> None:
    errors, pixels = _send(session.page, case.name, case.make())
    if case.message is not None:
        texts = alerts(session.page)
        assert len(texts) == 1 and case.message in texts[0], texts
        assert len(texts[0].strip().splitlines()) == 1 and len(texts[0]) < 200, texts[0]
        assert pixels is None, "figures shown for a refused file"
    else:
        assert pixels is not None and not errors, f"no figures; errors: {errors}"
        _assert_close(pixels, case.expected(), session.prep, case.tolerance)
        if case.not_expected is not None:  # the check above really tells them apart
            wrong = np.abs(pixels - _crop(case.not_expected(), session.prep)).mean()
            # (nearest wrong picture measured: 32/px for EXIF 7, whose transform keeps half)
            assert wrong > 4 * case.tolerance, f"also matches the wrong picture ({wrong:.1f})"
    if session.pid is not None:
        session.memory[case.id] = _memory(session.pid)


@pytest.mark.slow
def test_same_session_still_works_and_memory_stays_flat(session: Session) -> None:
    errors, pixels = _send(session.page, "after.png", png_bytes(102, (150, 200)))
    assert pixels is not None and not errors, errors
    if session.pid is None:
        pytest.skip("server is remote ($SIMAM_VIZ_URL): its RSS cannot be sampled")
    mem = session.memory
    mem["end"] = _memory(session.pid)
    print("server memory, MB (RSS/peak): "
          + ", ".join(f"{k} {r:.0f}/{h:.0f}" for k, (r, h) in mem.items()))
    start_rss, start_peak = mem["start"]
    refused = [v for k, v in mem.items() if k in REFUSED_IDS] or [mem["start"]]
    # the bounds and the numbers behind them: REFUSED_GROWTH_MB, TOTAL_GROWTH_MB at the top
    assert max(r for r, _ in refused) - start_rss < REFUSED_GROWTH_MB
    assert max(h for _, h in refused) - start_peak < REFUSED_GROWTH_MB
    assert mem["end"][0] - start_rss < TOTAL_GROWTH_MB
