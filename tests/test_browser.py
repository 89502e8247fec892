"""A real browser (Debian's chromium driven by Playwright) against `streamlit run`.

Uploads through the real HTTP path, changes block and target, downloads a PNG, survives a
corrupt upload, and checks that two sessions uploading at once each get their own result.
With SIMAM_VIZ_SCREENSHOTS=1 it also saves the README screenshots to docs/screenshots/.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simam_viz import build_model, save_checkpoint
from simam_viz.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("browser_ckpt")
    demo = ROOT / "checkpoints" / "demo"
    if list(demo.glob("*.safetensors")):
        shutil.copytree(demo, ckpt / "demo")
    else:
        for seed, arch in enumerate(("resnet50", "se_resnet50", "simam_resnet50")):
            torch.manual_seed(seed)
            save_checkpoint(build_model(arch, num_classes=3, width=0.125, dilate_last=True),
                            ckpt / "demo" / arch, class_names=["apple", "ball", "cat"],
                            preprocessing=Preprocessing(resize=64, crop=64))
    port = _free_port()
    env = {**os.environ, "SIMAM_VIZ_CHECKPOINTS": str(ckpt), "SIMAM_VIZ_MAX_CONCURRENT": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _png(seed: int, size=(160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _idle(page, timeout: float = 120_000) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']",
                           timeout=timeout)


def _wait_images(page, count: int = 4) -> None:
    """Wait until the figures of an upload are on the page (the run has started and ended)."""
    page.wait_for_function(
        f"document.querySelectorAll(\"[data-testid='stImage']\").length >= {count}",
        timeout=180_000,
    )
    _idle(page)


def _upload(page, name: str, data: bytes) -> None:
    page.locator("input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": data}]
    )


def _open(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    _idle(page)
    page.get_by_text("Upload", exact=True).click()
    _idle(page)
    return context, page


def _input_pixels(page) -> np.ndarray:
    src = page.locator("[data-testid='stImage'] img").first.get_attribute("src")
    body = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


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
    _idle(page)


def test_upload_browse_download_and_recover(server: str, browser) -> None:
    context, page = _open(browser, server)
    _upload(page, "first.png", _png(1))
    _wait_images(page)
    assert page.get_by_text("Device").count() >= 1
    _shot(page, "compare")
    page.get_by_role("tab", name="Inside SimAM").click()
    _select(page, "Stage", "2")
    assert page.get_by_text("layer2.3", exact=False).count() >= 1
    _shot(page, "inside_simam")
    _select(page, "Explain class", "Any class…")
    _select(page, "Class (by name)", "apple")
    assert page.get_by_text("explaining 'apple'", exact=False).count() >= 1
    page.get_by_role("tab", name="Channels").click()
    _idle(page)
    _shot(page, "channels")
    page.get_by_role("tab", name="Export").click()
    _idle(page)
    _shot(page, "export")
    with page.expect_download() as info:
        page.get_by_role("button", name="Grad-CAM", exact=False).first.click()
    png = Image.open(info.value.path())
    crop = _input_pixels(page).shape
    assert png.size == (crop[1], crop[0])
    # a corrupt file: one clear message, then the session still works
    _upload(page, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.wait_for_selector("[data-testid='stAlert']", timeout=60_000)
    _idle(page)
    alert = page.locator("[data-testid='stAlert']").first.inner_text()
    assert "truncated or corrupt" in alert or "unsupported" in alert
    assert "Traceback" not in page.content()
    _upload(page, "second.png", _png(2))
    _wait_images(page)
    alerts = page.locator("[data-testid='stAlert']").all_inner_texts()
    assert not any("corrupt" in t or "unsupported" in t for t in alerts)  # error is gone
    context.close()


def test_two_sessions_get_their_own_results(server: str, browser) -> None:
    (ca, a), (cb, b) = _open(browser, server), _open(browser, server)
    data_a, data_b = _png(10, (200, 150)), _png(11, (150, 200))
    _upload(a, "a.png", data_a)
    _upload(b, "b.png", data_b)
    _wait_images(a)
    _wait_images(b)
    prep_size = _input_pixels(a).shape[0]
    prep = Preprocessing(resize=prep_size, crop=prep_size)
    np.testing.assert_array_equal(_input_pixels(a), _expected_crop(data_a, prep))
    np.testing.assert_array_equal(_input_pixels(b), _expected_crop(data_b, prep))
    ca.close()
    cb.close()
