"""Drive the real app: `streamlit run` on 127.0.0.1 and Debian's chromium through Playwright."""

# Shared by the browser tests, the benchmarks and scripts/deploy_probe.py (which put the
# repository root on `sys.path`), so that all of them start, wait for and talk to the app the
# same way; when a run has ended is decided in `harness.runstate`. Setting `SIMAM_VIZ_URL`
# points every user of `serve()` at an app that is already running (the Docker container of
# `make docker-smoke`) instead of starting one.

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from harness.runstate import wait_settled

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# the flags this machine's closed network needs (no background connections, no QUIC)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (the server takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll Streamlit's health endpoint until it answers `ok` (models load later, lazily)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}")
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        time.sleep(0.05)  # fine-grained: benchmarks time a cold start from this moment
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f} s")


def app_script() -> Path:
    """The file `streamlit run` serves: app/serve.py when present, else app/streamlit_app.py."""
    serve_py = ROOT / "app" / "serve.py"
    return serve_py if serve_py.exists() else ROOT / "app" / "streamlit_app.py"


def start_app(checkpoints: Path | None = None, *, env: dict[str, str] | None = None,
              port: int | None = None, log: Path | None = None) -> tuple[str, subprocess.Popen]:
    """Start the app on loopback; returns (url, process) once its health check answers.

    Runs `streamlit run app/serve.py` (the warm-start wrapper) when it exists, else
    `app/streamlit_app.py`.
    """
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    if checkpoints is not None:
        full_env["SIMAM_VIZ_CHECKPOINTS"] = str(checkpoints)
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app_script()),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT if log else out,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
    except RuntimeError:
        proc.kill()
        raise
    return url, proc


def stop_app(proc: subprocess.Popen) -> None:
    """Stop a server of ``start_app``: SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def serve(checkpoints: Path | None = None, **kwargs) -> Iterator[str]:
    """The app's URL for the duration of the block: `$SIMAM_VIZ_URL` or a fresh server."""
    external = os.environ.get("SIMAM_VIZ_URL")
    if external:
        wait_healthy(external.rstrip("/"))
        yield external.rstrip("/")
        return
    url, proc = start_app(checkpoints, **kwargs)
    try:
        yield url
    finally:
        stop_app(proc)


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children, in MB (Linux /proc)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@contextmanager
def chromium() -> Iterator:
    """Debian's chromium through Playwright's sync API, for the block's duration."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def png_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A random RGB PNG: different seeds give different images (and cache keys)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def idle(page, timeout: float = 180_000) -> None:
    """Wait until the script run the last interaction started has finished (its figures
    need not have loaded)."""
    page.wait_for_timeout(300)  # the interaction's run may not have started yet
    wait_settled(page, figures=False, timeout_ms=timeout)


# the file each page uploaded last: its figures are the ones to wait for (the page already
# shows the default example's figures, so "some figures" is not enough)
_UPLOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wait_images(page, count: int = 4, timeout: float = 300_000) -> None:
    """Wait until the figures of the last upload (its "Image: name" caption) are on the page,
    every visible image has loaded, and the run has ended."""
    wait_settled(page, count=count, name=_UPLOADED.get(page), timeout_ms=timeout)
    idle(page, timeout)


def upload(page, name: str, data: bytes, mime: str = "image/png") -> None:
    """Hand ``data`` to the page's file uploader as the file ``name``."""
    _UPLOADED[page] = name
    page.locator("input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}]
    )


def open_session(browser, url: str):
    """A fresh browser context (its own Streamlit session), the first page settled.

    The uploader is on the page from the start (no click needed), next to the default
    example's figures.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("input[type=file]", state="attached", timeout=300_000)
    idle(page)
    return context, page


def alerts(page) -> list[str]:
    """Texts of the error/warning/info boxes on the page."""
    return page.locator("[data-testid='stAlert']").all_inner_texts()


def input_pixels(page) -> np.ndarray:
    """The first image on the page (the analysed crop) as the browser received it."""
    src = page.locator("[data-testid='stImage'] img").first.get_attribute("src")
    body = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
