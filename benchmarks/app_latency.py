"""What a user waits for in the app, measured in a real browser (Debian's chromium, Playwright).

Every row is timed from the user's action (the DOM event: the file input's ``change``, the
``keydown``, the ``mousedown`` on a tab or option, read in the page) to a *settled* page:

- the script run (or fragment run) the action started has ended
  (``[data-testid=stApp][data-test-script-state=notRunning]`` after a ``running``),
- every visible ``img`` has ``complete && naturalWidth > 0`` and every plotly chart has drawn
  the data it was given,
- the figures differ from before the action (image URLs, which Streamlit derives from the
  bytes, and a hash of each plotly chart's data), for every action that changes figures.

The page checks this every 4 ms itself (an init script), so Playwright's round trips are not
part of any number. A fast run can reach the page in one frame and never show "running"; then
a websocket quiet for 400 ms marks its end, and the time is taken when the page first looked
final (the notes say how often). Replacing an upload first reruns without a file, which shows
the default example again, so an upload has settled only on figures never shown before.
Each timed action moves to a display state not shown before (an untimed alpha step first
where needed), so no timed change is a browser or server cache hit unless the row says so.
The server runs with ``SIMAM_VIZ_LOG_LEVEL=DEBUG``; its log gives each row's "model runs"
(lines with "analysis ran") and "views" (lines with "render view"). A second
table splits each median into action -> run starts, the run (server work and its messages)
and run end -> settled (images, charts). The last note says how much CPU other processes on
the machine used meanwhile: a shared 2-core machine makes every number here larger.

Rows: upload (a new 400x300 image each time: a bundled scene, resized and tinted per round),
overlay alpha (ArrowRight on the focused slider), colour map, shared scale, class shown again
(computed once untimed, back to top-1, then timed), view switch (tab click), stage and block
(Inside attention), top-k (Channels); ``--cold`` (default): a fresh server per try, timed from
the moment /_stcore/health first answers to the first page's figures settled, 3 tries.
``--full`` runs everything again on three full-size ImageNet ResNet-50s with random weights
and the official key layouts (tests/layouts.py), offered by the app as user files.
``--trace PATH`` records a Chrome trace of one upload and one alpha step and prints where
the renderer's main thread spent its time.

Usage::

    .venv/bin/python benchmarks/app_latency.py                    # demo models + cold start
    .venv/bin/python benchmarks/app_latency.py --full --trace /tmp/app_trace.json
    .venv/bin/python benchmarks/app_latency.py --no-cold --rounds 9 --log-dir /tmp/logs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: harness/, tests/layouts.py, simam_viz/
from harness.apphost import CHROMIUM, CHROMIUM_ARGS, start_app, stop_app  # noqa: E402
from harness.runstate import IDLE, OBSERVER_JS  # noqa: E402

EXAMPLES = ROOT / "app" / "examples"
COLORMAPS = ["jet", "turbo", "inferno", "viridis", "magma"]
TOP1 = "Each model's top-1"
VIEWS = ["Compare models", "Inside attention", "Channels"]  # the views with figures
BLOCKS_PER_STAGE = {1: 3, 2: 4, 3: 6, 4: 3}
ALPHA_STEPS = 20  # 0..1 in steps of 0.05
TRACE_CATEGORIES = ["devtools.timeline", "blink", "v8"]

# Installed before any page script, after harness.runstate's observer (which counts the runs
# and Streamlit's websocket messages and decides which figures are still loading): captures
# the time of the user's action and the armed action's run start and end, and decides
# "settled" every 4 ms. Times are epoch milliseconds (timeOrigin + now), comparable with
# Python's time.time() on the same machine (used for the cold start).
WATCH_JS = r"""
(() => {
  if (window.__bench) return;
  const now = () => performance.timeOrigin + performance.now();
  const R = window.__runstate;
  const B = window.__bench = {result: null, armed: null};
  R.listeners.push((what, t) => {
    const a = B.armed;
    if (!a) return;
    if (what === "start" && a.runStart === null) a.runStart = t;
    if (what === "end") a.runEnd = t;
  });
  const hash = (s) => {  // FNV-1a
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0).toString(16) + ":" + s.length;
  };
  const plotSig = new WeakMap();
  // the figures on the page (image URLs are content hashes, plotly charts a hash of their
  // data) and, from the observer's snapshot, the run state and what is still loading
  B.figures = () => {
    const snap = R.snapshot({charts: true});
    const sigs = [];
    for (const img of document.querySelectorAll("[data-testid='stImage'] img"))
      sigs.push("img:" + (img.currentSrc || img.src));
    for (const gd of document.querySelectorAll(".js-plotly-plot")) {
      const data = gd.data;
      if (!data) continue;  // not drawn yet: the snapshot's pending says so
      let sig = plotSig.get(data);
      if (sig === undefined) { sig = "plot:" + hash(JSON.stringify(data)); plotSig.set(data, sig); }
      sigs.push(sig);
    }
    return {sigs, pending: snap.pending, images: snap.images, state: snap.state};
  };
  // lazy tabs: how many tab panels hold elements (1 expected), for the contract check
  B.panels = () => Array.from(document.querySelectorAll("[role=tabpanel]"))
    .filter((p) => p.querySelector("[data-testid='stElementContainer']")).length;
  // every figure shown at an armed or settled moment; "unseen" actions (uploads) must end on
  // figures never shown before: replacing an upload first reruns without a file, and that
  // run ends on figures seen earlier (the default example's), not on the upload's
  B.everSeen = new Set();
  B.arm = (opts) => {
    B.result = null;
    const current = B.figures().sigs;
    for (const x of current) B.everSeen.add(x);
    const before = opts.unseen ? new Set(B.everSeen) : new Set(current);
    B.armed = {before, runs0: R.runs, msgs0: R.msgs, cand: null, minNew: opts.minNew || 0,
               minImages: opts.minImages || 0, t0: null, armedAt: now(), runStart: null,
               runEnd: null};
  };
  // the first user event after arming is the action's moment
  const mark = (e) => {
    const a = B.armed;
    if (!a || a.t0 !== null) return;
    if (e.type === "change" && !(e.target && e.target.type === "file")) return;
    a.t0 = now(); a.event = e.type;
  };
  for (const type of ["keydown", "mousedown", "pointerdown", "change"])
    document.addEventListener(type, mark, true);
  const QUIET_MS = 400;
  B.check = () => {
    const a = B.armed;
    if (!a || B.result) return;
    const t = now();
    const f = B.figures();
    if (f.state !== "notRunning") { a.cand = null; return; }
    const fresh = f.sigs.filter((s) => !a.before.has(s)).length;
    if (f.pending.length || f.images < a.minImages || fresh < a.minNew) { a.cand = null; return; }
    let settled = t, fallback = false;
    if (R.runs <= a.runs0) {  // no "running" seen (yet)
      if (R.msgs <= a.msgs0) return;
      if (a.cand === null || R.lastMsg > a.cand) { a.cand = t; return; }
      if (t - a.cand < QUIET_MS) return;
      settled = a.cand; fallback = true;  // the page was final when it first looked so
    }
    for (const x of f.sigs) B.everSeen.add(x);
    B.result = {t0: a.t0, event: a.event || null, armedAt: a.armedAt, settled, fallback,
                runStart: a.runStart, runEnd: a.runEnd,
                runs: R.runs - a.runs0, runsTotal: R.runs, fresh, images: f.images,
                figures: f.sigs.length, panels: B.panels()};
  };
  B.diag = () => {
    const a = B.armed || {}, f = B.figures(), before = a.before || new Set();
    return {state: f.state, runs: R.runs, runs0: a.runs0, msgs: R.msgs, msgs0: a.msgs0,
            pending: f.pending, images: f.images,
            fresh: f.sigs.filter((s) => !before.has(s)).length, minNew: a.minNew};
  };
  // the first page: armed from the start (the default example's figures)
  B.arm({minNew: 1, minImages: 2});
  setInterval(B.check, 4);
})();
"""


# --- the server and its log ---------------------------------------------------------------


class ServerLog:
    """The server's log file; counts lines with a marker written since a mark."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def count(self, since: int, marker: str) -> int:
        with open(self.path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace").count(marker)


@dataclass
class Server:
    url: str
    proc: object
    log: ServerLog
    healthy_at: float  # epoch ms when /_stcore/health first answered "ok"


@contextlib.contextmanager
def server(checkpoints: Path | None, log_path: Path):
    url, proc = start_app(checkpoints, env={"SIMAM_VIZ_LOG_LEVEL": "DEBUG"}, log=log_path)
    healthy_at = time.time() * 1000  # start_app returns right after the first "ok"
    try:
        yield Server(url, proc, ServerLog(log_path), healthy_at)
    finally:
        stop_app(proc)


class ForeignCpu:
    """CPU time used by processes outside this benchmark's own process tree since creation.

    This machine is shared (tests, builds): other work competes with the server and the
    browser for its cores, and a table measured meanwhile is slower than the app is.
    """

    def __init__(self) -> None:
        self.before, self.t0 = self._foreign(), time.monotonic()

    @staticmethod
    def _foreign() -> dict[int, float]:
        tick = os.sysconf("SC_CLK_TCK")
        parent, cpu = {}, {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(d.name)] = int(fields[1])
            cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
        own = os.getpid()

        def mine(pid: int) -> bool:
            for _ in range(64):
                if pid == own:
                    return True
                if pid <= 1 or pid not in parent:
                    return False
                pid = parent[pid]
            return False

        return {pid: t for pid, t in cpu.items() if not mine(pid)}

    def report(self) -> str:
        now, wall = self._foreign(), time.monotonic() - self.t0
        used = sum(t - self.before.get(pid, 0.0) for pid, t in now.items())
        share = used / max(wall, 1e-9) / (os.cpu_count() or 1)
        line = (f"other processes on this machine used {used:.0f} CPU-s during these "
                f"{wall:.0f} s ({share:.0%} of its {os.cpu_count()} cores)")
        return line + ("; the numbers above are inflated by them" if share > 0.1 else "")


# --- inputs -------------------------------------------------------------------------------


def upload_image(seed: int) -> bytes:
    """A new realistic 400x300 PNG per seed: a bundled scene, resized, flipped and tinted."""
    scenes = sorted(EXAMPLES.glob("scene_*.png")) or sorted(EXAMPLES.glob("*.jpg"))
    im = Image.open(scenes[seed % len(scenes)]).convert("RGB").resize((400, 300),
                                                                     Image.Resampling.BICUBIC)
    arr = np.asarray(im).astype(np.int16)
    if (seed // len(scenes)) % 2:
        arr = arr[:, ::-1]
    tint = np.random.default_rng(seed).integers(-6, 7, size=3)
    arr = np.clip(arr + tint, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def full_size_checkpoints(folder: Path) -> list[str]:
    """Three ImageNet ResNet-50s with random weights in official key layouts; their labels.

    Neutral file names: the registry's names would be flagged (their hashes cannot match), and
    with no demo/ folder the app offers them as user files.
    """
    import torch

    from simam_viz.weights import catalog
    from tests.layouts import se_timm, simam_official, torchvision_layout

    torch.save(torchvision_layout()[0], folder / "rn50_tv.pth")
    torch.save(se_timm()[0], folder / "se_rn50_timm.pth")
    torch.save(simam_official()[0], folder / "simam_rn50_official.pth.tar")
    items = catalog.available(folder)
    kinds = sorted((i.arch, i.source) for i in items)
    want = [("resnet50", "user file"), ("se_resnet50", "user file"),
            ("simam_resnet50", "user file")]
    if kinds != want:
        raise RuntimeError(f"the app's catalog lists {kinds}, expected {want}")
    return [i.label for i in items]


# --- one browser session ------------------------------------------------------------------


@dataclass
class Sample:
    ms: float
    model_runs: int
    views: int
    script_runs: int
    extra_runs: int
    panels: int
    event: str | None
    fallback: bool = False  # the run's end taken from a quiet websocket (no "running" seen)
    to_start: float | None = None  # action -> the page shows the run started
    run: float | None = None  # run started -> run ended (server work and its messages)
    to_settle: float | None = None  # run ended -> figures loaded and drawn


@dataclass
class Row:
    action: str
    target_ms: float
    samples: list[Sample] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)
    expect_model_runs: int | None = None
    note: str = ""


class Session:
    """One browser context on the app, with the display state it has been driven to."""

    def __init__(self, browser, srv: Server, notes: list[str], timeout_s: float = 300) -> None:
        self.srv, self.notes, self.timeout_ms = srv, notes, timeout_s * 1000
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # one script, so that the observer is in place before the bench code uses it
        self.context.add_init_script(OBSERVER_JS + "\n" + WATCH_JS)
        self.page: Page = self.context.new_page()
        self.state = {"colormap": "jet", "alpha": 10, "alpha_dir": 1, "shared": False,
                      "tab": "Compare models", "stage": 4,
                      "blocks": {s: n - 1 for s, n in BLOCKS_PER_STAGE.items()},
                      "topk": 8, "target": TOP1}
        self.seen: set[tuple] = set()
        self.n_models = 0

    # -- state bookkeeping (so that every timed change shows something not shown before) --

    def key(self, st: dict) -> tuple:
        tab = st["tab"]
        if tab == "Channels":  # charts do not depend on colour map or alpha
            return (tab, st["stage"], st["blocks"][st["stage"]], st["topk"], st["target"])
        base = (tab, st["colormap"], st["alpha"], st["shared"], st["target"])
        if tab == "Inside attention":
            return base + (st["stage"], st["blocks"][st["stage"]])
        return base

    def remember(self) -> None:
        self.seen.add(self.key(self.state))

    def predicted(self, **change) -> dict:
        st = {**self.state, "blocks": dict(self.state["blocks"])}
        blocks = change.pop("blocks", None)
        st.update(change)
        if blocks:
            st["blocks"].update(blocks)
        return st

    def fresh(self, **change) -> None:
        """Untimed alpha steps until the state the next action leads to is a new one."""
        for _ in range(4):
            target = self.predicted(**change)
            if self.key(target) not in self.seen or target["tab"] == "Channels":
                return  # (alpha cannot make a chart new, and charts are not cached anyway)
            self.alpha(timed=None)

    # -- measuring ----------------------------------------------------------------------

    def wait_result(self) -> dict:
        try:
            self.page.wait_for_function("() => window.__bench.result !== null",
                                        timeout=self.timeout_ms, polling=20)
        except Exception as exc:
            diag = self.page.evaluate("window.__bench.diag()")
            raise RuntimeError(f"the page did not settle: {diag}") from exc
        return self.page.evaluate("window.__bench.result")

    def open(self) -> float:
        """Load the page and wait for the first figures; returns the settled epoch ms."""
        self.page.goto(self.srv.url)
        try:
            self.page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
        except Exception:
            self.notes.append("contract: no input[type=file] on the first page within 60 s; "
                              "clicked 'Upload' (old app?)")
            self.page.wait_for_selector(IDLE, timeout=self.timeout_ms)
            self.page.get_by_text("Upload", exact=True).click()
            self.page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
        res = self.wait_result()
        self.after_settle(res)
        self.n_models = max(1, res["images"] - 1)
        self.remember()
        return res["settled"]

    def after_settle(self, res: dict) -> int:
        """Wait out a run started by the settled one (e.g. an st.rerun); how many there were."""
        self.page.wait_for_timeout(150)
        runs = self.page.evaluate("window.__runstate.runs")
        extra = runs - res["runsTotal"]
        if extra or self.page.locator(IDLE).count() == 0:
            self.page.wait_for_selector(IDLE, timeout=self.timeout_ms)
            self.page.wait_for_timeout(300)
            extra = self.page.evaluate("window.__runstate.runs") - res["runsTotal"]
        return extra

    def measure(self, action, row: Row | None, *, min_new: int = 1, min_images: int = 0,
                prepare=None, warm: bool = False, unseen: bool = False) -> Sample:
        """Run ``prepare()`` untimed, then time ``action()`` to the settled page."""
        if prepare is not None:
            prepare()
        mark = self.srv.log.mark()
        self.page.evaluate("o => window.__bench.arm(o)", {"minNew": min_new,
                                                          "minImages": min_images,
                                                          "unseen": unseen})
        t_py = time.time() * 1000
        action()
        res = self.wait_result()
        extra = self.after_settle(res)
        t0 = res["t0"] if res["t0"] is not None else t_py
        start, end = res["runStart"], res["runEnd"]
        sample = Sample(ms=res["settled"] - t0,
                        model_runs=self.srv.log.count(mark, "analysis ran"),
                        views=self.srv.log.count(mark, "render view"),
                        script_runs=res["runs"], extra_runs=extra, panels=res["panels"],
                        event=res["event"], fallback=res["fallback"],
                        to_start=None if start is None else start - t0,
                        run=None if start is None or end is None else end - start,
                        to_settle=None if end is None else res["settled"] - end)
        if row is not None:
            (row.warmup.append(sample.ms) if warm else row.samples.append(sample))
        self.remember()
        return sample

    # -- actions (each updates self.state to what the page now shows) --------------------

    def alpha(self, timed: Row | None, warm: bool = False) -> Sample:
        st = self.state
        options = [st["alpha"] + st["alpha_dir"], st["alpha"] - st["alpha_dir"]]
        options = [a for a in options if 0 <= a <= ALPHA_STEPS]
        new = next((a for a in options if self.key(self.predicted(alpha=a)) not in self.seen),
                   options[0])
        slider = self.page.get_by_role("slider", name="Overlay alpha")
        slider.focus()
        key = "ArrowRight" if new > st["alpha"] else "ArrowLeft"
        st["alpha_dir"] = 1 if new > st["alpha"] else -1
        # on the Channels tab an alpha step changes no figure (the charts do not use it)
        sample = self.measure(lambda: self.page.keyboard.press(key), timed, warm=warm,
                              min_new=0 if st["tab"] == "Channels" else 1)
        st["alpha"] = new
        self.remember()
        return sample

    def choose(self, label: str, option: str, row: Row | None, warm: bool = False,
               typed: str | None = None, **change) -> Sample:
        """Open a selectbox (untimed), filter it, then time the click on ``option``."""
        def prepare() -> None:
            self.fresh(**change)
            self.page.get_by_role("combobox", name=label).click()
            if typed:
                self.page.keyboard.type(typed)
            self.page.get_by_role("option", name=option, exact=True).wait_for()

        sample = self.measure(
            lambda: self.page.get_by_role("option", name=option, exact=True).click(),
            row, prepare=prepare, warm=warm)
        self.state.update(change)
        self.remember()
        return sample

    def pick(self, label: str, option: str, row: Row | None, warm: bool = False,
             **change) -> Sample:
        """Time a click on one option of a radio group (one click is the whole change)."""
        group = self.page.locator("[data-testid='stRadio']").filter(has_text=label)
        sample = self.measure(lambda: group.get_by_text(option, exact=True).click(), row,
                              prepare=lambda: self.fresh(**change), warm=warm)
        self.state.update(change)
        self.remember()
        return sample

    def tab(self, name: str, row: Row | None, warm: bool = False) -> Sample:
        sample = self.measure(lambda: self.page.get_by_role("tab", name=name, exact=True).click(),
                              row, prepare=lambda: self.fresh(tab=name), warm=warm)
        self.state["tab"] = name
        self.remember()
        return sample

    def step_slider(self, label: str, value_key: str, lo: int, hi: int, row: Row | None,
                    warm: bool = False) -> Sample:
        """One keyboard step of a slider to a value (and state) not shown before if possible."""
        st = self.state
        cur = st["blocks"][st["stage"]] if value_key == "block" else st[value_key]
        options = [v for v in (cur + 1, cur - 1) if lo <= v <= hi]

        def change(v: int) -> dict:
            if value_key == "block":
                return {"blocks": {st["stage"]: v}}
            return {value_key: v}

        new = next((v for v in options if self.key(self.predicted(**change(v))) not in self.seen),
                   options[0])

        def prepare() -> None:
            self.fresh(**change(new))
            self.page.get_by_role("slider", name=label).focus()

        key = "ArrowRight" if new > cur else "ArrowLeft"
        sample = self.measure(lambda: self.page.keyboard.press(key), row, prepare=prepare,
                              warm=warm)
        if value_key == "block":
            st["blocks"][st["stage"]] = new
        else:
            st[value_key] = new
        self.remember()
        return sample

    def toggle_shared(self, row: Row | None, warm: bool = False) -> Sample:
        new = not self.state["shared"]
        label = "One colour scale for all models"
        sample = self.measure(lambda: self.page.get_by_text(label, exact=True).click(), row,
                              prepare=lambda: self.fresh(shared=new), warm=warm)
        self.state["shared"] = new
        self.remember()
        return sample

    def options_of(self, label: str) -> list[str]:
        self.page.get_by_role("combobox", name=label).click()
        self.page.get_by_role("option").first.wait_for()
        texts = self.page.get_by_role("option").all_inner_texts()
        self.page.keyboard.press("Escape")
        return [t.strip() for t in texts]

    def close(self) -> None:
        self.context.close()


# --- the table ----------------------------------------------------------------------------


def run_table(browser, srv: Server, rounds: int, warmup: int, notes: list[str],
              upload_target: float, select_models: list[str] | None = None,
              trace: Path | None = None) -> list[Row]:
    s = Session(browser, srv, notes)
    s.open()
    if select_models:  # make the app compare all of them (untimed)
        for label in select_models:
            s.page.get_by_role("combobox", name="Compare").click()
            s.page.get_by_role("option").first.wait_for()
            option = s.page.get_by_role("option", name=label, exact=True)
            if option.count():  # (the multiselect lists only what is not selected yet)
                s.measure(option.click, None)
            s.page.keyboard.press("Escape")
        s.n_models = len(select_models)
        s.seen.clear()
        s.remember()
    n = s.n_models
    total = warmup + rounds
    rows: list[Row] = []

    def row(action: str, target: float, expect: int | None = 0, note: str = "") -> Row:
        r = Row(action, target, expect_model_runs=expect, note=note)
        rows.append(r)
        return r

    # upload: every figure on the Compare tab must be new (input + one CAM per model)
    r = row("upload -> settled page", upload_target, expect=n)
    for i in range(total):
        data = upload_image(1000 * rounds + i)
        s.measure(lambda data=data, i=i: s.page.locator("input[type=file]").set_input_files(
            files=[{"name": f"bench{i}.png", "mimeType": "image/png", "buffer": data}]),
            r, min_new=n + 1, min_images=n + 1, warm=i < warmup, unseen=True)
    s.state["target"] = TOP1
    s.seen.clear()
    s.remember()

    r = row("overlay alpha, one step (ArrowRight)", 150)
    for i in range(total):
        s.alpha(r, warm=i < warmup)

    r = row("colour map", 150)
    for i in range(total):
        nxt = COLORMAPS[(COLORMAPS.index(s.state["colormap"]) + 1) % len(COLORMAPS)]
        s.choose("Colour map", nxt, r, warm=i < warmup, colormap=nxt)

    r = row("shared colour scale toggle", 150)
    for i in range(total):
        s.toggle_shared(r, warm=i < warmup)

    # a class already computed: computed once untimed, then back to top-1, then timed
    classes = [c for c in s.options_of("Explain class") if c != TOP1]
    cls = classes[min(1, len(classes) - 1)]
    mark = srv.log.mark()
    s.choose("Explain class", cls, None, typed=cls, target=cls)
    computed = srv.log.count(mark, "analysis ran")
    r = row("class shown again (already computed)", 150,
            note=f"'{cls}' computed once untimed ({computed} model runs)")
    for i in range(total):
        s.choose("Explain class", TOP1, None, typed="Each model", target=TOP1)
        s.choose("Explain class", cls, r, warm=i < warmup, typed=cls, target=cls)
    s.choose("Explain class", TOP1, None, typed="Each model", target=TOP1)

    r = row("view switch (tab click)", 150)
    for i in range(total):
        nxt = VIEWS[(VIEWS.index(s.state["tab"]) + 1) % len(VIEWS)]
        sample = s.tab(nxt, r, warm=i < warmup)
        if sample.panels > 1:
            notes.append(f"contract: {sample.panels} tab panels hold elements after opening "
                         f"{nxt} (lazy tabs: 1 expected)")

    if s.state["tab"] != "Inside attention":
        s.tab("Inside attention", None)
    r = row("stage (Inside attention)", 150)
    for i in range(total):
        stage = 4 - (5 - s.state["stage"]) % 4  # 4 -> 3 -> 2 -> 1 -> 4 ...
        s.pick("Stage", str(stage), r, warm=i < warmup, stage=stage)

    r = row("block slider step (Inside attention)", 150)
    for i in range(total):
        s.step_slider("Block", "block", 0, BLOCKS_PER_STAGE[s.state["stage"]] - 1, r,
                      warm=i < warmup)

    s.tab("Channels", None)
    r = row("top-k step (Channels)", 150)
    for i in range(total):
        s.step_slider("Top-k channels", "topk", 1, 16, r, warm=i < warmup)

    if trace is not None:
        s.tab("Compare models", None)
        record_trace(browser, s, trace, n)
    s.close()
    return rows


def cold_starts(browser, checkpoints: Path | None, tries: int, log_dir: Path, tag: str,
                notes: list[str]) -> Row:
    row = Row("cold: health ok -> first figures", 3000, expect_model_runs=None,
              note="fresh server each; model runs include the start-up warm-up")
    for k in range(tries):
        with server(checkpoints, log_dir / f"{tag}_cold{k}.log") as srv:
            s = Session(browser, srv, notes)
            settled = s.open()
            row.samples.append(Sample(ms=settled - srv.healthy_at,
                                      model_runs=srv.log.count(0, "analysis ran"),
                                      views=srv.log.count(0, "render view"), script_runs=1,
                                      extra_runs=0, panels=0, event=None))
            s.close()
    return row


# --- the trace ----------------------------------------------------------------------------

CATEGORY = {
    "scripting": ("FunctionCall", "EvaluateScript", "v8.compile", "v8.run", "TimerFire",
                  "EventDispatch", "RunMicrotasks", "v8.callFunction", "FireAnimationFrame",
                  "XHRReadyStateChange", "V8.GC", "MinorGC", "MajorGC", "GC", "v8.",
                  "V8.", "CompileScript", "CompileCode", "HandlePostMessage"),
    "rendering": ("Layout", "UpdateLayoutTree", "RecalculateStyles", "HitTest", "PrePaint",
                  "UpdateLayerTree", "ParseAuthorStyleSheet", "IntersectionObserver",
                  "Document::", "LocalFrameView::", "StyleEngine"),
    "painting": ("Paint", "Decode", "ImageDecode", "Rasterize", "Composite", "Layerize",
                 "Commit", "Draw"),
    "loading": ("Resource", "ParseHTML", "ResourceReceive"),
}


def category_of(name: str) -> str:
    for cat, prefixes in CATEGORY.items():
        if name.startswith(prefixes):
            return cat
    return "other"


def summarize_trace(raw: bytes, walls: dict[str, float] | None = None) -> str:
    """Self time per event name on the renderer main thread, split at the phase markers."""
    doc = json.loads(raw)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name")
             for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    mains = [k for k, v in names.items() if v == "CrRendererMain"]
    per_thread: dict[tuple, list] = defaultdict(list)
    open_b: dict[tuple, list] = defaultdict(list)
    for e in events:
        k = (e.get("pid"), e.get("tid"))
        if k not in mains:
            continue
        ph = e.get("ph")
        if ph == "X" and "dur" in e:
            per_thread[k].append((e["ts"], e["dur"], e["name"]))
        elif ph == "B":
            open_b[k].append(e)
        elif ph == "E" and open_b[k]:
            b = open_b[k].pop()
            per_thread[k].append((b["ts"], e["ts"] - b["ts"], b["name"]))
    if not per_thread:
        return "trace: no renderer main thread events found"
    main = max(per_thread, key=lambda k: sum(d for _, d, _ in per_thread[k]))
    marks = sorted((e["ts"], e.get("args", {}).get("data", {}).get("message", ""))
                   for e in events if e.get("name") == "TimeStamp"
                   and str(e.get("args", {}).get("data", {}).get("message", "")).startswith(
                       "bench:"))
    phases = [m.split(":", 1)[1] for _, m in marks] or ["all"]

    def phase_of(ts: float) -> str:
        current = phases[0]
        for mts, m in marks:
            if ts >= mts:
                current = m.split(":", 1)[1]
        return current

    spans = sorted(per_thread[main], key=lambda x: (x[0], -x[1]))
    self_us: dict[tuple[str, str], float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    stack: list[list] = []  # [end, name, phase, self]
    for ts, dur, name in spans:
        while stack and stack[-1][0] <= ts:
            end, n, ph, own = stack.pop()
            self_us[(n, ph)] += own
        ph = phase_of(ts)
        if stack:
            stack[-1][3] -= min(dur, stack[-1][0] - ts)
        else:
            busy[ph] += dur
        stack.append([ts + dur, name, ph, float(dur)])
    while stack:
        end, n, ph, own = stack.pop()
        self_us[(n, ph)] += own
    by_name: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (n, ph), us in self_us.items():
        by_name[n][ph] += us / 1000
    by_cat: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for n, per in by_name.items():
        for ph, ms in per.items():
            by_cat[category_of(n)][ph] += ms
    decode = sum(e.get("dur", 0) for e in events if e.get("pid") == main[0]
                 and "Decode" in e.get("name", "") and e.get("ph") == "X") / 1000
    lines = [f"trace: renderer main thread (pid {main[0]}); phases {', '.join(phases)}; "
             "self time in ms (time inside the event minus its children)",
             "", "| event (self time) | category | " + " | ".join(phases) + " | total |",
             "|---|---|" + "---|" * (len(phases) + 1)]
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1].values()))[:10]
    for n, per in top:
        lines.append(f"| {n} | {category_of(n)} | "
                     + " | ".join(f"{per.get(p, 0):.1f}" for p in phases)
                     + f" | {sum(per.values()):.1f} |")
    lines += ["", "| category | " + " | ".join(phases) + " | total |",
              "|---|" + "---|" * (len(phases) + 1)]
    for cat in ("scripting", "rendering", "painting", "loading", "other"):
        per = by_cat.get(cat, {})
        lines.append(f"| {cat} | " + " | ".join(f"{per.get(p, 0):.1f}" for p in phases)
                     + f" | {sum(per.values()):.1f} |")
    lines.append("| main thread busy (top-level tasks) | "
                 + " | ".join(f"{busy.get(p, 0) / 1000:.1f}" for p in phases)
                 + f" | {sum(busy.values()) / 1000:.1f} |")
    if walls:
        lines.append("| the action, timed (action -> settled) | "
                     + " | ".join(f"{walls.get(p, float('nan')):.1f}" for p in phases)
                     + f" | {sum(walls.values()):.1f} |")
    lines.append("\n(a phase runs from its marker to the next one, so it also holds the "
                 "benchmark's short wait after the page settled; a timed action much longer "
                 "than the main thread's busy time waited for the server)")
    lines.append(f"image decoding in the renderer process, all threads: {decode:.1f} ms")
    return "\n".join(lines)


def record_trace(browser, s: Session, path: Path, n: int) -> None:
    page = s.page
    browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
    try:
        page.evaluate("console.timeStamp('bench:upload')")
        data = upload_image(999_999)
        up = s.measure(lambda: page.locator("input[type=file]").set_input_files(
            files=[{"name": "trace.png", "mimeType": "image/png", "buffer": data}]),
            None, min_new=n + 1, min_images=n + 1, unseen=True)
        s.seen.clear()
        s.remember()
        page.evaluate("console.timeStamp('bench:alpha')")
        al = s.alpha(None)
    finally:
        raw = browser.stop_tracing()
    path.write_bytes(raw)
    print(f"\ntrace of one upload ({up.ms:.0f} ms) and one alpha step ({al.ms:.0f} ms) "
          f"written to {path} (open it in chrome://tracing or the DevTools Performance panel)")
    print(summarize_trace(raw, {"upload": up.ms, "alpha": al.ms}))


# --- report -------------------------------------------------------------------------------


def spread(values: list[int]) -> str:
    lo, hi = min(values, default=0), max(values, default=0)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def print_table(title: str, rows: list[Row], notes: list[str]) -> None:
    print(f"\n### {title}\n")
    print("| action | median ms | p90/max ms | target | ok | model runs | views | n |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = [x.ms for x in r.samples]
        if not ms:
            continue
        med = statistics.median(ms)
        p90 = float(np.percentile(ms, 90))
        ok = "yes" if med <= r.target_ms else "NO"
        runs = spread([x.model_runs for x in r.samples])
        if r.expect_model_runs is not None and any(x.model_runs != r.expect_model_runs
                                                   for x in r.samples):
            runs += f" (expected {r.expect_model_runs})"
        print(f"| {r.action} | {med:.0f} | {p90:.0f} / {max(ms):.0f} | <= {r.target_ms:.0f} "
              f"| {ok} | {runs} | {spread([x.views for x in r.samples])} | {len(ms)} |")
    print("\nwhere the time went (medians, ms): action -> run starts (request, queueing) | "
          "run (server script run and its messages) | run end -> settled (images, charts)\n")
    print("| action | to run start | run | to settled |\n|---|---|---|---|")
    for r in rows:
        parts = []
        for attr in ("to_start", "run", "to_settle"):
            vals = [getattr(x, attr) for x in r.samples if getattr(x, attr) is not None]
            parts.append(f"{statistics.median(vals):.0f}" if vals else "-")
        if r.samples and any(p != "-" for p in parts):
            print(f"| {r.action} | " + " | ".join(parts) + " |")
    print()
    for r in rows:
        extra = [x for x in r.samples if x.extra_runs or x.script_runs > 1]
        bits = []
        if r.note:
            bits.append(r.note)
        if r.samples:
            bits.append("samples " + ", ".join(f"{x.ms:.0f}" for x in r.samples) + " ms")
        if r.warmup:
            bits.append("untimed warm-up " + ", ".join(f"{w:.0f}" for w in r.warmup) + " ms")
        if extra:
            bits.append(f"{len(extra)} of {len(r.samples)} actions started more than one run")
        quiet = [x for x in r.samples if x.fallback]
        if quiet:
            bits.append(f"{len(quiet)} of {len(r.samples)} runs never showed 'running' (end "
                        "taken from a quiet websocket)")
        if r.samples and not r.action.startswith("cold") and any(x.event is None
                                                                 for x in r.samples):
            bits.append("some actions timed from Playwright's call (no DOM event seen)")
        if r.samples and any(x.views > 1 for x in r.samples) and "upload" not in r.action:
            bits.append("more than one view rendered per action")
        if bits:
            print(f"- {r.action}: " + "; ".join(bits))
    for note in dict.fromkeys(notes):
        print(f"- {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed actions per row (>= 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed actions first, per row")
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="time 3 cold starts (fresh server each; default on)")
    parser.add_argument("--cold-tries", type=int, default=3)
    parser.add_argument("--full", action="store_true",
                        help="also run everything on three full-size ResNet-50s")
    parser.add_argument("--trace", type=Path, help="write a Chrome trace of an upload and an "
                        "alpha step here and summarise it")
    parser.add_argument("--log-dir", type=Path, help="keep the server logs here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="app_latency_")))
        log_dir = args.log_dir or tmp / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        sets = [("demo models (checkpoints/)", None, None, 600)]
        if args.full:
            folder = tmp / "checkpoints"
            folder.mkdir()
            labels = full_size_checkpoints(folder)
            sets.append(("three full-size ResNet-50s (random weights, user files)", folder,
                         labels, 1200))
        for k, (title, checkpoints, labels, upload_target) in enumerate(sets):
            notes: list[str] = []
            rows = []
            tag = f"set{k}"
            foreign = ForeignCpu()
            if args.cold:
                rows.append(cold_starts(browser, checkpoints, args.cold_tries, log_dir, tag,
                                        notes))
            with server(checkpoints, log_dir / f"{tag}_table.log") as srv:
                rows += run_table(browser, srv, args.rounds, args.warmup, notes, upload_target,
                                  select_models=labels,
                                  trace=args.trace if k == 0 else None)
            notes.append(foreign.report())
            print_table(title, rows, notes)
        browser.close()
        if args.log_dir:
            print(f"\nserver logs in {args.log_dir}")


if __name__ == "__main__":
    main()
