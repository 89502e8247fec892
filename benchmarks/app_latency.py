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

SRCS = "Array.from(document.querySelectorAll(\"[data-testid='stImage'] img\")).map(i => i.src)"


def _wait_new_figures(page, before: list[str], start: float, count: int = 4) -> float:
    """Seconds from `start` until at least `count` figures differ from `before` and the run ended.

    Waiting for the figures themselves (not just an idle script) matters: right after an
    upload or a slider change the page still shows the previous figures and is briefly idle.
    """
    page.wait_for_function(
        f"(() => {{ const now = {SRCS}; const old = {before!r}; return now.length >= {count}"
        f" && now.filter(s => !old.includes(s)).length >= {count}; }})()",
        timeout=300_000, polling=20)
    page.wait_for_selector(IDLE, timeout=300_000)
    return time.perf_counter() - start


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
            before = page.evaluate(SRCS)
            start = time.perf_counter()
            page.locator("input[type=file]").set_input_files(
                files=[{"name": f"img{r}.png", "mimeType": "image/png",
                        "buffer": png_bytes(r, (400, 300))}])
            elapsed = _wait_new_figures(page, before, start)
            if r:
                uploads.append(elapsed)
            slider = page.get_by_role("slider").first  # the overlay alpha: display only
            slider.focus()
            before = page.evaluate(SRCS)
            start = time.perf_counter()
            page.keyboard.press("ArrowRight")
            changes.append(_wait_new_figures(page, before, start, count=3))
        browser.close()
    print(f"upload -> figures (median of {len(uploads)}): {statistics.median(uploads):.2f} s")
    print(f"display-only change (median of {len(changes)}): {statistics.median(changes):.2f} s")


if __name__ == "__main__":
    main()
