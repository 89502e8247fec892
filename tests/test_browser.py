"""A real browser (Debian's chromium driven by Playwright) against `streamlit run`.

Uploads through the real HTTP path, changes block and target, downloads a PNG, survives a
corrupt upload, and checks that two sessions uploading at once each get their own result.
With SIMAM_VIZ_SCREENSHOTS=1 it also saves the README screenshots to docs/screenshots/.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from apphost import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    idle,
    input_pixels,
    open_session,
    png_bytes,
    serve,
    upload,
    wait_images,
)
from PIL import Image

from simam_viz import build_model, save_checkpoint
from simam_viz.preprocess import Preprocessing

SHOTS = ROOT / "docs" / "screenshots"
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make system-deps)")


def tiny_demo_set(folder: Path) -> Path:
    """The shipped demo models if present, else three untrained tiny ones (same layout)."""
    demo = ROOT / "checkpoints" / "demo"
    if list(demo.glob("*.safetensors")):
        shutil.copytree(demo, folder / "demo")
    else:
        for seed, arch in enumerate(("resnet50", "se_resnet50", "simam_resnet50")):
            torch.manual_seed(seed)
            save_checkpoint(build_model(arch, num_classes=3, width=0.125, dilate_last=True),
                            folder / "demo" / arch, class_names=["apple", "ball", "cat"],
                            preprocessing=Preprocessing(resize=64, crop=64))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = tiny_demo_set(tmp_path_factory.mktemp("browser_ckpt"))
    with serve(ckpt, env={"SIMAM_VIZ_MAX_CONCURRENT": "4"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


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


def test_upload_browse_download_and_recover(server: str, browser) -> None:
    context, page = open_session(browser, server)
    # a real scene (one of the gallery examples): the screenshots in README show it
    upload(page, "dog.png", (ROOT / "app" / "examples" / "scene_dog_3.png").read_bytes())
    wait_images(page)
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
    idle(page)
    _shot(page, "channels")
    page.get_by_role("tab", name="Export").click()
    idle(page)
    _shot(page, "export")
    with page.expect_download() as info:
        page.get_by_role("button", name="Grad-CAM", exact=False).first.click()
    png = Image.open(info.value.path())
    crop = input_pixels(page).shape
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
