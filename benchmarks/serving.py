"""Many browser sessions against one app server: load, the busy path, and a memory soak.

Loopback only, bounded, one `streamlit run` per phase (tests/apphost.py), Debian's chromium
through Playwright's async API (one context = one Streamlit session).

- load: N = 1, 2, 4, 8 sessions upload different images at the same moment. Per N: p50/p95/max
  seconds from upload to the first new figure and to the whole page, server RSS, how many got
  "busy", and how many results differ from the single-user result for the same pixels (the
  single-user run uploads the same pixels encoded differently, so it misses the result cache).
  For N = 8 it prints the all-figures p95 against its target (3 s).
- busy: 8 sessions at once against a server allowed 1 analysis with a 0.3 s wait: some are
  told the server is busy; each retries (uploads again) and must then get its figures.
- soak: 200 sessions opened, used (one upload, 20 distinct images in turn) and closed, a few at
  a time; server RSS after each, then after the disconnected sessions expire
  (`disconnectedSessionTTL` = 60 s). Writes the RSS curve as a PNG.

An upload has settled when its runs have ended (or, for a run that never showed "running",
the websocket has been quiet for a second) and the page no longer shows its first page's
figures (the default example: replacing an upload first reruns without a file, which shows
it). A page that does not settle in 120 s is counted as "stuck" and printed with what it
showed, and the phase goes on.

Usage: ``python benchmarks/serving.py [load] [busy] [soak] [--sessions 200] [--plot PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from apphost import CHROMIUM, CHROMIUM_ARGS, IDLE, rss_mb, start_app, stop_app  # noqa: E402

UPLOAD_LOCK = asyncio.Lock()
ALL_FIGURES_P95_TARGET_S = 3.0  # 8 sessions uploading at once: every page complete by then
FIRST_PAGE: dict[int, frozenset[str]] = {}  # id(page) -> figures of its first page (the example)
SRCS = "Array.from(document.querySelectorAll(\"[data-testid='stImage'] img\")).map(i => i.src)"
ALERTS = "[data-testid='stAlert']"
# Installed before the page's own scripts: counts runs that ended (one record per change, even
# when several arrive in one callback) and Streamlit's websocket messages. A run whose start
# and end reach the page in one frame never shows "running"; a quiet websocket then ends it.
WATCH = """(() => {
  if (window.__runs !== undefined) return;
  window.__runs = 0; window.__msgs = 0; window.__lastMsg = 0;
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", () => {
        window.__msgs++;
        window.__lastMsg = performance.now();
      });
    }
  };
  const attach = () => {
    const app = document.querySelector("[data-testid='stApp']");
    if (!app) { setTimeout(attach, 5); return; }
    new MutationObserver((records) => {
      for (const r of records) if (r.oldValue === "running") window.__runs++;
    }).observe(app, {attributes: true, attributeOldValue: true,
                     attributeFilter: ["data-test-script-state"]});
  };
  attach();
})();"""
QUIET_MSG_MS = 1000  # no message for this long, idle, no "running" seen: the run has ended


class StuckError(TimeoutError):
    """A page that did not settle; the message says what it showed."""


def image_bytes(seed: int, level: int = 6) -> bytes:
    """A smooth random scene-sized PNG; `level` changes the bytes, never the pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), np.uint8)
    im = Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


STATE = ("[" + SRCS + ", window.__runs, document.querySelector(\"[data-testid='stApp']\")"
         ".getAttribute('data-test-script-state'), window.__msgs,"
         " performance.now() - window.__lastMsg]")


async def settle(page: Page, runs_before: int, before: list[str] | None = None,
                 start: float | None = None, timeout: float = 120.0,
                 avoid: set[str] | frozenset[str] = frozenset(),
                 msgs_before: int | None = None) -> float | None:
    """Poll until the runs an interaction started have ended and the page stays idle.

    Returns seconds from `start` to the first figure in neither `before` nor `avoid` (None if
    none came). A page that shows any figure of `avoid` (the session's first page, the default
    example) has not settled: replacing an upload first reruns without a file, which shows the
    example, and only then runs with the new file.
    Polling from here, not with page.wait_for_function: many pages polling at once stalled
    Playwright here now and then.
    """
    first, quiet_since, quiet_runs = None, None, -1
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        srcs, runs, state, msgs, quiet_ms = await page.evaluate(STATE)
        now = time.perf_counter()
        if first is None and before is not None and any(x not in before and x not in avoid
                                                        for x in srcs):
            first = now - (start or now)
        if runs > runs_before and state == "notRunning" and not avoid.intersection(srcs):
            if quiet_since is None or runs != quiet_runs:
                quiet_since, quiet_runs = now, runs
            elif now - quiet_since > 0.6:
                return first
        elif (runs == runs_before and state == "notRunning" and msgs_before is not None
              and msgs > msgs_before and quiet_ms > QUIET_MSG_MS
              and not avoid.intersection(srcs)):
            return first  # a run that never showed "running" (see WATCH)
        else:
            quiet_since, quiet_runs = None, -1
        await asyncio.sleep(0.02)
    on_first = len(avoid.intersection(srcs))
    alerts = await page.locator(ALERTS).all_inner_texts()
    raise StuckError(f"the page did not settle in {timeout:.0f} s: state {state}, runs ended "
                f"{runs - runs_before}, messages {msgs - (msgs_before or 0)}, "
                f"{len(srcs)} figures ({on_first} of the first page's), alerts {alerts}")


async def open_session(browser: Browser, url: str):
    """A new context (its own Streamlit session), its first page (the default example) idle.

    The uploader is on the page from the start; only an older app that hides it behind an
    "Upload" choice gets the click.
    """
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(WATCH)
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_selector(IDLE, timeout=300_000)
    try:
        await page.wait_for_selector("input[type=file]", state="attached", timeout=30_000)
    except PlaywrightTimeout:
        for _ in range(3):  # a click that lands before the session is connected is lost
            await page.get_by_text("Upload", exact=True).click()
            try:
                await page.wait_for_selector("input[type=file]", state="attached",
                                             timeout=20_000)
                break
            except PlaywrightTimeout:
                continue
    await page.wait_for_timeout(300)
    await page.wait_for_selector(IDLE, timeout=300_000)
    FIRST_PAGE[id(page)] = frozenset(await page.evaluate(SRCS))
    return context, page


async def send(page: Page, name: str, data: bytes) -> dict:
    """Upload; return seconds to the first new figure and to a settled page, and what it shows."""
    before = await page.evaluate(SRCS)
    runs, msgs = await page.evaluate("[window.__runs, window.__msgs]")
    # Playwright stalls when several pages receive files at the same instant: hand the files
    # over one at a time (~0.1 s each); each session's clock starts at its own hand-over
    async with UPLOAD_LOCK:
        start = time.perf_counter()
        await page.locator("input[type=file]").set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    try:
        first = await settle(page, runs, before, start, msgs_before=msgs,
                             avoid=FIRST_PAGE.get(id(page), frozenset()))
    except StuckError as exc:
        print(f"{name}: {exc}", flush=True)
        return {"first": None, "total": None, "alerts": [], "figures": [], "predictions": [],
                "busy": False, "stuck": str(exc)}
    total = time.perf_counter() - start
    alerts = await page.locator(ALERTS).all_inner_texts()
    srcs = await page.evaluate(SRCS)
    # figures are compared by content: Streamlit names media by their hash, so the same figure
    # for the same pixels keeps its URL and is not "new" on the page
    digests = []
    for src in srcs[:4]:
        body = await (await page.request.get(src)).body()
        digests.append(hashlib.sha256(body).hexdigest()[:16])
    preds = await page.locator("ol li").all_inner_texts()
    return {"first": first, "total": total, "alerts": alerts, "figures": digests,
            "predictions": preds, "busy": any("busy" in a for a in alerts), "stuck": None}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def load_phase(browser: Browser, url: str, pid: int, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        sessions = [await open_session(browser, url) for _ in range(n)]
        seeds = [1000 * n + i for i in range(n)]
        results = await asyncio.gather(*(send(page, f"img{s}.png", image_bytes(s))
                                          for (_, page), s in zip(sessions, seeds, strict=True)))
        rss = rss_mb(pid)
        # the single-user answer for the same pixels (other bytes, so not from the cache)
        _, solo_page = sessions[0]
        mismatches = 0
        for seed, got in zip(seeds, results, strict=True):
            if got["busy"] or got["stuck"]:
                continue
            alone = await send(solo_page, f"solo{seed}.png", image_bytes(seed, level=1))
            if alone["figures"] != got["figures"] or alone["predictions"] != got["predictions"]:
                mismatches += 1
        for context, _ in sessions:
            await context.close()
        done = [r for r in results if not r["busy"] and not r["stuck"]]
        firsts = [r["first"] for r in done if r["first"] is not None]
        totals = [r["total"] for r in done]
        rows.append({"n": n, "p50_first": pct(firsts, 50), "p95_first": pct(firsts, 95),
                     "p50_total": pct(totals, 50), "p95_total": pct(totals, 95),
                     "max_total": max(totals, default=float("nan")), "rss_mb": rss,
                     "mismatches": mismatches, "busy": sum(r["busy"] for r in results),
                     "stuck": sum(bool(r["stuck"]) for r in results)})
        print(f"N={n}: done", flush=True)
    return rows


async def busy_phase(browser: Browser, url: str, n: int = 8) -> dict:
    sessions = [await open_session(browser, url) for _ in range(n)]
    results = await asyncio.gather(*(send(page, f"b{i}.png", image_bytes(5000 + i))
                                      for i, (_, page) in enumerate(sessions)))
    busy = [i for i, r in enumerate(results) if r["busy"]]
    stuck = sum(bool(r["stuck"]) for r in results)
    retried_ok = 0
    for i in busy:  # a user who reads "busy, retry" and uploads again
        again = await send(sessions[i][1], f"b{i}.png", image_bytes(5000 + i))
        retried_ok += int(not again["busy"] and len(again["figures"]) >= 4)
        stuck += bool(again["stuck"])
    for context, _ in sessions:
        await context.close()
    return {"sessions": n, "busy": len(busy), "retried_ok": retried_ok, "stuck": stuck,
            "message": next((a for r in results for a in r["alerts"] if "busy" in a), "")}


async def soak_phase(browser: Browser, url: str, pid: int, total: int, width: int) -> dict:
    curve = [(0, rss_mb(pid))]
    done = 0

    async def one(k: int) -> None:
        context, page = await open_session(browser, url)
        await send(page, f"soak{k % 20}.png", image_bytes(9000 + k % 20))
        await context.close()

    start = time.perf_counter()
    while done < total:
        batch = list(range(done, min(total, done + width)))
        await asyncio.gather(*(one(k) for k in batch))
        done += len(batch)
        curve.append((done, rss_mb(pid)))
    elapsed = time.perf_counter() - start
    await asyncio.sleep(75)  # disconnected sessions expire after 60 s
    after_ttl = rss_mb(pid)
    return {"curve": curve, "after_ttl": after_ttl, "seconds": elapsed}


def plot(curve: list[tuple[int, float]], after_ttl: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = zip(*curve, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot(xs, ys, lw=1.5, label="after each batch of sessions")
    ax.axhline(after_ttl, color="tab:green", ls="--", lw=1, label="75 s after the last one")
    ax.set_xlabel("sessions opened, used and closed")
    ax.set_ylabel("server RSS (MB)")
    ax.set_ylim(0, max(ys) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> None:
    checkpoints = Path(args.checkpoints)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        if "load" in args.phases:
            url, proc = start_app(checkpoints)
            try:
                rows = await load_phase(browser, url, proc.pid, args.sizes)
            finally:
                stop_app(proc)
            print("\n| N sessions | first figure p50 / p95 s | all figures p50 / p95 / max s "
                  "| server RSS MB | busy | mismatches | stuck |\n|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['n']} | {r['p50_first']:.2f} / {r['p95_first']:.2f} "
                      f"| {r['p50_total']:.2f} / {r['p95_total']:.2f} / {r['max_total']:.2f} "
                      f"| {r['rss_mb']:.0f} | {r['busy']} | {r['mismatches']} | {r['stuck']} |")
            for r in rows:
                if r["n"] == 8:
                    verdict = "ok" if r["p95_total"] <= ALL_FIGURES_P95_TARGET_S else "over"
                    print(f"\nN=8: all figures p95 {r['p95_total']:.2f} s (target <= "
                          f"{ALL_FIGURES_P95_TARGET_S:.0f} s: {verdict})")
        if "busy" in args.phases:
            url, proc = start_app(checkpoints, env={"SIMAM_VIZ_MAX_CONCURRENT": "1",
                                                    "SIMAM_VIZ_BUSY_WAIT_S": "0.3"})
            try:
                b = await busy_phase(browser, url)
            finally:
                stop_app(proc)
            print(f"\nbusy path: {b['busy']} of {b['sessions']} sessions told {b['message']!r}; "
                  f"{b['retried_ok']} of {b['busy']} got their figures on retry; "
                  f"{b['stuck']} uploads never settled")
        if "soak" in args.phases:
            url, proc = start_app(checkpoints)
            try:
                s = await soak_phase(browser, url, proc.pid, args.sessions, args.width)
            finally:
                stop_app(proc)
            curve = s["curve"]
            half = [c for c in curve if c[0] >= curve[-1][0] / 2]
            slope = (half[-1][1] - half[0][1]) / max(1, half[-1][0] - half[0][0]) * 100
            print(f"\nsoak: {curve[-1][0]} sessions in {s['seconds']:.0f} s; RSS start "
                  f"{curve[0][1]:.0f} MB, peak {max(v for _, v in curve):.0f} MB, end "
                  f"{curve[-1][1]:.0f} MB, {s['after_ttl']:.0f} MB after the TTL; slope over "
                  f"the second half {slope:+.1f} MB per 100 sessions")
            plot(curve, s["after_ttl"], Path(args.plot))
            print(f"wrote {args.plot}")
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phases", nargs="*", default=["load", "busy", "soak"],
                        choices=["load", "busy", "soak"])
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="concurrent sessions per load round (default 1 2 4 8)")
    parser.add_argument("--sessions", type=int, default=200, help="soak sessions (default 200)")
    parser.add_argument("--width", type=int, default=4, help="soak sessions at a time")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "soak_rss.png"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
