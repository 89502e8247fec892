"""Time from upload to first figure, and for a display-only change, in a real browser.

Starts `streamlit run` on 127.0.0.1 with the checkpoints in `$SIMAM_VIZ_CHECKPOINTS` (default:
the repository's, i.e. the demo set), drives Debian's chromium with Playwright, and prints the
median of a few uploads of different images (each a cache miss) and of alpha changes (cached
arrays, no model run). Usage: ``python benchmarks/app_latency.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _wait_run(page, before: float) -> float:
    page.wait_for_timeout(50)
    page.wait_for_selector(IDLE, timeout=300_000)
    return time.perf_counter() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector(IDLE, timeout=300_000)
            page.get_by_text("Upload", exact=True).click()
            page.wait_for_selector(IDLE)
            uploads, changes = [], []
            for r in range(args.rounds + 1):  # the first round warms models up
                start = time.perf_counter()
                page.locator("input[type=file]").set_input_files(
                    files=[{"name": f"img{r}.png", "mimeType": "image/png",
                            "buffer": _png(r)}])
                page.wait_for_function(
                    "document.querySelectorAll(\"[data-testid='stImage']\").length >= 4",
                    timeout=300_000)
                elapsed = _wait_run(page, start)
                if r:
                    uploads.append(elapsed)
                slider = page.get_by_role("slider").first
                slider.focus()
                start = time.perf_counter()
                page.keyboard.press("ArrowRight")
                changes.append(_wait_run(page, start))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"upload -> figures (median of {len(uploads)}): {statistics.median(uploads):.2f} s")
    print(f"display-only change (median of {len(changes)}): {statistics.median(changes):.2f} s")


if __name__ == "__main__":
    main()
