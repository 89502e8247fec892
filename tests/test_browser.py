"""A real browser (Debian's chromium driven by Playwright) against `streamlit run`.

Uploads through the real HTTP path, changes block and target, downloads a PNG, survives a
corrupt upload, and checks that two sessions uploading at once each get their own result.
The server's log (``SIMAM_VIZ_LOG_LEVEL=DEBUG``: one line per model run and per view drawn)
shows that display-only changes run no model and that only the visible view is drawn.
With SIMAM_VIZ_SCREENSHOTS=1 it also saves the README screenshots to docs/screenshots/.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import DEFAULT_EXAMPLE
from PIL import Image

from harness.apphost import (
    CHROMIUM,
    ROOT,
    chromium,
    idle,
    input_pixels,
    open_session,
    png_bytes,
    serve,
    upload,
    wait_images,
)
from harness.runstate import wait_settled
from simam_viz.networks.preprocess import Preprocessing

SHOTS = ROOT / "docs" / "screenshots"
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")


LOG_PATH: dict[str, Path] = {}


@pytest.fixture(scope="module")
def server(demo_checkpoints: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("browser_log") / "server.log"
    env = {"SIMAM_VIZ_MAX_CONCURRENT": "4", "SIMAM_VIZ_LOG_LEVEL": "DEBUG"}
    with serve(demo_checkpoints, env=env, log=log) as url:
        if not os.environ.get("SIMAM_VIZ_URL"):
            LOG_PATH["server"] = log
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _expected_crop(data: bytes, prep: Preprocessing) -> np.ndarray:
    return np.asarray(prep.crop_image(Image.open(io.BytesIO(data)).convert("RGB")))


def _shot(page, name: str) -> None:
    if os.environ.get("SIMAM_VIZ_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=False)
        im = Image.open(path).convert("RGB")
        im.thumbnail((1100, 1100))
        im.save(path, optimize=True)


def _select(page, label: str, option: str) -> None:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label).first
    combo = box.get_by_role("combobox")
    combo.click()
    combo.fill(option)  # the combobox filters its options as one types
    page.get_by_role("option", name=option, exact=True).first.click()
    idle(page)


def _stage(page, stage: str) -> None:
    group = page.locator("[data-testid='stRadio']").filter(has_text="Stage")
    group.get_by_text(stage, exact=True).click()
    idle(page)


def test_upload_browse_download_and_recover(server: str, browser) -> None:
    context, page = open_session(browser, server)
    # a real scene (one of the gallery examples): the screenshots in README show it
    upload(page, "dog.png", DEFAULT_EXAMPLE.read_bytes())
    wait_images(page)
    assert page.get_by_text("Device").count() >= 1
    crop = input_pixels(page).shape  # the Compare view's input panel (views are lazy)
    _shot(page, "compare")
    page.get_by_role("tab", name="Inside attention").click()
    _stage(page, "2")
    assert page.get_by_text("layer2.3", exact=False).count() >= 1
    _shot(page, "inside_simam")
    _select(page, "Explain class", "apple")
    assert page.get_by_text("explaining 'apple'", exact=False).count() >= 1
    page.get_by_role("tab", name="Channels").click()
    idle(page)
    # plotly's code loads on the first chart: wait until the charts are drawn
    page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for(timeout=60_000)
    _shot(page, "channels")
    # the paper's Figure 2 live: each model's weights in their own shape, and how 3-D they are
    page.get_by_role("tab", name="Attention shapes").click()
    idle(page)
    page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for(timeout=60_000)
    shapes = page.locator("[data-testid='stMarkdown']").filter(has_text="variance: channel")
    assert "3-D: one weight per neuron" in shapes.first.inner_text()
    assert "1-D: one weight per channel" in shapes.first.inner_text()
    page.get_by_role("heading", name="Attention shapes").evaluate(
        "e => e.scrollIntoView({block: 'start'})")  # the charts, not the sidebar, in the shot
    _shot(page, "shapes")
    page.get_by_role("tab", name="Export").click()
    idle(page)
    _shot(page, "export")
    with page.expect_download() as info:
        page.get_by_role("button", name="Grad-CAM", exact=False).first.click()
    png = Image.open(info.value.path())
    assert png.size == (crop[1], crop[0])
    # a corrupt file: one clear message, then the session still works
    upload(page, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.wait_for_selector("[data-testid='stAlert']", timeout=60_000)
    idle(page)
    alert = page.locator("[data-testid='stAlert']").first.inner_text()
    assert "truncated or corrupt" in alert or "unsupported" in alert
    assert "Traceback" not in page.content()
    upload(page, "second.png", png_bytes(2))
    wait_images(page)
    alerts = page.locator("[data-testid='stAlert']").all_inner_texts()
    assert not any("corrupt" in t or "unsupported" in t for t in alerts)  # error is gone
    context.close()


def test_chart_library_loads_before_any_chart_view_opens(server: str, browser) -> None:
    """The first chart view need not wait for Streamlit's plotly chunk (app/chart_preload)."""
    context, page = open_session(browser, server)
    wait_images(page)
    page.wait_for_function(  # fetched and run by the idle-time import, no chart on the page
        "() => performance.getEntriesByType('resource')"
        ".some(e => /\\/PlotlyChart\\.[^\\/]+\\.js$/.test(e.name))", timeout=30_000)
    assert page.locator("[data-testid='stPlotlyChart']").count() == 0
    assert page.evaluate("() => window.__simamVizChartsPreloaded") is True
    # then a chart view draws at once: no second fetch of the chunk
    page.get_by_role("tab", name="Attention shapes").click()
    idle(page)
    page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for(timeout=60_000)
    fetched = page.evaluate("() => performance.getEntriesByType('resource')"
                            ".filter(e => e.name.includes('/PlotlyChart.')).length")
    assert fetched == 1
    context.close()


def test_two_sessions_get_their_own_results(server: str, browser) -> None:
    (ca, a), (cb, b) = open_session(browser, server), open_session(browser, server)
    data_a, data_b = png_bytes(10, (200, 150)), png_bytes(11, (150, 200))
    upload(a, "a.png", data_a)
    upload(b, "b.png", data_b)
    wait_images(a)
    wait_images(b)
    prep_size = input_pixels(a).shape[0]
    prep = Preprocessing(resize=prep_size, crop=prep_size)
    np.testing.assert_array_equal(input_pixels(a), _expected_crop(data_a, prep))
    np.testing.assert_array_equal(input_pixels(b), _expected_crop(data_b, prep))
    ca.close()
    cb.close()


class ServerLog:
    """The lines the server logged since the last ``new_lines()`` call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace").splitlines()


def _settle(page) -> None:
    """The run the last action started has ended and every visible image has loaded."""
    page.wait_for_timeout(400)  # the action's run may not have started yet
    wait_settled(page, timeout_ms=120_000)


def test_display_changes_run_no_model_and_only_the_open_view_renders(server: str,
                                                                      browser) -> None:
    if "server" not in LOG_PATH:
        pytest.skip("the server runs elsewhere ($SIMAM_VIZ_URL): its log cannot be read")
    context, page = open_session(browser, server)
    upload(page, "fresh.png", png_bytes(31, (220, 170)))
    wait_images(page)
    log = ServerLog(LOG_PATH["server"])
    upload(page, "fresh2.png", png_bytes(32, (220, 170)))
    wait_images(page)
    _settle(page)
    lines = log.new_lines()
    assert sum("analysis ran" in x for x in lines) == 3  # one pass per model, nothing more
    assert {x.rsplit("render view ", 1)[1] for x in lines if "render view" in x} == {
        "Compare models"}
    assert page.locator("[data-testid='stPlotlyChart']").count() == 0  # Channels not drawn

    def changed(action, view: str) -> None:
        action()
        _settle(page)
        new = log.new_lines()
        runs = [x for x in new if "analysis ran" in x]
        assert runs == [], f"a display-only change ran a model: {runs}"
        drawn = {x.rsplit("render view ", 1)[1] for x in new if "render view" in x}
        assert drawn == {view}, f"drawn: {drawn}, visible: {view}"
        assert "Traceback" not in page.content()

    def alpha_step() -> None:
        box = page.locator("[data-testid='stSlider']").filter(has_text="Overlay alpha")
        box.get_by_role("slider").focus()
        page.keyboard.press("ArrowRight")

    changed(alpha_step, "Compare models")
    changed(lambda: _select(page, "Colour map", "viridis"), "Compare models")
    changed(lambda: page.get_by_text("One colour scale for all models").click(),
            "Compare models")
    changed(lambda: page.get_by_role("tab", name="Inside attention").click(),
            "Inside attention")
    # SE's 2 panels, SimAM's 4, and one depth strip
    assert page.locator("[data-testid='stImage']").count() == 7
    assert page.get_by_text("Compare models (the paper", exact=False).count() == 0
    changed(lambda: _stage(page, "2"), "Inside attention")
    assert page.get_by_text("layer2.3", exact=False).count() >= 1
    changed(lambda: page.get_by_role("tab", name="Channels").click(), "Channels")
    assert page.locator("[data-testid='stImage']").count() == 0
    charts = page.locator("[data-testid='stPlotlyChart']")
    charts.nth(1).wait_for(timeout=60_000)  # plotly's code loads on first use
    assert charts.count() >= 2
    changed(lambda: page.get_by_role("tab", name="About").click(), "About")
    assert page.locator("[data-testid='stPlotlyChart']").count() == 0
    context.close()


def _neuron_heading(page) -> str:
    return page.get_by_text("of channel", exact=False).first.inner_text()


def test_explain_simam_click_a_neuron_and_trust_check(server: str, browser) -> None:
    """Explain SimAM: a real click on the channel map picks that neuron, and the numbers
    shown are its own; Trust: the button runs the check and the scores and charts appear."""
    context, page = open_session(browser, server)
    upload(page, "dog.png", DEFAULT_EXAMPLE.read_bytes())
    wait_images(page)
    page.get_by_role("tab", name="Explain SimAM").click()
    idle(page)
    charts = page.locator("[data-testid='stPlotlyChart']")
    charts.nth(3).wait_for(timeout=60_000)  # map, line, curve and the 3-D view
    _settle(page)
    first = _neuron_heading(page)
    # click a point other than the chosen one: the first (neuron (0, 0)) or the last (the
    # grid's far corner); plotly picks the point from the mouse position, as for a person
    points = charts.first.locator("g.scatterlayer path.point")
    points.first.wait_for(timeout=30_000)
    side = round(points.count() ** 0.5)
    corner = (0, 0) if not first.startswith("Neuron (0, 0)") else (side - 1, side - 1)
    box = points.nth(corner[0] * side + corner[1]).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    idle(page)
    _settle(page)
    heading = _neuron_heading(page)
    assert heading.startswith(f"Neuron ({corner[0]}, {corner[1]}) of channel"), (first, heading)
    assert page.locator(".katex").count() >= 4  # Eqns (5), (6), (2) with numbers
    page.set_viewport_size({"width": 1100, "height": 1000})
    _settle(page)
    for part in page.locator(".katex-display .base").all():  # each line's typeset boxes
        column = part.locator("xpath=ancestor::div[@data-testid='stColumn'][1]")
        box, edge = part.bounding_box(), column.bounding_box()
        print("KATEX", box, edge)
        assert box is not None and edge is not None
        assert box["x"] + box["width"] <= min(1100, edge["x"] + edge["width"]) + 1, (box, edge)
    assert "Traceback" not in page.content()
    _shot(page, "explain_simam")
    page.get_by_role("tab", name="Trust").click()
    idle(page)
    page.get_by_role("button", name="Check this map").click()
    page.get_by_text("Insertion AUC").first.wait_for(timeout=120_000)
    idle(page)
    page.locator("[data-testid='stPlotlyChart'] .main-svg").nth(1).wait_for(timeout=60_000)
    _settle(page)
    assert page.locator("[data-testid='stMetric']").count() == 5
    assert "Traceback" not in page.content()
    _shot(page, "trust")
    context.close()


def test_what_simam_adds_runs_on_a_click_and_exports_its_numbers(server: str, browser) -> None:
    """What SimAM adds: nothing runs until the button; then each attention model's numbers,
    its Grad-CAM before and after, the per-block bars and SimAM's λ charts appear, and the
    JSON download holds the numbers the page shows."""
    import json

    context, page = open_session(browser, server)
    upload(page, "dog.png", DEFAULT_EXAMPLE.read_bytes())
    wait_images(page)
    page.get_by_role("tab", name="What SimAM adds").click()
    idle(page)
    assert page.locator("[data-testid='stPlotlyChart']").count() == 0
    page.get_by_role("button", name="Run the interventions").click()
    page.get_by_role("button", name="Their numbers (JSON)").wait_for(timeout=120_000)
    idle(page)
    charts = page.locator("[data-testid='stPlotlyChart'] .main-svg")
    charts.nth(2).wait_for(timeout=60_000)  # per-block bars, SimAM's sweep and regime
    _settle(page)
    assert page.get_by_role("button", name="Run the interventions").count() == 0
    metrics = page.locator("[data-testid='stMetric']").filter(
        has_text="p(target) after")
    assert metrics.count() == 2  # SE and SimAM; the plain ResNet-50 has nothing to change
    shown = metrics.all_inner_texts()  # before the click, whose rerun redraws the page
    with page.expect_download() as info:
        page.get_by_role("button", name="Their numbers (JSON)").click()
    report = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert len(report["interventions"]) == 2 and len(report["lambda_sweeps"]) == 1
    for text, entry in zip(shown, report["interventions"], strict=True):
        assert f"{entry['prob']:.3f}" in text, (text, entry)
        assert f"{entry['prob_change']:+.3f} from {entry['prob_ref']:.3f}" in text, (text, entry)
        assert entry["mode"] == "identity" and len(entry["per_block_change"]) == 16
    assert "Traceback" not in page.content()
    page.get_by_role("heading", name="What SimAM adds").evaluate(
        "e => e.scrollIntoView({block: 'start'})")  # the numbers and maps, in the shot
    _shot(page, "interventions")
    context.close()
