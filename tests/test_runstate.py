"""harness.runstate on a hand-made page: the run counts and the "ended"/"settled" verdicts.

The browser tests, benchmarks and the deploy probe all wait on these verdicts; here each rule
is checked against a page whose Streamlit attributes and images the test sets itself (no
server), so a wrong count or verdict shows as such and not as a slow or hung browser test.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from harness.apphost import CHROMIUM, chromium, png_bytes
from harness.runstate import OBSERVER_JS, snapshot, wait_settled

playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")

PNG = "data:image/png;base64," + base64.b64encode(png_bytes(1, (8, 6))).decode()
PAGE = f"""<div data-testid="stApp" data-test-script-state="notRunning">
  <div data-testid="stImage"><img id="a" src="{PNG}"></div>
  <div data-testid="stCaptionContainer">Image: a.png</div>
</div>"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_content(PAGE)
    page.add_script_tag(content=OBSERVER_JS)
    page.wait_for_function("document.getElementById('a').naturalWidth > 0")
    yield page
    context.close()


def _state(page, value: str) -> None:
    page.evaluate("(v) => document.querySelector(\"[data-testid='stApp']\")"
                  ".setAttribute('data-test-script-state', v)", value)


def test_runs_are_counted_once_each(page) -> None:
    page.evaluate("window.__events = []; "
                  "window.__runstate.listeners.push((what) => window.__events.push(what))")
    s = snapshot(page)
    assert (s["state"], s["started"], s["runs"], s["images"]) == ("notRunning", 0, 0, 1)
    _state(page, "running")
    _state(page, "running")  # the same value written again is no new run
    s = snapshot(page)
    assert (s["state"], s["started"], s["runs"], s["ended"]) == ("running", 1, 0, False)
    _state(page, "notRunning")
    _state(page, "notRunning")
    s = snapshot(page)
    assert (s["started"], s["runs"], s["ended"], s["settled"]) == (1, 1, True, True)
    assert page.evaluate("window.__events") == ["start", "end"]


def test_ended_means_a_run_ended_after_the_snapshot_given(page) -> None:
    before = snapshot(page)
    assert snapshot(page, since=before)["ended"] is False  # idle, but nothing ran since
    _state(page, "running")
    assert snapshot(page, since=before)["ended"] is False
    _state(page, "notRunning")
    assert snapshot(page, since=before)["ended"] is True
    after = snapshot(page)
    assert snapshot(page, since=after)["ended"] is False
    # no "running" seen, but messages came and then quiet: ended (the quiet websocket rule)
    page.evaluate("window.__runstate.msgs += 1; window.__runstate.lastMsg = 0")
    assert snapshot(page, since=after)["ended"] is True
    assert snapshot(page, since={"runs": after["runs"]})["ended"] is False  # no msgs given


def test_settled_needs_the_named_figures_loaded_and_no_avoided_one(page) -> None:
    src = snapshot(page)["srcs"][0]
    assert snapshot(page, count=1, name="a.png")["settled"] is True
    assert snapshot(page, count=2)["settled"] is False  # too few images
    assert snapshot(page, name="b.png")["settled"] is False  # another upload's caption
    assert snapshot(page, avoid=[src])["settled"] is False  # still the old figures
    assert snapshot(page, avoid=["elsewhere"])["settled"] is True
    # a visible image that has not loaded (broken) keeps the page unsettled ...
    page.evaluate("""() => {
      const img = document.createElement("img");
      img.id = "b"; img.src = "data:image/png;base64,AAAA";
      document.body.appendChild(img);
    }""")
    page.wait_for_function("document.getElementById('b').complete")
    s = snapshot(page)
    assert s["loaded"] is False and len(s["pending"]) == 1 and s["settled"] is False
    assert snapshot(page, figures=False)["settled"] is True  # the run's end is enough
    with pytest.raises(playwright.TimeoutError):
        wait_settled(page, timeout_ms=300)
    # ... a hidden one does not (it may never load)
    page.evaluate("document.getElementById('b').style.display = 'none'")
    wait_settled(page, count=1, name="a.png", timeout_ms=5_000)


def test_detail_reads_alerts_errors_and_tracebacks(page) -> None:
    s = snapshot(page)
    assert "alerts" not in s and "captions" not in s  # cheap by default
    page.evaluate("""() => {
      const box = document.createElement("div");
      box.setAttribute("data-testid", "stAlert");
      box.innerHTML = '<div data-testid="stAlertContentError">Traceback: no</div>';
      document.body.appendChild(box);
    }""")
    s = snapshot(page, detail=True)
    assert s["alerts"] == ["Traceback: no"] and s["errors"] == 1 and s["traceback"] is True
    assert s["captions"] == ["Image: a.png"]
