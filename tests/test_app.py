"""Page logic with Streamlit's AppTest, plus the service layer's cache, bound and faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simam_viz import build_model, save_checkpoint
from simam_viz.analysis import analyze
from simam_viz.errors import SimamVizError
from simam_viz.preprocess import Preprocessing
from simam_viz.service import AnalysisKey, BusyError, Service, ServiceError

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
CLASSES = ["apple", "ball", "cat"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("appckpt")
    for seed, arch in enumerate(("resnet50", "se_resnet50", "simam_resnet50")):
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=3, width=0.125, dilate_last=True)
        save_checkpoint(model, folder / "demo" / arch, class_names=CLASSES,
                        preprocessing=Preprocessing(resize=64, crop=64))
    return folder


@pytest.fixture()
def app(demo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(demo_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_page_shows_every_view(app) -> None:
    captions = _captions(app)
    assert any(c.startswith("Device **cpu**") for c in captions)
    assert any("λ = 0.1" in c for c in captions)
    assert [t.label for t in app.tabs] == ["Compare models", "Inside SimAM", "Channels",
                                          "Export", "About"]
    assert any("1. " in m.value for m in app.markdown)  # top-5 lists
    labels = [b.label for b in app.get("download_button")]
    assert "Figure 1 (PNG)" in labels and "Figure 6 (PNG)" in labels
    assert any("zip" in label for label in labels)
    assert any("energy function" in m.value for m in app.markdown)


def test_display_changes_do_not_run_models(app) -> None:
    app.slider(key="alpha").set_value(0.9).run()
    app.selectbox(key="colormap").select("viridis").run()
    app.selectbox(key="stage").select(2).run()
    assert not app.exception
    timing = next(c for c in _captions(app) if c.startswith("Device"))
    assert timing.count("cached") == 3  # nothing recomputed
    assert any("layer2.3" in c for c in _captions(app))


def test_target_and_lambda_recompute(app) -> None:
    app.selectbox(key="target").set_value("Any class…").run()
    app.selectbox(key="any_class").set_value("cat").run()
    assert not app.exception and not app.error
    assert any("explaining 'cat'" in c for c in _captions(app))
    app.select_slider(key="lambda").set_value(1.0).run()
    assert any("λ = 1.0" in c for c in _captions(app))


def test_missing_checkpoints_is_one_message(tmp_path: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "no checkpoints found: add files to checkpoints/ (see README)"
    ]


def _key(sha: str = "a" * 64) -> AnalysisKey:
    return AnalysisKey(sha, "demo/x", "b" * 64, "cpu", None, "gradcam", None)


def _model():
    torch.manual_seed(0)
    model = build_model("simam_resnet50", num_classes=3, width=0.125)
    model.simam_viz.class_names = CLASSES
    return model


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))


def test_service_caches_by_key() -> None:
    service, model = Service(max_concurrent=1), _model()
    first, cached = service.analysis(_key(), model, IMAGE)
    again, cached_again = service.analysis(_key(), model, IMAGE)
    assert not cached and cached_again and again is first
    assert len(first.blocks) == 16  # one pass gives every block: block changes are free


def test_bounds_come_from_the_environment(monkeypatch) -> None:
    """Operators tune a deployment without code: slots and the busy wait from the env."""
    monkeypatch.setenv("SIMAM_VIZ_MAX_CONCURRENT", "3")
    monkeypatch.setenv("SIMAM_VIZ_BUSY_WAIT_S", "0.25")
    service = Service()
    assert service.wait_s == 0.25
    assert all(service._slots.acquire(timeout=0) for _ in range(3))
    assert not service._slots.acquire(timeout=0)
    assert Service(max_concurrent=1, wait_s=2.0).wait_s == 2.0  # arguments win


def test_busy_instead_of_unbounded_queue() -> None:
    service, model = Service(max_concurrent=1, wait_s=0.2), _model()
    started = threading.Event()
    release = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        release.wait(10)
        return analyze(*args, **kwargs)

    service.analyze_fn = slow
    worker = threading.Thread(target=service.analysis, args=(_key("1" * 64), model, IMAGE))
    worker.start()
    started.wait(10)
    t0 = time.perf_counter()
    with pytest.raises(BusyError, match="retry"):
        service.analysis(_key("2" * 64), model, IMAGE)
    assert time.perf_counter() - t0 < 2
    release.set()
    worker.join()
    service.analyze_fn = analyze
    assert service.analysis(_key("2" * 64), model, IMAGE)[0].target >= 0  # next one works


@pytest.mark.parametrize(
    ("error", "message"),
    [(RuntimeError("boom"), "analysis failed"),
     (torch.cuda.OutOfMemoryError("CUDA out of memory"), "ran out of memory")],
)
def test_faults_become_messages_and_the_next_request_works(error, message) -> None:
    service, model = Service(max_concurrent=1), _model()
    service.cache.put(_key("9" * 64), analyze(model, IMAGE))

    def fail(*args, **kwargs):
        raise error

    service.analyze_fn = fail
    with pytest.raises(ServiceError, match=message) as exc:
        service.analysis(_key(), model, IMAGE)
    assert isinstance(exc.value, SimamVizError) and "\n" not in str(exc.value)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        assert len(service.cache) == 0  # memory released
    service.analyze_fn = analyze
    result, cached = service.analysis(_key(), model, IMAGE)
    assert not cached and result.cam("layer4.2").shape == (224, 224)  # default preprocessing
