"""The served app as a public replica: honest readiness, metrics, an upload cap per session,
memory bounded under 40 MP uploads, and a page that says when its upload was lost.

Each test starts the real server (`streamlit run app/serve.py`, harness/apphost.py); the browser
tests drive Debian's chromium through Playwright.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image

from harness.apphost import (
    CHROMIUM,
    alerts,
    chromium,
    idle,
    open_session,
    png_bytes,
    rss_mb,
    start_app,
    stop_app,
    upload,
    wait_images,
)

LOST = "Your uploaded image was lost with the server it was on; please upload it again."
RELOADED = "Your uploaded image is not kept when the page is reloaded; please upload it again."


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(url: str, status: int, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = _get(url)
        if code == status:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} in {timeout:.0f} s")


def _metrics(url: str) -> dict[str, float]:
    code, text = _get(f"{url}/metrics")
    assert code == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_readiness_waits_for_a_slow_warm_up(demo_checkpoints: Path) -> None:
    """Health answers at once; /readyz stays 503 until the models are loaded and the default
    example analysed, then 200; /metrics shows the warm-up's analyses."""
    t0 = time.monotonic()
    url, proc = start_app(demo_checkpoints, env={"SIMAM_VIZ_WARM_DELAY_S": "4"})
    try:
        assert _get(f"{url}/_stcore/health") == (200, "ok")
        assert _get(f"{url}/readyz") == (503, "warming up")
        assert _metrics(url)["simam_viz_ready"] == 0
        assert _wait_for(f"{url}/readyz", 200) == "ready"
        assert time.monotonic() - t0 > 4  # the injected delay: not ready before the warm-up
        values = _metrics(url)
        assert values["simam_viz_ready"] == 1
        assert values['simam_viz_jobs_total{what="analysis"}'] == 3  # the three demo models
        assert values["simam_viz_slots_busy"] == 0
    finally:
        stop_app(proc)


def test_failed_warm_up_stays_unready_while_alive(tmp_path: Path) -> None:
    """No checkpoint to serve: the replica is alive (health 200) but never ready."""
    url, proc = start_app(tmp_path, env={"SIMAM_VIZ_DEMO_MODELS": "0"})
    try:
        assert _wait_for(f"{url}/readyz", 503, timeout=5) in ("warming up", "warm-up failed")
        deadline = time.monotonic() + 120
        while _get(f"{url}/readyz")[1] != "warm-up failed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _get(f"{url}/readyz") == (503, "warm-up failed")
        assert _get(f"{url}/_stcore/health") == (200, "ok")
    finally:
        stop_app(proc)


playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
browser_only = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                  reason="needs Debian's chromium (make system-deps)")


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(demo_checkpoints: Path):
    url, proc = start_app(demo_checkpoints, env={"SIMAM_VIZ_MAX_CONCURRENT": "2"})
    _wait_for(f"{url}/readyz", 200)
    yield url, proc
    stop_app(proc)


@browser_only
def test_upload_flood_is_refused_past_the_cap_and_the_page_says_why(server, browser) -> None:
    url, _ = server
    context, page = open_session(browser, url)
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    upload(page, "first.png", png_bytes(1))
    wait_images(page)
    session = puts[0].split("/upload_file/")[1].split("/")[0]
    token = next(c["value"] for c in context.cookies() if c["name"] == "_streamlit_xsrf")
    statuses = []
    for i in range(6):  # a script PUTting files straight into the session
        response = context.request.put(
            f"{url}/_stcore/upload_file/{session}/flood-{i}",
            headers={"X-Xsrftoken": token},
            multipart={"file": {"name": f"f{i}.png", "mimeType": "image/png",
                                "buffer": b"x" * 200_000}})
        statuses.append(response.status)
    assert statuses[:2] == [204, 204]  # the uploader's file + 2 more: the cap of 3
    assert statuses[2:] == [429] * 4
    page.wait_for_function("() => document.body.innerText.includes('Upload refused')",
                           timeout=30_000)
    assert any("Upload refused" in a for a in alerts(page))
    context.close()


def _single_colour_png(side: int, seed: int) -> bytes:
    """A 40 MP single-colour PNG of ~130 KB, its bytes made distinct by a text chunk."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed * 11 % 256, 90, 200)).save(buf, "PNG",
                                                                   compress_level=9)
    data = buf.getvalue()
    chunk = b"tEXt" + f"Comment\0upload {seed}".encode()
    text = len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    return data[:33] + text + data[33:]  # after the IHDR chunk


@browser_only
def test_twenty_40mp_uploads_keep_the_server_bounded(server, browser) -> None:
    """Before: 16 such uploads raised the server from 1.2 to 4.5 GB (every decoded upload kept
    at full size). Now each is kept as a 1024 px copy in a byte-bounded cache."""
    url, proc = server
    side = 6324  # 40.0 MP, under the limit
    base = _single_colour_png(side, 0)
    sessions = [open_session(browser, url) for _ in range(2)]
    before = rss_mb(proc.pid)
    peak = before
    for i in range(20):
        context, page = sessions[i % 2]
        data = base if i == 0 else _single_colour_png(side, i)
        upload(page, f"big{i}.png", data)
        wait_images(page)
        assert not any("error" in a.lower() for a in alerts(page)), alerts(page)
        peak = max(peak, rss_mb(proc.pid))
    after = rss_mb(proc.pid)
    for context, _ in sessions:
        context.close()
    print(f"server RSS: {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB after")
    assert after - before < 700, (before, peak, after)
    assert peak - before < 900, (before, peak, after)


@browser_only
def test_reload_after_an_upload_says_the_upload_is_gone(server, browser) -> None:
    """A page that comes back without its upload says why instead of silently showing the
    default example (here a reload on the same server; the deploy smoke test kills the
    server and checks the other sentence)."""
    url, _ = server
    context, page = open_session(browser, url)
    upload(page, "mine.png", png_bytes(7))
    wait_images(page)
    assert "upload=" in page.url
    page.reload()
    page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
    idle(page)
    assert RELOADED in " ".join(alerts(page))
    assert "upload=" not in page.url
    context.close()
    # a page whose upload this server never saw: the server it was on is gone
    context, page = open_session(browser, f"{url}/?upload=0123456789abcdef")
    assert LOST in " ".join(alerts(page))
    context.close()
