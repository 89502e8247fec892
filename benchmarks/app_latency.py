"""Time from upload to first figure, and for a display-only change, in a real browser.

Starts `streamlit run` on 127.0.0.1 with the checkpoints in `$SIMAM_VIZ_CHECKPOINTS` (default:
the repository's, i.e. the demo set), drives Debian's chromium with Playwright, and prints the
median of a few uploads of different images (each a cache miss) and of alpha changes (cached
arrays, no model run). Usage: ``python benchmarks/app_latency.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from apphost import CHROMIUM, CHROMIUM_ARGS, IDLE, png_bytes, serve  # noqa: E402


def _wait_run(page, before: float) -> float:
    page.wait_for_timeout(50)
    page.wait_for_selector(IDLE, timeout=300_000)
    return time.perf_counter() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with serve() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
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
                        "buffer": png_bytes(r, (400, 300))}])
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
    print(f"upload -> figures (median of {len(uploads)}): {statistics.median(uploads):.2f} s")
    print(f"display-only change (median of {len(changes)}): {statistics.median(changes):.2f} s")


if __name__ == "__main__":
    main()
