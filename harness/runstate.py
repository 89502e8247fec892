"""The one watcher of a page's Streamlit script runs: has the run ended, are its figures in."""

# Why one module: the browser tests, the benchmarks and the deploy probe all have to decide the
# same thing ("the run the action started is over and every visible image has loaded") and
# each used to decide it in its own JavaScript, which drifted (all images vs visible ones,
# re-sets of "running" counted as ended runs). Everything that decides it lives here:
#
# - OBSERVER_JS, an init script (``context.add_init_script``): counts script runs started and
#   ended (a MutationObserver on ``data-test-script-state``) and Streamlit's websocket
#   traffic, so that "a run ended since the action" can be told from "no run has started yet".
#   A run whose start and end reach the page in one frame never shows "running"; then a
#   websocket that got messages and went quiet marks its end.
# - SNAPSHOT_JS, a function of options returning what the page shows now, including the two
#   verdicts ``ended`` and ``settled``. It works without the observer too (the counters are
#   then absent, and only the attribute is read).
# - Python waiters on top: a sync one (``page.wait_for_function``) for the tests, and async
#   pollers for the many-session scripts (many pages in ``wait_for_function`` at once stalled
#   Playwright now and then, so those poll with ``page.evaluate``).

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

# the selector of a page whose script run has ended (no observer needed)
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"

# What the page shows now, read in one go so that no check sees a half-updated page.
# Options: count (least stImage images), name (the upload whose "Image: <name>" caption must
# show), figures (false: the run's end is enough), since ({runs, msgs} counters read before
# the action: a run must have ended after them), quietMs (the quiet websocket that ends a run
# never seen "running", 800 ms), avoid (image URLs that must not be on the page: a page still
# showing them has not got to the action's figures), charts (plotly charts must have drawn
# their data too), detail (captions, alerts, errors and whether a traceback shows as well).
SNAPSHOT_JS = r"""(opts = {}) => {
  const R = window.__runstate || {};
  const now = performance.timeOrigin + performance.now();
  const app = document.querySelector("[data-testid='stApp']");
  const state = app ? app.getAttribute("data-test-script-state") : null;
  const imgs = [...document.querySelectorAll("[data-testid='stImage'] img")];
  const srcs = imgs.map((i) => i.src);
  // an image counts once it is on screen: a hidden (lazy) one may never load
  const pending = [];
  for (const img of document.images)
    if (img.getClientRects().length > 0 && !(img.complete && img.naturalWidth > 0))
      pending.push("img " + img.src.slice(-40));
  if (opts.charts)
    for (const gd of document.querySelectorAll(".js-plotly-plot")) {
      const data = gd.data;
      if (!data || !gd._fullData || gd._fullData.length !== data.length
          || gd._fullData.some((t, i) => t._input !== data[i]) || !gd.querySelector(".main-svg"))
        pending.push("plotly");
    }
  const s = {state, images: imgs.length, srcs, pending, loaded: pending.length === 0,
             started: R.started, runs: R.runs, msgs: R.msgs,
             quietMs: R.lastMsg === undefined ? null : now - R.lastMsg,
             opened: R.opened, closed: R.closed, runsAtOpen: R.runsAtOpen,
             msgsSinceOpen: R.msgsSinceOpen};
  if (opts.detail || opts.name != null)
    s.captions = [...document.querySelectorAll("[data-testid='stCaptionContainer']")]
      .map((c) => c.innerText.trim());
  if (opts.detail) {
    s.alerts = [...document.querySelectorAll("[data-testid='stAlert']")].map((a) => a.innerText);
    s.errors = document.querySelectorAll("[data-testid='stAlertContentError']").length;
    s.traceback = document.body.innerText.includes("Traceback")
      || document.querySelector("[data-testid='stException']") !== null;
  }
  const since = opts.since;
  s.ended = state === "notRunning" && (!since || R.runs > since.runs
    || (since.msgs != null && R.msgs > since.msgs && s.quietMs > (opts.quietMs ?? 800)));
  const avoid = opts.avoid && opts.avoid.length ? new Set(opts.avoid) : null;
  s.settled = s.ended && !(avoid && srcs.some((x) => avoid.has(x)))
    && (opts.figures === false || (s.loaded && imgs.length >= (opts.count || 0)
        && (opts.name == null || s.captions.includes("Image: " + opts.name))));
  return s;
}"""

SETTLED_JS = "(o) => (" + SNAPSHOT_JS + ")(o).settled"

# Installed before the page's own scripts. Times are epoch milliseconds (timeOrigin + now),
# comparable with Python's time.time() on the same machine. ``listeners`` get ("start" |
# "end", time) for each run, for callers that time runs (benchmarks/app_latency.py).
OBSERVER_JS = r"""(() => {
  if (window.__runstate) return;
  const now = () => performance.timeOrigin + performance.now();
  const R = window.__runstate = {started: 0, runs: 0, msgs: 0, lastMsg: 0, opened: 0,
                                 closed: 0, runsAtOpen: 0, msgsSinceOpen: 0, listeners: []};
  R.snapshot = """ + SNAPSHOT_JS + r""";
  const emit = (what, t) => { for (const fn of R.listeners) fn(what, t); };
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener("open", () => {
        R.opened++; R.runsAtOpen = R.runs; R.msgsSinceOpen = 0;
      });
      this.addEventListener("close", () => { R.closed++; });
      this.addEventListener("message", () => { R.msgs++; R.msgsSinceOpen++; R.lastMsg = now(); });
    }
  };
  const attach = () => {
    const app = document.querySelector("[data-testid='stApp']");
    if (!app) { setTimeout(attach, 2); return; }
    new MutationObserver((records) => {
      const t = now();
      // one record per attribute write, several per callback at times, and a write of the
      // same value is a record too: what a record changed the state to is the next record's
      // old value (the attribute itself for the last one)
      records.forEach((r, i) => {
        const value = i + 1 < records.length ? records[i + 1].oldValue
          : app.getAttribute("data-test-script-state");
        if (value === "running" && r.oldValue !== "running") { R.started++; emit("start", t); }
        if (r.oldValue === "running" && value !== "running") { R.runs++; emit("end", t); }
      });
    }).observe(app, {attributes: true, attributeOldValue: true,
                     attributeFilter: ["data-test-script-state"]});
  };
  attach();
})();"""


def options(*, count: int = 0, name: str | None = None, figures: bool = True,
            since: dict[str, Any] | None = None, quiet_ms: float = 800,
            avoid: Iterable[str] = (), charts: bool = False,
            detail: bool = False) -> dict[str, Any]:
    """SNAPSHOT_JS's options spelled in Python (see the comment above SNAPSHOT_JS).

    ``since`` is a snapshot (or any mapping with ``runs`` and optionally ``msgs``) taken
    before the action; only its counters are sent.
    """
    opts: dict[str, Any] = {"count": count, "name": name, "figures": figures,
                            "quietMs": quiet_ms, "avoid": sorted(avoid), "charts": charts,
                            "detail": detail}
    if since is not None:
        opts["since"] = {"runs": since.get("runs"), "msgs": since.get("msgs")}
    return opts


def snapshot(page, **opts: Any) -> Any:
    """What ``page`` shows now (SNAPSHOT_JS's dict): the dict for a sync Playwright page, an
    awaitable of it for an async one (``await snapshot(page)``)."""
    return page.evaluate(SNAPSHOT_JS, options(**opts))


def wait_settled(page, *, timeout_ms: float = 180_000, polling: int = 50, **opts: Any) -> None:
    """Block (sync Playwright) until the page has settled as ``opts`` say (see ``options``):
    by default, the script run has ended and every visible image has loaded."""
    page.wait_for_function(SETTLED_JS, arg=options(**opts), timeout=timeout_ms,
                           polling=polling)


async def snapshots(page, *, timeout: float, interval: float = 0.05,
                    **opts: Any) -> AsyncIterator[dict[str, Any]]:
    """The page's snapshot every ``interval`` s for ``timeout`` s (async Playwright); while
    a navigation is in progress, ``{"error": ...}`` instead (the caller tries again)."""
    arg = options(**opts)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            yield await page.evaluate(SNAPSHOT_JS, arg)
        except Exception as exc:  # the page is navigating or reconnecting
            yield {"error": str(exc)}
        await asyncio.sleep(interval)


async def settled(page, *, timeout: float = 120.0, interval: float = 0.02, stable: int = 1,
                  **opts: Any) -> dict[str, Any]:
    """Poll (async Playwright) until the page has settled as ``opts`` say for ``stable``
    polls in a row (2: not a frame between two runs); returns that snapshot.

    Raises TimeoutError naming what the page showed last.
    """
    last: dict[str, Any] = {}
    streak = 0
    async for last in snapshots(page, timeout=timeout, interval=interval, **opts):
        streak = streak + 1 if last.get("settled") else 0
        if streak >= stable:
            return last
    raise TimeoutError(f"the page did not settle in {timeout:.0f} s: {brief(last)}")


def brief(snap: dict[str, Any], limit: int = 600) -> str:
    """A snapshot shortened for an error message: no image URLs, only the "Image:" captions,
    the first 120 characters of each alert."""
    short = {k: v for k, v in snap.items() if k not in ("srcs", "captions", "alerts")}
    short["figures"] = len(snap.get("srcs", []))
    if "captions" in snap:
        short["captions"] = [c for c in snap["captions"] if c.startswith("Image:")]
    if "alerts" in snap:
        short["alerts"] = [a[:120] for a in snap["alerts"]]
    return json.dumps(short)[:limit]
