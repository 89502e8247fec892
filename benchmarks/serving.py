"""Many browser sessions against one app server: load, the busy path, and a memory soak.

Loopback only, bounded, one `streamlit run` per phase (harness/apphost.py), Debian's chromium
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
- capacity: what one upload costs the server and how many a core completes, for operators
  sizing replicas. Per model set (the three demo models, the app's default; a full-size
  ResNet-50, SE-ResNet-50 and SimAM-ResNet-50 with random weights saved in their official
  layouts, selected through the page), with the server pinned to ``--server-cores`` (0) and
  this script, Playwright and chromium to ``--browser-cores`` (1), both at nice -10, the app
  as the image runs it (no checkpoint-download panel):
  1. one session uploads distinct images one at a time, in blocks; the server's CPU seconds
     (utime + stime of all its threads and children, /proc/PID/stat) per upload, and after
     each block the models' own work for the same images: ``analyze(model, image,
     blocks="all")`` per model, CPU time in a child process on the server's cores (once
     with the other cores quiet, once beside a busy loop on the browsers' cores, as during
     the uploads); the ratio of the medians. ``--profile DIR`` records the server with
     py-spy meanwhile (``pip install py-spy``) and prints where its working samples are.
  2. saturation: ``--capacity-sessions`` (6) sessions upload distinct images back to back
     for ``--seconds`` (30); uploads per second per server core and the latency p50/p95.
     Where the browsers' core could not drive a whole server core (the demo models), the
     server gets a CPU limit (a cgroup, as a container's) of what they can drive, and the
     rate is per core of that limit; the server's busy share of its limit says whether it
     was saturated.

An upload has settled when its runs have ended (or, for a run that never showed "running",
the websocket has been quiet for a second) and the page no longer shows its first page's
figures (the default example: replacing an upload first reruns without a file, which shows
it). A page that does not settle in 120 s is counted as "stuck" and printed with what it
showed, and the phase goes on.

Usage: ``python benchmarks/serving.py [load] [busy] [soak] [capacity] [--sessions 200]
[--plot PATH]``; ``capacity`` takes 4-6 minutes (``--sets demo``: 1-2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

ROOT = Path(__file__).resolve().parents[1]
# the repository root: harness/, tests/layouts.py and the simam_viz beside this file, as the
# server imports it
sys.path.insert(0, str(ROOT))
from harness import runstate  # noqa: E402
from harness.apphost import CHROMIUM, CHROMIUM_ARGS, rss_mb, start_app, stop_app  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from app_latency import ForeignCpu  # noqa: E402

UPLOAD_LOCK = asyncio.Lock()
ALL_FIGURES_P95_TARGET_S = 3.0  # 8 sessions uploading at once: every page complete by then
FIRST_PAGE: dict[int, frozenset[str]] = {}  # id(page) -> figures of its first page (the example)
ALERTS = "[data-testid='stAlert']"
# no message for this long, idle, no "running" seen: the run has ended (harness.runstate)
QUIET_MSG_MS = 1000


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


async def settle(page: Page, runs_before: int, before: list[str] | None = None,
                 start: float | None = None, timeout: float = 120.0,
                 avoid: set[str] | frozenset[str] = frozenset(),
                 msgs_before: int | None = None) -> float | None:
    """Poll until the runs an interaction started have ended and the page stays idle.

    Returns seconds from `start` to the first figure in neither `before` nor `avoid` (None if
    none came). A page that shows any figure of `avoid` (the session's first page, the default
    example) has not settled: replacing an upload first reruns without a file, which shows the
    example, and only then runs with the new file. Whether the runs have ended is
    harness.runstate's verdict; a run seen ending must then hold for 0.6 s (no rerun after it).
    """
    first, quiet_since, quiet_runs = None, None, -1
    last: dict = {}
    async for last in runstate.snapshots(
            page, timeout=timeout, interval=0.02, figures=False, avoid=avoid,
            since={"runs": runs_before, "msgs": msgs_before}, quiet_ms=QUIET_MSG_MS):
        if "error" in last:
            continue
        now = time.perf_counter()
        if first is None and before is not None and any(x not in before and x not in avoid
                                                        for x in last["srcs"]):
            first = now - (start or now)
        if not last["settled"]:
            quiet_since, quiet_runs = None, -1
        elif last["runs"] == runs_before:
            return first  # a run that never showed "running": its websocket went quiet
        elif quiet_since is None or last["runs"] != quiet_runs:
            quiet_since, quiet_runs = now, last["runs"]
        elif now - quiet_since > 0.6:
            return first
    srcs = last.get("srcs", [])
    alerts = await page.locator(ALERTS).all_inner_texts()
    raise StuckError(f"the page did not settle in {timeout:.0f} s: state {last.get('state')}, "
                     f"runs ended {last.get('runs', runs_before) - runs_before}, messages "
                     f"{last.get('msgs', 0) - (msgs_before or 0)}, {len(srcs)} figures "
                     f"({len(avoid.intersection(srcs))} of the first page's), alerts {alerts}")


async def open_session(browser: Browser, url: str):
    """A new context (its own Streamlit session), its first page (the default example) idle.

    The uploader is on the page from the start; only an older app that hides it behind an
    "Upload" choice gets the click.
    """
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(runstate.OBSERVER_JS)
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_selector(runstate.IDLE, timeout=300_000)
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
    await page.wait_for_selector(runstate.IDLE, timeout=300_000)
    FIRST_PAGE[id(page)] = frozenset((await runstate.snapshot(page))["srcs"])
    return context, page


async def send(page: Page, name: str, data: bytes, *, digests: bool = True) -> dict:
    """Upload; return seconds to the first new figure and to a settled page, and what it shows.

    ``digests=False`` skips fetching the figures again (the capacity phase counts the
    server's CPU, and those extra requests are not a visitor's)."""
    shown_before = await runstate.snapshot(page)
    before, runs, msgs = shown_before["srcs"], shown_before["runs"], shown_before["msgs"]
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
    srcs = (await runstate.snapshot(page))["srcs"]
    # figures are compared by content: Streamlit names media by their hash, so the same figure
    # for the same pixels keeps its URL and is not "new" on the page
    figures = []
    for src in srcs[:4] if digests else ():
        body = await (await page.request.get(src)).body()
        figures.append(hashlib.sha256(body).hexdigest()[:16])
    preds = await page.locator("ol li").all_inner_texts()
    return {"first": first, "total": total, "alerts": alerts, "figures": figures,
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


# --- capacity: the server's CPU per upload, against the models' own work ---------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
CAPACITY_SETS = {  # name -> title, uploads per block, blocks (server and model work alternate)
    "demo": ("three demo models (default selection)", 4, 5),
    "full": ("three full-size ResNet-50s (random weights, official layouts)", 2, 3),
}
GENERATOR_SHARE = 0.5  # at saturation the browsers may use this much of their cores at most
# py-spy samples whose innermost frame is one of these are a thread waiting, not working
IDLE_FRAMES = ("EpollSelector.select", "PollingPathWatcher._schedule", "Condition.wait",
               "Event.wait", "Queue.get", "_worker (concurrent/futures/thread.py:81)")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # fields 14-17 of proc(5)


def tree_cpu(exclude: int) -> float:
    """CPU seconds used so far by this process and its descendants, except ``exclude`` (the
    server) and its own: the load generator (Playwright's driver, chromium, this script)."""
    parent, cpu = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)] = int(fields[1])
            cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    own, total = os.getpid(), 0.0
    for pid, used in cpu.items():
        p = pid
        while p > 1 and p in parent and p not in (own, exclude):
            p = parent[p]
        total += used if p == own else 0.0
    return total


def cores(text: str) -> set[int]:
    """'0' or '0,1' or '0-3' as a set of CPU numbers."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@contextlib.contextmanager
def pinned(cpus: set[int]):
    """This thread, and every process or thread it starts meanwhile, on ``cpus`` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class CpuQuota:
    """A CPU limit for one process, as a container's (cgroup cpu.max / cfs_quota_us).

    Used when the browsers cannot drive the whole server: a server limited to a fraction
    of a core saturates at that fraction, and its uploads per second per core are measured.
    ``None`` where this machine offers no writable cgroup (not root, no cpu controller).
    """

    def __init__(self, pid: int, cores_: float) -> None:
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        period = 100_000
        if (v2 / "cgroup.controllers").exists() and "cpu" in (
                v2 / "cgroup.controllers").read_text().split():
            self.dir = v2 / f"simam_capacity_{os.getpid()}"
            self.dir.mkdir()
            (self.dir / "cpu.max").write_text(f"{int(cores_ * period)} {period}")
            self.root = v2
        else:
            self.dir = v1 / f"simam_capacity_{os.getpid()}"
            self.dir.mkdir()
            (self.dir / "cpu.cfs_period_us").write_text(str(period))
            (self.dir / "cpu.cfs_quota_us").write_text(str(int(cores_ * period)))
            self.root = v1
        for tid in os.listdir(f"/proc/{pid}/task"):  # (v1 moves threads one by one)
            (self.dir / ("cgroup.threads" if self.root == v2 else "tasks")).write_text(tid)
        self.cores, self.pid = cores_, pid

    @classmethod
    def create(cls, pid: int, cores_: float) -> CpuQuota | None:
        try:
            return cls(pid, cores_)
        except OSError:
            return None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                (self.root / ("cgroup.threads" if self.root.name == "cgroup" else "tasks")
                 ).write_text(tid)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def model_work_main(folder: str, keys: str) -> None:
    """(Child process, on the server's cores.) Loads the models, then for each line of seeds
    on stdin prints the CPU seconds of ``analyze(model, image, blocks="all")`` for every model,
    per image: the models' own work for the uploads the server just handled."""
    import torch

    from simam_viz.engine.analysis import analyze
    from simam_viz.images import load_image
    from simam_viz.weights import catalog

    by_key = {i.key: i for i in catalog.available(folder)}
    models = [catalog.load(by_key[k], "cpu") for k in keys.split(",")]

    def work(seed: int) -> float:
        image = load_image(image_bytes(seed))
        start = time.process_time()  # every thread of this process
        for model in models:
            analyze(model, image, blocks="all")
        return time.process_time() - start

    for seed in (1, 2):  # first-call costs, as the server's warm-up pays them
        work(seed)
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        print(json.dumps([work(int(s)) for s in line.split(",")]), flush=True)


class ModelWork:
    """The models' own work, measured in a child process on the server's cores between the
    server's blocks of uploads (so both see the same machine)."""

    def __init__(self, folder: Path, keys: list[str], cpus: set[int],
                 env: dict[str, str]) -> None:
        with pinned(cpus):
            self.proc = subprocess.Popen([sys.executable, __file__, "--model-work", str(folder),
                                          ",".join(keys)], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True,
                                         env={**os.environ, **env})
        self.threads = json.loads(self.proc.stdout.readline())["threads"]

    def __call__(self, seeds: list[int], neighbour: set[int] | None = None) -> list[float]:
        """CPU seconds per image; with ``neighbour``, while a busy loop runs on those CPUs.

        The server's uploads are measured while the browsers keep their cores busy, and on
        this machine the same analysis costs 10-20 % more CPU time when the other core is
        busy (shared caches, the host's scheduling of the two vCPUs): the like-for-like
        model work is the one measured beside a busy neighbour.
        """
        spin = None
        if neighbour:
            with pinned(neighbour):
                spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.2)
        try:
            self.proc.stdin.write(",".join(map(str, seeds)) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())
        finally:
            if spin is not None:
                spin.kill()
                spin.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def full_size_folder(folder: Path) -> Path:
    """ResNet-50, SE-ResNet-50 and SimAM-ResNet-50 at full width, random weights, saved in
    their official key layouts (tests/layouts.py), as an operator's checkpoints/ would be."""
    import torch

    from tests.layouts import se_timm, simam_official, torchvision_layout

    torch.save(torchvision_layout()[0], folder / "rn50_tv.pth")
    torch.save(se_timm()[0], folder / "se_rn50_timm.pth")
    torch.save(simam_official()[0], folder / "simam_rn50_official.pth.tar")
    return folder


async def select_models(page: Page, labels: list[str]) -> None:
    """Make the page compare ``labels`` too (the sidebar's multiselect), untimed."""
    box = page.get_by_role("combobox", name="Compare")
    for label in labels:
        await box.click()
        await page.get_by_role("option").first.wait_for()
        option = page.get_by_role("option", name=label, exact=True)
        if await option.count():  # (it lists only what is not selected yet)
            await option.click()
            await page.wait_for_timeout(300)
            await page.wait_for_selector(runstate.IDLE, timeout=300_000)
        await page.keyboard.press("Escape")


async def shown(page: Page, name: str, count: int, timeout: float = 120.0) -> None:
    """Poll until the page shows the figures of the upload ``name`` (at least ``count``): the
    run has ended, the caption names this upload, and every image has loaded."""
    try:
        await runstate.settled(page, name=name, count=count, timeout=timeout)
    except TimeoutError as exc:
        alerts = await page.locator(ALERTS).all_inner_texts()
        raise StuckError(f"{name} not shown in {timeout:.0f} s; alerts {alerts}") from exc


async def upload_shown(page: Page, name: str, data: bytes, count: int) -> float:
    """Upload and wait until its figures are on the page; seconds from the hand-over."""
    async with UPLOAD_LOCK:
        start = time.perf_counter()
        await page.locator("input[type=file]").set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    await shown(page, name, count)
    return time.perf_counter() - start


async def saturate(pages: list[Page], pid: int, count: int, seconds: float,
                   seed0: int) -> dict:
    """Every page uploads distinct images back to back for ``seconds``; what got done."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    serial = iter(range(seed0, seed0 + 100_000))

    async def loop(page: Page) -> None:
        while time.perf_counter() < stop:
            seed = next(serial)
            try:
                latencies.append(await upload_shown(page, f"sat{seed}.png", image_bytes(seed),
                                                    count))
            except StuckError as exc:
                failures["busy" if "busy" in str(exc) else "stuck"] += 1

    foreign = ForeignCpu()
    cpu0, gen0, wall0 = cpu_seconds(pid), tree_cpu(pid), time.perf_counter()
    await asyncio.gather(*(loop(p) for p in pages))
    wall = time.perf_counter() - wall0
    return {"done": len(latencies), "wall": wall, "cpu": cpu_seconds(pid) - cpu0,
            "generator": tree_cpu(pid) - gen0, "latencies": latencies,
            "failures": dict(failures), "foreign": foreign.report()}


def profile_summary(raw: Path, top: int = 22) -> list[str]:
    """py-spy's raw (collapsed) stacks as lines: the share of the working samples (waiting
    threads left out) in which each function is on the stack, and where it is innermost."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[1:]  # [0] names the thread
        if not frames or frames[-1].startswith(IDLE_FRAMES):
            idle += int(n)
            continue
        total += int(n)
        names = {f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames}
        for name in names:
            inclusive[name] += int(n)
        own[frames[-1]] += int(n)
    if not total:
        return ["py-spy recorded no working samples"]
    boring = ("threading.py", "runpy", "click/", "cli.py", "bootstrap.py", "uvicorn/",
              "runners.py", "base_events.py", "__main__", "script_runner.py", "exec_code.py",
              "thread.py", "metrics_util.py", "module.py")
    lines = [f"py-spy: {total} working samples ({idle} waiting left out); share with the "
             "function on the stack:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(200)
              if not any(b in name for b in boring)][:top]
    lines.append("innermost frames:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top // 2)]
    return lines


class Spy:
    """``py-spy record`` of the server (raw stacks) while the block runs, if asked for."""

    def __init__(self, pid: int, out: Path | None, native: bool) -> None:
        self.out, self.proc = out, None
        if out is None:
            return
        exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:"
                                          f"{os.environ.get('PATH', '')}")
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw",
                                      "--rate", "250", "--nonblocking", "--output", str(out)]
                                     + (["--native"] if native else []),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> list[str]:
        if self.proc is None:
            return []
        self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        self.proc.wait(60)
        return profile_summary(self.out) + [f"raw stacks: {self.out}"]


async def capacity_set(p, name: str, folder: Path, args: argparse.Namespace,
                       server_cpus: set[int]) -> dict:
    """One model set: server CPU per upload against the models' own work (one session,
    blocks alternating), then the saturation throughput."""
    from simam_viz.weights import catalog

    title, per_block, blocks = CAPACITY_SETS[name]
    blocks = args.blocks or blocks
    items = catalog.available(folder)
    wanted = ([i for i in items if i.source == "user file"] if name == "full"
              else catalog.default_selection(items))
    defaults = catalog.default_selection(items)
    out: dict = {"name": name, "title": title, "models": [i.label for i in wanted],
                 "through_page": [i.key for i in wanted] != [i.key for i in defaults]}
    count = len(wanted) + 1  # the input and one Grad-CAM per model
    browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    env = {"SIMAM_VIZ_FETCH": "1" if args.fetch_panel else "0"}  # as the image: no panel
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    with pinned(server_cpus):
        url, proc = start_app(folder, env=env)
    work = ModelWork(folder, [i.key for i in wanted], server_cpus, env)
    quota = None
    try:
        _, page = await open_session(browser, url)
        if out["through_page"]:
            await select_models(page, [i.label for i in wanted])
        for k in range(2):  # untimed: loads the models not warmed, first passes
            await upload_shown(page, f"warm{k}.png", image_bytes(7000 + k), count)
        await asyncio.sleep(1.0)
        cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
        await asyncio.sleep(3.0)
        out["idle"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
        server, model, busy, generator, latency = [], [], [], [], []
        spy = Spy(proc.pid, args.profile / f"{name}.txt" if args.profile else None,
                  args.native)
        for b in range(blocks):
            seeds = [7100 + per_block * b + k for k in range(per_block)]
            cpu0, gen0 = cpu_seconds(proc.pid), tree_cpu(proc.pid)
            latency += [await upload_shown(page, f"one{s}.png", image_bytes(s), count)
                        for s in seeds]
            server.append((cpu_seconds(proc.pid) - cpu0) / per_block)
            generator.append((tree_cpu(proc.pid) - gen0) / per_block)
            model.append(float(np.mean(work(seeds))))
            busy.append(float(np.mean(work(seeds, args.browser_cpus - server_cpus))))
        out["profile"] = spy.stop()
        out.update(server=server, model=model, busy_model=busy, threads=work.threads,
                   generator=float(np.median(generator)), one_p50=pct(latency, 50),
                   uploads=blocks * per_block)
        if args.seconds <= 0:
            return out
        pages = [page] + [(await open_session(browser, url))[1]
                          for _ in range(args.capacity_sessions - 1)]
        for extra in pages[1:] if out["through_page"] else ():
            await select_models(extra, [i.label for i in wanted])
        # the browsers' cores must not be the limit: cap the server below what they drive
        drive = GENERATOR_SHARE * len(args.browser_cpus) * np.median(server) / out["generator"]
        if drive < len(server_cpus) and args.quota:
            quota = CpuQuota.create(proc.pid, round(max(0.1, drive), 2))
        out["quota"] = quota.cores if quota else None
        out["saturation"] = await saturate(pages, proc.pid, count, args.seconds, 20_000)
    finally:
        if quota:
            quota.remove()
        work.close()
        stop_app(proc)
        await browser.close()
    return out


def capacity_report(r: dict, server_cpus: set[int], sessions: int) -> None:
    server, model = float(np.median(r["server"])), float(np.median(r["model"]))
    busy = float(np.median(r["busy_model"]))
    print(f"\n{r['title']}: {', '.join(r['models'])}"
          + (" (selected through the page)" if r["through_page"] else " (the app's default)"))
    print(f"  server CPU per upload: {1e3 * server:.0f} ms (median of {len(r['server'])} "
          f"blocks: {', '.join(f'{1e3 * x:.0f}' for x in r['server'])}; idle server "
          f"{1e3 * r['idle']:.0f} ms/s), {r['uploads']} uploads one at a time, "
          f"p50 {r['one_p50']:.2f} s")
    print(f"  models' own work, analyze(blocks='all') in one process, {r['threads']} torch "
          f"thread(s): {1e3 * model:.0f} ms CPU per upload with the other cores quiet, "
          f"{1e3 * busy:.0f} ms beside a busy loop on the browsers' cores, as the server "
          f"ran (blocks: {', '.join(f'{1e3 * x:.0f}' for x in r['model'])}; "
          f"{', '.join(f'{1e3 * x:.0f}' for x in r['busy_model'])})")
    print(f"  server CPU / model work: {server / busy:.2f}x like for like (beside busy "
          f"cores), {server / model:.2f}x against the quiet figure; the browsers used "
          f"{1e3 * r['generator']:.0f} ms CPU per upload")
    for line in r.get("profile", []):
        print("  " + line)
    sat = r.get("saturation")
    if sat is None:
        return
    limit = r["quota"] or len(server_cpus)
    rate = sat["done"] / sat["wall"]
    busy = sat["cpu"] / sat["wall"] / limit
    where = (f"server limited to {r['quota']:.2f} of core(s) {sorted(server_cpus)}"
             if r["quota"] else f"server on core(s) {sorted(server_cpus)}")
    print(f"  saturation, {sessions} sessions uploading back to back for {sat['wall']:.0f} s, "
          f"{where}: {sat['done']} uploads, {rate:.2f}/s = {rate / limit:.2f} uploads/s per "
          f"server core; latency p50 {pct(sat['latencies'], 50):.2f} s, p95 "
          f"{pct(sat['latencies'], 95):.2f} s; server busy {100 * busy:.0f}% of its "
          f"{'limit' if r['quota'] else 'cores'} ({1e3 * sat['cpu'] / max(1, sat['done']):.0f} "
          f"ms CPU per upload), browsers {sat['generator'] / sat['wall']:.2f} cores; "
          f"failures {sat['failures'] or 'none'}")
    if busy < 0.85:
        print("  (the server was not saturated: the figure is a lower bound)")
    print(f"  {sat['foreign']}")


async def capacity_phase(args: argparse.Namespace) -> None:
    server_cpus, args.browser_cpus = cores(args.server_cores), cores(args.browser_cores)
    if server_cpus & args.browser_cpus:
        print("note: the server and the browsers share CPUs: the saturation figures are "
              "the machine's, not the server's alone")
    os.sched_setaffinity(0, args.browser_cpus)  # this script, Playwright, the browsers
    if args.nice and os.geteuid() == 0:  # before the machine's other jobs (inherited by all)
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    with tempfile.TemporaryDirectory(prefix="capacity_") as tmp:
        for name in args.sets:
            folder = Path(args.checkpoints)
            if name == "full":  # only the three full-size files: no demo models
                folder = full_size_folder(Path(tmp))
                os.environ["SIMAM_VIZ_DEMO_MODELS"] = "0"
            try:
                async with async_playwright() as p:
                    r = await capacity_set(p, name, folder, args, server_cpus)
            finally:
                os.environ.pop("SIMAM_VIZ_DEMO_MODELS", None)
            capacity_report(r, server_cpus, args.capacity_sessions)


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
    if "capacity" in args.phases:
        await capacity_phase(args)
        if args.phases == ["capacity"]:
            return
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
    if sys.argv[1:2] == ["--model-work"]:  # the capacity phase's child on the server's cores
        model_work_main(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phases", nargs="*", default=["load", "busy", "soak"],
                        choices=["load", "busy", "soak", "capacity"])
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="concurrent sessions per load round (default 1 2 4 8)")
    parser.add_argument("--sessions", type=int, default=200, help="soak sessions (default 200)")
    parser.add_argument("--width", type=int, default=4, help="soak sessions at a time")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "soak_rss.png"))
    cap = parser.add_argument_group("capacity")
    cap.add_argument("--sets", nargs="+", default=["demo", "full"], choices=list(CAPACITY_SETS),
                     help="model sets (default: demo full)")
    cap.add_argument("--server-cores", default="0", help="CPUs the server runs on (default 0)")
    cap.add_argument("--browser-cores", default="1",
                     help="CPUs for this script and the browsers (default 1)")
    cap.add_argument("--capacity-sessions", type=int, default=6,
                     help="sessions uploading back to back at saturation (default 6)")
    cap.add_argument("--seconds", type=float, default=30.0,
                     help="length of the saturation window (default 30)")
    cap.add_argument("--blocks", type=int, default=0,
                     help="blocks of uploads one at a time, each followed by the models' own "
                          "work for the same images (default: 5 demo, 3 full)")
    cap.add_argument("--torch-threads", type=int, default=0,
                     help="OMP_NUM_THREADS for the server and the model work (default: "
                          "torch's own, one per server core)")
    cap.add_argument("--fetch-panel", action="store_true",
                     help="keep the app's checkpoint-download panel (the image turns it off)")
    cap.add_argument("--no-quota", dest="quota", action="store_false",
                     help="never limit the server's CPU (cgroup) at saturation")
    cap.add_argument("--profile", type=Path,
                     help="record the server with py-spy (pip install py-spy) during the "
                          "one-at-a-time uploads: raw stacks in this folder, summary printed")
    cap.add_argument("--native", action="store_true", help="py-spy --native")
    cap.add_argument("--nice", type=int, default=-10,
                     help="priority of the server and the browsers, as root (default -10)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
