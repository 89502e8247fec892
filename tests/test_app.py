"""Page logic with Streamlit's AppTest, plus the service layer's cache, bound and faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CHECKPOINTS_DIR,
    CLASSES,
    TINY_PREP,
    cache_key,
    noise_image,
    run_page,
    shipped_demo_present,
    tiny_model,
)

from simam_viz import save_checkpoint
from simam_viz.engine.analysis import analyze
from simam_viz.errors import SimamVizError
from simam_viz.serving.service import (
    BusyError,
    ModelCache,
    Service,
    ServiceError,
    shared_service,
)


@pytest.fixture()
def app(tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tiny_checkpoints))
    at = run_page()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def _downloads(at) -> list[str]:
    return [b.label for b in at.get("download_button")]


def _open(at, view: str):
    """Switch the lazy tabs (their state lives under the key ``view``) and rerun."""
    at.session_state["view"] = view
    return at.run()


@pytest.fixture()
def model_runs():
    """Counts analyses that really ran in the process-wide service (cache hits do not)."""
    service = shared_service()
    calls: list[str] = []
    original = service.analyze_fn

    def counted(model, *args, **kwargs):
        calls.append(model.simam_viz.name)
        return original(model, *args, **kwargs)

    service.analyze_fn = counted
    yield calls
    service.analyze_fn = original


def test_page_shows_every_view_and_only_the_open_one(app) -> None:
    captions = _captions(app)
    assert any(c.startswith("Device **cpu**") for c in captions)
    assert [t.label for t in app.tabs] == ["Compare models", "Inside attention",
                                          "Attention shapes", "Explain SimAM",
                                          "What SimAM adds", "Channels", "Trust", "Export",
                                          "About"]
    assert any("1. " in m.value for m in app.markdown)  # top-5 lists
    assert _downloads(app) == []  # the Export view is not open: nothing of it is built
    _open(app, "Inside attention")
    assert any("λ = 0.1" in c for c in _captions(app))
    assert not any("1. " in m.value for m in app.markdown)  # Compare is not drawn now
    _open(app, "Export")
    labels = _downloads(app)
    assert "Figure 1 (PNG)" in labels and "Figure 6 (PNG)" in labels
    assert "Attention shapes (PNG)" in labels
    assert any("zip" in label for label in labels)
    _open(app, "About")
    assert any("energy function" in m.value for m in app.markdown)
    assert any("about (0.62, 1)" in m.value for m in app.markdown)


def test_display_changes_do_not_run_models(app, model_runs) -> None:
    _open(app, "Inside attention")
    app.slider(key="alpha").set_value(0.9).run()
    app.selectbox(key="colormap").select("viridis").run()
    app.checkbox(key="shared").check().run()
    app.radio(key="stage").set_value(2).run()
    assert not app.exception
    assert model_runs == []
    assert any("layer2.3" in c for c in _captions(app))
    _open(app, "Channels")  # the block chosen in 'Inside attention' carries over
    app.slider(key="topk").set_value(3).run()
    assert not app.exception and model_runs == []
    assert any("layer2.3" in str(chart.proto) for chart in app.get("plotly_chart"))


def test_target_and_lambda_recompute_once(app, model_runs) -> None:
    _open(app, "Inside attention")
    app.selectbox(key="target").set_value("cat").run()
    assert not app.exception and not app.error
    assert any("explaining 'cat'" in c for c in _captions(app))
    assert len(model_runs) == 3  # one pass per model for the new class, no second analysis
    app.selectbox(key="target").set_value("Each model's top-1").run()
    app.selectbox(key="target").set_value("cat").run()
    assert len(model_runs) == 3  # a class already computed is display only
    app.select_slider(key="lambda::demo/simam_resnet50").set_value(1.0).run()
    assert any("λ = 1.0" in c for c in _captions(app))
    assert len(model_runs) == 4  # only the SimAM model depends on lambda


def test_lambda_starts_at_the_checkpoint_lambda(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model(simam_lambda=0.5)
    save_checkpoint(model, tmp_path / "demo" / "simam_resnet50", class_names=CLASSES,
                    preprocessing=TINY_PREP)
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path))
    at = run_page()
    assert not at.exception and not at.error
    assert at.select_slider(key="lambda::demo/simam_resnet50").value == 0.5
    assert any("trained with λ = 0.5" in c for c in _captions(at))
    _open(at, "Inside attention")
    assert any("λ = 0.5" in c for c in _captions(at))


def test_export_follows_the_selected_models(app) -> None:
    """No Figure 6 download of a model that is no longer selected (no stale state)."""
    _open(app, "Inside attention")
    app.radio(key="stage").set_value(3).run()
    _open(app, "Export")
    labels = _downloads(app)
    assert "Figure 6 (PNG)" in labels
    assert "Grad-CAM before SimAM · layer3.5" in labels  # the block chosen in 'Inside ...'
    assert "Grad-CAM after SE · layer3.5" in labels  # every attention model's panels
    app.multiselect(key="models").set_value(["demo/resnet50", "demo/se_resnet50"]).run()
    labels = _downloads(app)
    assert not app.exception
    assert "Figure 6 (PNG)" in labels and "Grad-CAM before SE · layer3.5" in labels
    assert not any("SimAM" in label for label in labels)
    app.multiselect(key="models").set_value(["demo/resnet50"]).run()
    labels = _downloads(app)
    assert not app.exception
    assert "Figure 6 (PNG)" not in labels and "Attention shapes (PNG)" not in labels
    assert not any("Grad-CAM before" in label for label in labels)
    assert "Figure 1 (PNG)" in labels


def test_first_screen_uses_a_scene_and_flags_photos(monkeypatch) -> None:
    """The shipped demo models: the default example is one they know; a photo gets one line."""
    if not shipped_demo_present():
        pytest.skip("the shipped demo models are not present")
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(CHECKPOINTS_DIR))
    at = run_page()
    assert not at.exception and not at.error
    assert at.selectbox(key="example").value == "scene_dog_3.png"
    assert not [i.value for i in at.info]
    tops = [m.value.splitlines()[0] for m in at.markdown if m.value.startswith("1. ")]
    assert len(tops) == 3 and all(t.startswith("1. dog") for t in tops)
    at.selectbox(key="example").set_value("photo_chelsea.jpg").run()
    notes = [i.value for i in at.info]
    assert len(notes) == 1 and "demo models know only 12" in notes[0]
    assert "simam-viz fetch" in notes[0]


def test_missing_checkpoints_is_one_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("SIMAM_VIZ_DEMO_MODELS", "0")  # no bundled demo models either
    at = run_page(timeout=60)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "no checkpoints found: add files to checkpoints/ (see README)"
    ]


def _model():
    return tiny_model(class_names=CLASSES)


IMAGE = noise_image(0, 64, 64)


def test_service_caches_by_key() -> None:
    service, model = Service(max_concurrent=1), _model()
    first, cached = service.analysis(cache_key(), model, IMAGE)
    again, cached_again = service.analysis(cache_key(), model, IMAGE)
    assert not cached and cached_again and again is first
    assert len(first.blocks) == 16  # one pass gives every block: block changes are free


def test_bounds_come_from_the_environment(monkeypatch) -> None:
    """Operators tune a deployment without code: slots and the busy wait from the env."""
    monkeypatch.setenv("SIMAM_VIZ_MAX_CONCURRENT", "3")
    monkeypatch.setenv("SIMAM_VIZ_BUSY_WAIT_S", "0.25")
    service = Service()
    assert service.wait_s == 0.25
    assert service.admission.slots == 3
    assert Service(max_concurrent=1, wait_s=2.0).wait_s == 2.0  # arguments win


def test_busy_instead_of_unbounded_queue() -> None:
    """A request that finds the only slot taken is refused after its wait, while the job
    holding the slot still runs: it does not queue behind that job."""
    service, model = Service(max_concurrent=1, wait_s=0.2), _model()
    started = threading.Event()
    release = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        release.wait(10)
        return analyze(*args, **kwargs)

    service.analyze_fn = slow
    first: list[tuple] = []
    worker = threading.Thread(
        target=lambda: first.append(service.analysis(cache_key("1" * 64), model, IMAGE)))
    worker.start()
    assert started.wait(10)  # the first job holds the only slot until `release`
    with pytest.raises(BusyError, match="retry"):
        service.analysis(cache_key("2" * 64), model, IMAGE)
    # refused while the first job still held its slot (it cannot end before `release`):
    # the request gave up after its wait instead of waiting for the job, and left no
    # place in the line behind it
    assert worker.is_alive()
    assert service.admission.busy == 1 and service.admission.waiting == 0
    assert service.admission.busy_replies == {"slots": 1}
    release.set()
    worker.join(10)
    assert not worker.is_alive() and len(first) == 1 and first[0][1] is False
    service.analyze_fn = analyze
    # the refused request left nothing behind: the next one runs, all blocks, and gives
    # exactly what the engine gives
    result, cached = service.analysis(cache_key("2" * 64), model, IMAGE)
    assert not cached
    expected = analyze(model, IMAGE, blocks="all")
    assert result.arrays().keys() == expected.arrays().keys()
    for name, array in expected.arrays().items():
        np.testing.assert_array_equal(result.arrays()[name], array, err_msg=name)


@pytest.mark.parametrize(
    ("error", "message"),
    [(RuntimeError("boom"), "analysis failed"),
     (torch.cuda.OutOfMemoryError("CUDA out of memory"), "ran out of memory")],
)
def test_faults_become_messages_and_the_next_request_works(error, message) -> None:
    service, model = Service(max_concurrent=1), _model()
    service.cache.put(cache_key("9" * 64), analyze(model, IMAGE))

    def fail(*args, **kwargs):
        raise error

    service.analyze_fn = fail
    with pytest.raises(ServiceError, match=message) as exc:
        service.analysis(cache_key(), model, IMAGE)
    assert isinstance(exc.value, SimamVizError) and "\n" not in str(exc.value)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        assert len(service.cache) == 0  # memory released
    service.analyze_fn = analyze
    result, cached = service.analysis(cache_key(), model, IMAGE)
    assert not cached and result.cam("layer4.2").shape == (224, 224)  # default preprocessing


def test_identical_requests_in_flight_run_once() -> None:
    """Single flight: the warm-up and a first visitor (or two sessions) share one pass."""
    service, model = Service(max_concurrent=2), _model()
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def slow(*args, **kwargs):
        runs.append(1)
        entered.set()
        release.wait(10)
        return analyze(*args, **kwargs)

    service.analyze_fn = slow
    got: dict[str, tuple] = {}

    def call(who: str) -> None:
        got[who] = service.analysis(cache_key(), model, IMAGE)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(10)  # the first call is computing, and stays so until `release`
    # The second call must find the first one in flight, not a finished result: let the
    # first finish only once the second waits on the first's in-flight marker.
    flight = service._inflight[cache_key()]
    waiting, real_wait = threading.Event(), flight.wait

    def wait(timeout: float | None = None) -> bool:
        waiting.set()
        return real_wait(timeout)

    flight.wait = wait
    second = threading.Thread(target=call, args=("second",))
    second.start()
    assert waiting.wait(10)
    release.set()
    first.join(10)
    second.join(10)
    assert len(runs) == 1  # the compute function ran once for both
    result, cached = got["first"]
    assert not cached and got["second"][1] is True  # the second got it as cached
    assert got["second"][0] is result  # the first caller's very object, not a copy


def test_model_cache_loads_each_key_once_and_is_bounded() -> None:
    cache = ModelCache(capacity=2)
    loads: list[str] = []

    class CountingLock:
        """The key's lock, counting the sessions that reached it."""

        def __init__(self) -> None:
            self._lock, self._count, self.reached = threading.Lock(), threading.Lock(), 0

        def __enter__(self) -> None:
            with self._count:
                self.reached += 1
            self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self._lock.release()

    key_lock = cache._key_locks[("a", 1)] = CountingLock()

    def loader(name: str):
        def load():
            loads.append(name)
            deadline = time.monotonic() + 10
            while name == "a" and key_lock.reached < 4 and time.monotonic() < deadline:
                time.sleep(0.001)  # the first load ends only once all four sessions wait on it
            return torch.nn.Linear(1, 1)
        return load

    threads = [threading.Thread(target=cache.get, args=(("a", 1), loader("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert key_lock.reached == 4  # all four were in get() while the first load ran
    assert loads == ["a"]  # four sessions asked at once: one load
    first = cache.get(("a", 1), loader("a"))
    cache.get(("b", 1), loader("b"))
    cache.get(("c", 1), loader("c"))  # evicts the least recently used ("a")
    assert len(cache) == 2 and loads == ["a", "b", "c"]
    assert cache.get(("a", 1), loader("a")) is not first and loads[-1] == "a"


def test_unfamiliar_image_note() -> None:
    from simam_viz.engine.analysis import Prediction
    from simam_viz.serving.guidance import unfamiliar_image_note

    def result(name: str, p: float):
        return type("R", (), {"predictions": [Prediction(0, name, p)]})()

    sure = [result("dog", 0.93), result("dog", 0.99)]
    assert unfamiliar_image_note(sure, ["demo", "demo"], CLASSES) is None
    unsure = [result("dog", 0.41), result("bicycle", 0.36)]
    note = unfamiliar_image_note(unsure, ["demo", "demo"], CLASSES)
    assert note is not None and "know only 3 kinds" in note and "apple, ball, cat" in note
    disagree = [result("dog", 0.9), result("cat", 0.8)]
    assert unfamiliar_image_note(disagree, ["demo", "demo"], CLASSES) == note  # same sentence
    # an official (ImageNet) model in the comparison: no such claim about the image
    assert unfamiliar_image_note(unsure, ["demo", "official"], CLASSES) is None
