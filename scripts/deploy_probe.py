"""Real browser sessions through the sticky proxy of `make deploy-smoke` (scripts/deploy-smoke.sh).

Debian's chromium through Playwright's async API, one browser context per Streamlit session,
all of them through the proxy's one address. Two phases, each printing one JSON line:

- ``latency``: N sessions (default 6) upload different images at the same moment, R rounds;
  seconds from the upload to the session's own figures decoded on the page (the run has ended,
  the caption names the upload, every image is complete with pixels). Then every session
  downloads a PNG from the Export view. Run it with one replica, then with two.
- ``failover``: N sessions, opened until they are split evenly over the replicas (the proxy
  pins each new browser to the next replica in turn with a cookie). Timed rounds and downloads
  (one session at a time, see ``download``) as above, then one replica is stopped
  (``--stop-cmd``) while the sessions of the other one are uploading. The stopped replica's
  sessions, each of which had uploaded an image there, must reconnect through the proxy (a new
  websocket, to the other replica), and the page must then say in words, by itself (within
  ``--notice-wait`` seconds, 5), that the upload was lost (``LOST_UPLOAD``, the app's
  sentence, matched in the page's text). If it does not, that is a failure, and the user's
  next step short of uploading (a rerun, the R key) is tried to tell "only then" from
  "never". After uploading again they must show their own figures, within
  ``--failover-limit`` seconds (10) of the stop. The other sessions must finish their
  upload without reconnecting, and without that sentence.

Which replica answered is read from the affinity cookie, as the browser sees it: an answer
that pins the browser anew names its replica in ``Set-Cookie``; any other answer came from the
replica the request's cookie names (the proxy re-pins whenever another replica answers). The
proxy's debug header ``X-Simam-Viz-Upstream`` (``PROXY_DEBUG_UPSTREAM=1``) gives away internal
addresses, so a public proxy must not send it: any answer carrying it is a failure unless
``--allow-upstream-header``.

Every session, every phase: its figures are its own (the analysed crop the browser received
equals the crop of the file it uploaded), no /media/ request fails (status >= 400 or a failed
request; a download tried again is reported on its own), every /media/ answer comes from the
session's own replica, and no error box or traceback appears. Any failure exits 1 with what
went wrong.

Usage (the proxy on 127.0.0.1:8503)::

    python scripts/deploy_probe.py latency --url http://127.0.0.1:8503
    python scripts/deploy_probe.py failover --url http://127.0.0.1:8503 \\
        --stop-cmd "podman stop -t 2 {replica}" --replica 10.89.0.2=app-1 --replica 10.89.0.3=app-2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shlex
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: harness/ and simam_viz/
from harness import runstate  # noqa: E402
from harness.apphost import CHROMIUM, CHROMIUM_ARGS, png_bytes  # noqa: E402
from simam_viz.networks.preprocess import Preprocessing  # noqa: E402

UPSTREAM_HEADER = "x-simam-viz-upstream"  # the proxy's debug header (PROXY_DEBUG_UPSTREAM=1)
COOKIE = "simam_viz_affinity"  # the proxy's affinity cookie: ADDRESS:PORT of the replica
# what the page says once it has reconnected to another replica than the one holding its upload
# (app/streamlit_app.py)
LOST_UPLOAD = ("Your uploaded image was lost with the server it was on; "
               "please upload it again.")
MIN_IMAGES = 4  # the Compare view: the input crop and each model's overlay


@dataclass
class Session:
    """One browser context = one Streamlit session, pinned to one replica by its cookie."""

    index: int
    context: BrowserContext
    page: Page
    replica: str = ""
    uploads: int = 0
    step: str = "open"  # what the session is doing, recorded with each /media/ answer
    # t, url, status, upstream, step
    media: list[tuple[float, str, int, str, str]] = field(default_factory=list)
    # t, method, status (0: failed), step of each upload request (PUT/DELETE upload_file)
    upload_http: list[tuple[float, str, int, str]] = field(default_factory=list)
    failed: list[tuple[float, str, str, str]] = field(default_factory=list)  # t, url, error, step
    problems: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # download attempts tried again
    leaks: list[str] = field(default_factory=list)  # answers with the proxy's debug header
    pending: set = field(default_factory=set)  # answers whose headers are still being read

    async def drain(self) -> None:
        """Wait until every answer seen so far is recorded."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    def media_errors(self, since: float = 0.0) -> list[str]:
        retried = {r.split(":", 1)[0] for r in self.retried}  # reported on their own
        bad = [f"{url} -> {status} ({step})" for t, url, status, _, step in self.media
               if t >= since and status >= 400 and step not in retried]
        return bad + [f"{url} failed: {err} ({step})" for t, url, err, step in self.failed
                      if t >= since and step not in retried]

    def foreign_media(self, since: float = 0.0) -> list[str]:
        """/media/ answers that came from another replica than this session's."""
        return [f"{url} from {up} ({step})" for t, url, status, up, step in self.media
                if t >= since and status < 400 and up and replica_of(up) != self.replica]


def replica_of(upstream: str) -> str:
    """The replica's address in ADDRESS:PORT (an affinity cookie's value, or what nginx lists
    in its debug header: every address it tried, the last one answered)."""
    return upstream.split(",")[-1].strip().rsplit(":", 1)[0]


def _cookie_in(header: str) -> str:
    """The affinity cookie's value in a request's Cookie header ("" if none)."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


def _pinned_by(header: str) -> str:
    """The affinity cookie an answer sets ("" if none); Playwright joins Set-Cookie lines."""
    for line in header.split("\n"):
        name, _, rest = line.strip().partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    return ""


async def answered_by(resp) -> str:
    """ADDRESS:PORT of the replica that answered, from the affinity cookie (module docstring):
    the one the answer pins the browser to, else the one the request's cookie names."""
    pinned = _pinned_by((await resp.all_headers()).get("set-cookie", ""))
    if pinned:
        return pinned
    return _cookie_in((await resp.request.all_headers()).get("cookie", ""))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def open_session(browser: Browser, url: str, index: int) -> Session:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000},
                                        accept_downloads=True)
    # websocket opens/closes/messages and ended script runs, so that "reconnected and ran
    # again" can be told from "still shows the old page"
    await context.add_init_script(runstate.OBSERVER_JS)
    page = await context.new_page()
    session = Session(index, context, page)

    async def record(resp, seen: float, step: str) -> None:
        try:
            upstream = await answered_by(resp)
        except Exception as exc:  # the page closed meanwhile
            upstream = f"? ({exc.__class__.__name__})"
        session.media.append((seen, resp.url, resp.status, upstream, step))

    def on_response(resp) -> None:
        if UPSTREAM_HEADER in resp.headers:
            session.leaks.append(f"{resp.url} ({resp.headers[UPSTREAM_HEADER]})")
        if "/_stcore/upload_file" in resp.url:
            session.upload_http.append((time.perf_counter(), resp.request.method, resp.status,
                                        session.step))
        if "/media/" in resp.url:
            task = asyncio.ensure_future(record(resp, time.perf_counter(), session.step))
            session.pending.add(task)
            task.add_done_callback(session.pending.discard)

    def on_failed(req) -> None:
        if "/media/" in req.url:
            session.failed.append((time.perf_counter(), req.url, req.failure or "?",
                                   session.step))
        if "/_stcore/upload_file" in req.url:
            session.upload_http.append((time.perf_counter(), req.method, 0, session.step))

    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    resp = await page.goto(url, timeout=120_000)
    if resp is None or resp.status != 200:
        raise RuntimeError(f"session {index}: page answered {resp and resp.status}")
    session.replica = replica_of(await answered_by(resp))
    await page.wait_for_selector("input[type=file]", state="attached", timeout=120_000)
    await settle(session, None, timeout=120.0)
    return session


def polled(session: Session, timeout: float, **opts) -> AsyncIterator[dict]:
    """The page's run-state snapshot (harness.runstate, with captions, alerts and whether a
    traceback shows) every 50 ms for ``timeout`` seconds (a navigation in progress gives
    ``{"error": ...}``: try again)."""
    return runstate.snapshots(session.page, timeout=timeout, detail=True, **opts)


async def state_of(session: Session) -> dict:
    """The page's snapshot now (see ``polled``)."""
    return await runstate.snapshot(session.page, detail=True)


async def settle(session: Session, name: str | None, timeout: float = 120.0) -> dict:
    """Poll until the page shows finished figures: the run has ended, at least MIN_IMAGES
    images, all decoded; with ``name``, the caption of that upload."""
    last: dict = {}
    stable = 0
    async for last in polled(session, timeout, count=MIN_IMAGES, name=name):
        if "error" in last:
            continue
        busy = [a for a in last["alerts"] if "busy" in a]
        if busy and last["state"] == "notRunning":
            raise RuntimeError(f"session {session.index}: the replica refused the analysis "
                               f"({busy[0][:100]}): more load than SIMAM_VIZ_BUSY_WAIT_S allows")
        stable = stable + 1 if last["settled"] else 0
        if stable >= 2:  # two polls in a row: not a frame between two runs
            return last
    raise TimeoutError(f"session {session.index} did not settle in {timeout:.0f} s "
                       f"(waiting for {name or 'figures'}): {runstate.brief(last, 900)}")


HAS_TEXT = "(text) => document.body.innerText.includes(text)"


async def reconnected(session: Session, opened_before: int, timeout: float = 60.0) -> dict:
    """Poll until the page has a websocket opened after ``opened_before`` ones, still open:
    the page reconnected (through the proxy)."""
    last: dict = {}
    async for last in polled(session, timeout):
        if "error" not in last and (
                last["opened"] > opened_before and last["opened"] > last["closed"]):
            return last
    raise TimeoutError(f"session {session.index} did not reconnect in {timeout:.0f} s: "
                       f"{runstate.brief(last)}")


async def lost_notice(session: Session, timeout: float = 30.0) -> float | None:
    """When (perf_counter) the page showed LOST_UPLOAD, its run over; None if not in time."""
    async for state in polled(session, timeout):
        if state.get("state") == "notRunning":
            try:
                if await session.page.evaluate(HAS_TEXT, LOST_UPLOAD):
                    return time.perf_counter()
            except Exception:  # a navigation in progress: try again
                pass
    return None


async def upload(session: Session, seed: int) -> tuple[str, bytes]:
    session.uploads += 1
    name = f"s{session.index}-u{session.uploads}-{seed}.png"
    session.step = f"upload {name}"
    data = png_bytes(seed, (200 + 10 * (seed % 5), 150 + 10 * (seed % 3)))
    await session.page.locator("input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    return name, data


async def check_own_pixels(session: Session, state: dict, data: bytes) -> None:
    """The analysed crop the browser received equals the crop of the uploaded file."""
    src = state["srcs"][0]
    # (the page's URL may carry a query, ?upload=ID: resolve the image's path against it)
    resp = await session.page.request.get(urllib.parse.urljoin(session.page.url, src))
    if resp.status != 200:
        session.problems.append(f"input crop {src} -> {resp.status}")
        return
    got = np.asarray(Image.open(io.BytesIO(await resp.body())).convert("RGB"))
    prep = Preprocessing(resize=got.shape[0], crop=got.shape[0])
    want = np.asarray(prep.crop_image(Image.open(io.BytesIO(data)).convert("RGB")))
    if got.shape != want.shape or not np.array_equal(got, want):
        session.problems.append("the figures shown are not those of this session's upload")


async def timed_upload(session: Session, seed: int, timeout: float = 120.0) -> float:
    start = time.perf_counter()
    name, data = await upload(session, seed)
    state = await settle(session, name, timeout)
    seconds = time.perf_counter() - start
    await check_own_pixels(session, state, data)
    check_page(session, state)
    return seconds


def check_page(session: Session, state: dict) -> None:
    if state.get("traceback"):
        session.problems.append("a traceback on the page")
    bad = [a for a in state.get("alerts", []) if "rror" in a or "failed" in a]
    if bad:
        session.problems.append(f"error boxes: {bad}")


async def idle(session: Session, before: dict, timeout: float = 120.0) -> None:
    """Wait until the run an action started (after the ``before`` snapshot) has ended: a run
    ended since, or (a run too fast to show "running") messages came and then 0.8 s of quiet."""
    try:
        await runstate.settled(session.page, timeout=timeout, interval=0.05, figures=False,
                               since=before, quiet_ms=800)
    except TimeoutError as exc:
        raise TimeoutError(f"session {session.index}: the run of '{session.step}' did not "
                           f"end") from exc


async def quiet(session: Session, seconds: float = 1.0, timeout: float = 120.0) -> None:
    """Wait until no run is going on and the websocket has been silent for ``seconds``."""
    async for state in polled(session, timeout):
        if state.get("state") == "notRunning" and state["quietMs"] > seconds * 1000:
            return
    raise TimeoutError(f"session {session.index}: never quiet during '{session.step}'")


async def download(session: Session) -> int:
    """Export view, one PNG download; back to the Compare view. Returns the PNG's bytes.

    A download the browser does not get is tried once more: Streamlit 1.67 makes the file of
    a download button (a callable) when it is clicked and can drop it, or the callable, when
    script runs end at that moment (any session's, the same on one replica without a proxy).
    Each retry is reported, and its failed /media/ request is not counted as a media error.
    """
    page = session.page
    session.step = "export view"
    before = await state_of(session)
    await page.get_by_role("tab", name="Export").click()
    await idle(session, before)  # the tab's rerun draws the export view's buttons
    data = b""
    for attempt in (1, 2):
        session.step = f"download {attempt}"
        await quiet(session)
        button = page.get_by_role("button", name="Grad-CAM", exact=False).first
        await button.wait_for(timeout=120_000)
        try:
            async with page.expect_download(timeout=30_000) as info:
                await button.click()
            download = await info.value
            failure = await download.failure()
        except PlaywrightTimeoutError:
            failure = "no download started in 30 s"
        if not failure:
            data = Path(await download.path()).read_bytes()
            Image.open(io.BytesIO(data)).verify()  # a real PNG
            break
        session.retried.append(f"download {attempt}: {failure}")
    else:
        session.problems.append(f"download failed twice: {session.retried[-2:]}")
    session.step = "compare view"
    before = await state_of(session)
    await page.get_by_role("tab", name="Compare models").click()
    await idle(session, before)
    await settle(session, None)
    return len(data)


async def downloads(sessions: list[Session]) -> list[int]:
    """One download per session, one session at a time. (Streamlit 1.67 keeps a generated
    download only until the second script run of any session ends after it: six sessions
    switching views at the same moment can delete each other's downloads before the browser
    fetches them, with or without a proxy. Users do not click in lockstep.)"""
    return [await download(s) for s in sessions]


async def rounds(sessions: list[Session], count: int, seed0: int) -> list[float]:
    times: list[float] = []
    for r in range(count):
        times += await asyncio.gather(*(timed_upload(s, seed0 + 100 * r + s.index)
                                        for s in sessions))
    return times


async def verdict(sessions: list[Session], since: float = 0.0,
                  allow_upstream_header: bool = False) -> list[str]:
    problems = []
    for s in sessions:
        await s.drain()
        problems += [f"session {s.index}: {p}" for p in s.problems]
        if s.leaks and not allow_upstream_header:
            problems.append(f"session {s.index}: {len(s.leaks)} answers gave away the replica's "
                            f"address ({UPSTREAM_HEADER}), e.g. {s.leaks[0]}")
            s.leaks.clear()  # reported once
        problems += [f"session {s.index}: media error {m}" for m in s.media_errors(since)]
        problems += [f"session {s.index}: media from another replica: {m}"
                     for m in s.foreign_media(since)]
    return problems


def summary(times: list[float]) -> dict:
    return {"n": len(times), "p50_s": round(statistics.median(times), 2),
            "p95_s": round(percentile(times, 95), 2), "max_s": round(max(times), 2)}


async def phase_latency(browser: Browser, args) -> dict:
    sessions = list(await asyncio.gather(*(open_session(browser, args.url, i)
                                           for i in range(args.sessions))))
    times = await rounds(sessions, args.rounds, seed0=1000)
    sizes = await downloads(sessions)
    out = {"phase": "latency", "sessions": len(sessions),
           "replicas": sorted({s.replica for s in sessions}), **summary(times),
           "downloads": len([n for n in sizes if n > 0]),
           "download_retries": [r for s in sessions for r in s.retried],
           "upstream_header_seen": sum(len(s.leaks) for s in sessions),
           "problems": await verdict(sessions, allow_upstream_header=args.allow_upstream_header)}
    # /media/ answers whose replica was checked (verdict above waited for all of them)
    out["media_answers"] = sum(len(s.media) for s in sessions)
    await asyncio.gather(*(s.context.close() for s in sessions))
    return out


async def open_balanced(browser: Browser, args, replicas: list[str]) -> list[Session]:
    """Open sessions until each replica has its share (surplus ones are closed again)."""
    share = args.sessions // len(replicas)
    kept: list[Session] = []
    for attempt in range(args.sessions * 6):
        session = await open_session(browser, args.url, attempt)
        if session.replica not in replicas:
            raise RuntimeError(f"session landed on unknown replica {session.replica!r} "
                               f"(known: {replicas})")
        if sum(s.replica == session.replica for s in kept) < share:
            kept.append(session)
        else:
            await session.context.close()
        if len(kept) == share * len(replicas):
            return kept
    raise RuntimeError(f"could not spread {args.sessions} sessions over {replicas}: "
                       f"{[s.replica for s in kept]}")


async def phase_failover(browser: Browser, args) -> dict:
    names = dict(r.split("=", 1) for r in args.replica)  # address -> container name
    sessions = await open_balanced(browser, args, sorted(names))
    times = await rounds(sessions, 1, seed0=2000)
    sizes = await downloads(sessions)
    times += await rounds(sessions, max(0, args.rounds - 1), seed0=3000)
    leaked = sum(len(s.leaks) for s in sessions)
    problems = await verdict(sessions, allow_upstream_header=args.allow_upstream_header)
    for s in sessions:
        s.problems.clear()  # counted; from here on only what happens around the stop

    victim = sessions[0].replica
    victims = [s for s in sessions if s.replica == victim]
    others = [s for s in sessions if s.replica != victim]
    before = {s.index: (await state_of(s))["opened"] for s in sessions}
    stop = shlex.split(args.stop_cmd.format(replica=names[victim], address=victim))

    async def stop_replica() -> float:
        proc = await asyncio.to_thread(subprocess.run, stop, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{stop} failed: {proc.stderr[-300:]}")
        return time.perf_counter() - t0

    async def recover(s: Session) -> tuple[float, float | None, bool, float]:
        # The page reconnects by itself (through the proxy, to the other replica), where a
        # fresh session runs. The new replica never saw the upload (it lived in the stopped
        # one's memory): the page must say so (LOST_UPLOAD), by itself. If it does not, the
        # user's next step short of uploading (a rerun: Streamlit's R key) is tried, to tell
        # "never" from "only at the next step". Then the user uploads again and has their own
        # figures, computed and served by the new replica.
        s.step = "reconnect"
        await reconnected(s, before[s.index], timeout=60.0)
        shown = time.perf_counter() - t0
        noticed = await lost_notice(s, timeout=args.notice_wait)
        by_itself = noticed is not None
        if not by_itself:
            state = await state_of(s)
            s.problems.append(
                f"reconnected but did not say '{LOST_UPLOAD}' by itself within "
                f"{args.notice_wait:.0f} s (script runs on the new websocket: "
                f"{state['runs'] - state['runsAtOpen']}, messages: {state['msgsSinceOpen']})")
            s.step = "rerun"
            await s.page.locator("body").press("r")
            noticed = await lost_notice(s, timeout=30.0)
            if noticed is None:
                alerts = [a[:100] for a in (await state_of(s))["alerts"]]
                s.problems.append(f"no '{LOST_UPLOAD}' after a rerun either (alerts on the "
                                  f"page: {alerts})")
        check_page(s, await state_of(s))
        # the user reads the notice, then uploads: once the page has been quiet for a second
        # (an upload sent while the reconnect's run is still ending can be dropped by
        # Streamlit's frontend, which then shows the example again)
        await quiet(s, 1.0, timeout=30.0)
        name, data = await upload(s, 4000 + s.index)
        try:
            state = await settle(s, name, timeout=60.0)
        except TimeoutError as exc:  # reported with what the upload requests got
            sent = [f"{m} {status} ({step})" for at, m, status, step in s.upload_http
                    if at >= t0]
            s.problems.append(f"uploaded again but never got its figures: {exc}; upload "
                              f"requests since the stop: {sent}")
            return (shown, None if noticed is None else noticed - t0, by_itself, float("nan"))
        await check_own_pixels(s, state, data)
        check_page(s, state)
        return (shown, None if noticed is None else noticed - t0, by_itself,
                time.perf_counter() - t0)

    # the replica goes down while the other replica's sessions are in the middle of an upload
    busy = asyncio.gather(*(timed_upload(s, 5000 + s.index) for s in others))
    await asyncio.sleep(args.stop_after)
    t0 = time.perf_counter()
    stop_s, *recovered = await asyncio.gather(stop_replica(), *(recover(s) for s in victims))
    during = await busy
    new_sockets, moved_to = {}, {}
    for s in victims:
        state = await state_of(s)
        new_sockets[s.index] = state["opened"] - before[s.index]
        # pinned anew: everything since comes from one replica, one that is still running
        now = {replica_of(up) for t, _, status, up, _ in s.media
               if t >= t0 and status < 400 and up}
        if len(now) != 1 or victim in now:
            s.problems.append(f"after the stop its media came from {sorted(now)}")
        else:
            s.replica = moved_to[s.index] = now.pop()
    for s in others:
        if (await state_of(s))["opened"] != before[s.index]:
            s.problems.append("reconnected although its replica kept running")
        if await s.page.evaluate(HAS_TEXT, LOST_UPLOAD):
            s.problems.append("says its upload was lost although its replica kept running")
    limit = args.failover_limit
    leaked += sum(len(s.leaks) for s in sessions)
    problems += await verdict(others, since=t0, allow_upstream_header=args.allow_upstream_header)
    problems += await verdict(victims, since=t0, allow_upstream_header=args.allow_upstream_header)
    # (the limit holds where the notice came by itself: otherwise the time includes the
    # wait for it and the rerun, and the missing notice is already the failure)
    problems += [f"session {s.index}: figures again after {r[3]:.1f} s (limit {limit:.0f} s)"
                 for s, r in zip(victims, recovered, strict=True) if r[3] > limit and r[2]]
    out = {"phase": "failover", "sessions": len(sessions),
           "replicas": sorted(names), **summary(times),
           "downloads": len([n for n in sizes if n > 0]),
           "download_retries": [r for s in sessions for r in s.retried],
           "upstream_header_seen": leaked,
           "stopped": names[victim], "stop_cmd_s": round(stop_s, 2),
           "victims": len(victims),
           "reconnected_s": [round(r[0], 2) for r in recovered],
           "lost_notice_s": [None if r[1] is None else round(r[1], 2) for r in recovered],
           "lost_notice_by_itself": [r[2] for r in recovered],
           "own_figures_again_s": [round(r[3], 2) for r in recovered],
           "websockets_opened_by_victims": new_sockets,
           "victims_moved_to": moved_to,
           "others_upload_during_stop_s": [round(x, 2) for x in during],
           "media_answers": sum(len(s.media) for s in sessions),
           "problems": problems}
    await asyncio.gather(*(s.context.close() for s in sessions))
    return out


async def main(args) -> int:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if args.phase == "latency":
                out = await phase_latency(browser, args)
            else:
                out = await phase_failover(browser, args)
        finally:
            await browser.close()
    print(json.dumps(out), flush=True)
    return 1 if out["problems"] else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=["latency", "failover"])
    ap.add_argument("--url", required=True, help="the proxy, e.g. http://127.0.0.1:8503")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2, help="timed upload rounds")
    ap.add_argument("--replica", action="append", default=[],
                    help="ADDRESS=NAME of a replica (failover; one per replica)")
    ap.add_argument("--stop-cmd", default="podman stop -t 2 {replica}",
                    help="command that stops a replica; {replica} is its NAME, "
                         "{address} its ADDRESS")
    ap.add_argument("--failover-limit", type=float, default=10.0,
                    help="seconds from the stop to own figures again")
    ap.add_argument("--stop-after", type=float, default=1.0,
                    help="seconds into the other replica's uploads at which to stop one")
    ap.add_argument("--notice-wait", type=float, default=5.0,
                    help="seconds after reconnecting for the page to say the upload was lost")
    ap.add_argument("--allow-upstream-header", action="store_true",
                    help=f"accept answers carrying {UPSTREAM_HEADER} (a proxy run with "
                         "PROXY_DEBUG_UPSTREAM=1)")
    args = ap.parse_args(argv)
    if args.phase == "failover" and len(args.replica) < 2:
        ap.error("failover needs --replica ADDRESS=NAME for two replicas or more")
    args.url = args.url.rstrip("/")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
