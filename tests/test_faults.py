"""The app survives faults: one clear line in the page, the next request works, nobody else hurt.

Four kinds of fault, each injected where it would really happen:

(a) the engine raising mid-way through a pass (in a block's forward, in the backward pass, or
    while the CAMs are derived, and inside AblationCAM's extra forwards, which swap a layer of
    the shared model);
(b) a GPU out-of-memory error raised from a model's forward;
(c) a checkpoint deleted, truncated, emptied or replaced on disk while the app runs;
(d) the server restarted under an open browser page.

What is already covered elsewhere is not repeated here: ``tests/test_app.py`` checks that a
failing ``Service.analyze_fn`` (RuntimeError or OOM) becomes a ``ServiceError``, that OOM clears
the result cache and that the next request works, the "busy, retry" bound, and the
no-checkpoints message; ``tests/test_analysis.py`` checks that an error raised by a hook
inside ``analyze`` removes the hooks. Here the faults come from inside a real pass and the
checks go further: every module's hook count back to its baseline, ``requires_grad`` flags,
train/eval mode, SimAM's lambda, BatchNorm statistics and the module tree unchanged, the model
lock and service slot released, the next analysis bit-identical to one from a model that never
saw the fault, and the page's own behaviour through ``streamlit.testing.v1.AppTest`` (sessions
in one process share the process-wide model and result caches of
``simam_viz.serving.service``, like a
real server's sessions; each test starts with them empty).
The restart (d) needs a real browser and server; it is skipped without chromium/playwright.

What a user sees, verbatim, is in the ``*_MESSAGE`` constants below.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
import torch
from helpers import (
    CLASSES,
    DEFAULT_EXAMPLE,
    TINY_PREP,
    cache_key,
    demo_or_tiny_checkpoints,
    global_hook_counts,
    hook_counts,
    noise_image,
    run_page,
    save_tiny_checkpoints,
    tiny_model,
)
from PIL import Image
from torch import nn

import simam_viz.engine.analysis as analysis_module
import simam_viz.serving.service as service_module
from simam_viz import save_checkpoint
from simam_viz.engine.analysis import Analysis, analyze, model_lock
from simam_viz.images import load_image
from simam_viz.networks.attention import SimAM
from simam_viz.networks.models import attention_module
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.serving.service import AnalysisKey, Service, ServiceError
from simam_viz.weights import catalog
from simam_viz.weights.checkpoints import file_sha256, load_model

PREP = TINY_PREP
DEMO_NAMES = ["ResNet-50 demo", "SE-ResNet-50 demo", "SimAM-ResNet-50 demo"]
LAMBDA_KEY = "lambda::demo/simam_resnet50"  # the lambda slider's key: one per SimAM checkpoint
IMAGE_CAPTION = f"Image: `{DEFAULT_EXAMPLE.name}`"  # the figures' image (only on success)
OOM_MESSAGE = "the GPU ran out of memory; try fewer models or the CPU device"
FAULT_MESSAGE = "analysis failed (RuntimeError: injected fault in SimAM call 9)"
BROKEN_MESSAGES = {
    "deleted": "extra.safetensors: no such checkpoint file",
    "truncated": "extra.safetensors: not a valid safetensors file (truncated or corrupt)",
    "emptied": "extra.safetensors: empty file; expected a PyTorch or safetensors checkpoint",
}


# ---------------------------------------------------------------------------- helpers


def _tiny(arch: str = "simam_resnet50", seed: int = 0) -> nn.Module:
    """A width-0.125 model at 64 px with random BN statistics (so maps are not uniform)."""
    return tiny_model(arch, seed, dilate_last=True, random_bn=True, class_names=CLASSES,
                      preprocessing=PREP)


IMAGE = noise_image(3, 80, 96)


def _key(image: str = "a" * 64) -> AnalysisKey:
    """The key of the faulty requests below: lambda 1.0, not the models' default 0.1."""
    return cache_key(image, lam=1.0)


def _state(model: nn.Module) -> dict[str, Any]:
    """Everything about a model that an analysis must leave as it found it (but weights)."""
    return {
        "modules": [(name, type(m).__name__) for name, m in model.named_modules()],
        "hooks": hook_counts(model),
        "global_hooks": global_hook_counts(),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "lambdas": [m.e_lambda for m in model.modules() if isinstance(m, SimAM)],
    }


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # incl. BN running stats


def _assert_same_arrays(a: Analysis, b: Analysis) -> None:
    """Bit-identical: every map, weight vector, the probabilities and the crop."""
    arrays_a, arrays_b = a.arrays(), b.arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for name, arr in arrays_a.items():
        np.testing.assert_array_equal(arr, arrays_b[name], err_msg=name)
    assert a.predictions == b.predictions and a.target == b.target


@dataclass
class SimamFault:
    """Makes the ``at_call``-th SimAM forward of every pass raise, while ``active``.

    Patched on the class, so it reaches models the app loaded inside its own caches; counting
    calls per pass puts the failure mid-way (call 9 of 16 is in layer3), after hooks have
    recorded earlier blocks' activations and registered tensor hooks for their gradients.
    """

    error: Callable[[], BaseException]
    at_call: int = 9
    active: bool = True
    calls: int = 0
    freed: list[weakref.ref] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> SimamFault:
        original = SimAM.forward

        def forward(module: SimAM, x: torch.Tensor) -> torch.Tensor:
            out = original(module, x)
            if self.active:
                self.calls += 1
                if self.calls == self.at_call:
                    self.calls = 0
                    self.freed.append(weakref.ref(out))  # a tensor of the failed pass
                    raise self.error()
            return out

        monkeypatch.setattr(SimAM, "forward", forward)
        return self


# ------------------------------------------------------- (a) engine faults, exact state


@pytest.mark.parametrize("phase", ["forward", "backward", "cams"])
def test_fault_mid_pass_leaves_shared_model_exactly_as_found(
    phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault anywhere in a pass: one-line ServiceError, then exactly a clean run's arrays.

    The model starts in train mode with some parameters frozen, and the failing call uses a
    non-default lambda, so restoring "eval, all grads on, default lambda" would be caught.
    """
    model = _tiny(seed=1).train()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    untouched = copy.deepcopy(model)  # never sees the fault: the reference
    state, weights = _state(model), _weights(model)
    target = attention_module(model, "layer3.2")
    calls = {"n": 0}

    if phase in ("forward", "backward"):
        original = SimAM.forward

        def forward(module: SimAM, x: torch.Tensor) -> torch.Tensor:
            out = original(module, x)
            if module is target and phase == "forward":
                raise RuntimeError("injected fault in layer3.2")
            if module is target and out.requires_grad:
                def fail(grad: torch.Tensor) -> None:
                    raise RuntimeError("injected fault in layer3.2's backward")
                out.register_hook(fail)
            return out

        monkeypatch.setattr(SimAM, "forward", forward)
    else:
        original_cam = analysis_module.compute_cam

        def compute_cam(*args: Any, **kwargs: Any):
            calls["n"] += 1
            if calls["n"] == 20:  # layer2.x: the pass is done, half the maps are made
                raise RuntimeError("injected fault in compute_cam")
            return original_cam(*args, **kwargs)

        monkeypatch.setattr(analysis_module, "compute_cam", compute_cam)

    service = Service(max_concurrent=1, wait_s=0.1)
    with pytest.raises(ServiceError) as exc:
        service.analysis(_key(), model, IMAGE)
    message = str(exc.value)
    assert message.startswith("analysis failed (RuntimeError: injected fault")
    assert "\n" not in message and "Traceback" not in message
    assert _state(model) == state  # hooks, modes, flags, lambda, no stray .grad
    _assert_same_weights(model, weights)
    assert not model_lock(model).locked()
    assert len(service.cache) == 0  # a failure is never cached

    monkeypatch.undo()
    again, cached = service.analysis(_key(), model, IMAGE)  # slot free: no BusyError
    assert not cached and again.simam_lambda == 1.0
    _assert_same_arrays(again, analyze(untouched, IMAGE, blocks="all", simam_lambda=1.0))
    assert _state(model) == state
    _assert_same_weights(model, weights)


def test_ablation_cam_fault_puts_the_swapped_layer_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """AblationCAM swaps the target layer for an ablation layer during its extra forwards.

    An OOM in one of those batches must not leave the shared model with the ablation layer
    inside it (or AblationCAM's activation hook on it): every later analysis would be wrong.
    """
    model = _tiny(seed=2)
    untouched = copy.deepcopy(model)
    state, weights = _state(model), _weights(model)
    original = nn.Linear.forward
    seen = {"batches": 0}

    def fc_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:  # only AblationCAM's ablation batches are larger than one
            seen["batches"] += 1
            if seen["batches"] == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return original(module, x)

    monkeypatch.setattr(nn.Linear, "forward", fc_forward)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        analyze(model, IMAGE, blocks=("layer4.2",), method="ablationcam")
    assert seen["batches"] == 2
    assert _state(model) == state
    _assert_same_weights(model, weights)
    monkeypatch.undo()
    _assert_same_arrays(analyze(model, IMAGE, blocks=("layer4.2",), method="ablationcam"),
                        analyze(untouched, IMAGE, blocks=("layer4.2",), method="ablationcam"))


# ----------------------------------------------------------------------- (b) GPU OOM


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_oom_in_forward_frees_memory_then_next_request_works(
    cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OOM from a real forward: the message, the cache cleared, ``empty_cache`` when CUDA
    exists, and by then the failed pass's tensors are already gone (else nothing is freed)."""
    model = _tiny(seed=4)
    untouched = copy.deepcopy(model)
    state = _state(model)
    service = Service(max_concurrent=1, wait_s=0.1)
    service.analysis(_key(image="c" * 64), model, IMAGE)  # another user's cached result
    emptied: list[bool] = []
    fault = SimamFault(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried ..."))
    fault.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "empty_cache",
                        lambda: emptied.append(all(r() is None for r in fault.freed)))

    with pytest.raises(ServiceError) as exc:
        service.analysis(_key(), model, IMAGE)
    assert str(exc.value) == OOM_MESSAGE
    assert len(fault.freed) == 1
    assert emptied == ([True] if cuda else [])  # called once, after the pass's tensors died
    assert len(service.cache) == 0
    assert _state(model) == state and not model_lock(model).locked()

    fault.active = False
    again, cached = service.analysis(_key(), model, IMAGE)
    assert not cached
    _assert_same_arrays(again, analyze(untouched, IMAGE, blocks="all", simam_lambda=1.0))


# ---------------------------------------------------------------- the page (AppTest)


@dataclass
class Spy:
    """What the app did through the shared caches: models it loaded (``catalog.load``, called
    by ``ModelCache`` on a miss) and analyses it ran (``Service.analysis``, which the page calls
    only when ``service.cache`` has no result for the key: a recalled result is not recorded)."""

    loads: list[tuple[Path, nn.Module]] = field(default_factory=list)
    analyses: list[tuple[AnalysisKey, nn.Module, Analysis, bool]] = field(default_factory=list)

    def model(self, path: Path) -> nn.Module:
        return [m for p, m in self.loads if p == path][-1]

    def loaded(self, path: Path) -> int:
        return sum(p == path for p, _ in self.loads)

    def last(self, model_key: str) -> tuple[AnalysisKey, nn.Module, Analysis, bool]:
        return [a for a in self.analyses if a[0].model_key == model_key][-1]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny demo models and one user file (``user/extra``) that no page selects."""
    folder = save_tiny_checkpoints(tmp_path_factory.mktemp("faults_ckpt"), random_bn=True)
    save_checkpoint(_tiny("se_resnet50", 7), folder / "user" / "extra", class_names=CLASSES,
                    preprocessing=PREP)
    return folder


def _clear_app_caches() -> None:
    """Forget everything a previous test loaded or computed: the catalog (``st.cache_data``),
    the page's file versions (``st.cache_resource``) and the process-wide ``ModelCache`` and
    ``Service`` (result cache) of ``simam_viz.serving.service``, which Streamlit's clear()
    leaves."""
    st.cache_resource.clear()
    st.cache_data.clear()
    with service_module._SHARED_LOCK:
        service_module._SHARED.clear()


@pytest.fixture()
def ckpt(tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private copy of the checkpoints (tests damage it) and empty app caches."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(tiny_set, folder)
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(folder))
    monkeypatch.setenv("SIMAM_VIZ_DEMO_MODELS", "0")  # this folder's models and no others
    _clear_app_caches()
    yield folder
    _clear_app_caches()


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Record the app's model loads and analyses: the models live in the shared caches."""
    record = Spy()
    original_load, original_analysis = catalog.load, Service.analysis

    def load(item: catalog.CatalogItem, device: str = "cpu") -> nn.Module:
        model = original_load(item, device)
        record.loads.append((item.path, model))
        return model

    def analysis(self: Service, key: AnalysisKey, model: nn.Module, image: Image.Image,
                 session: str | None = None):
        result, cached = original_analysis(self, key, model, image, session)
        record.analyses.append((key, model, result, cached))
        return result, cached

    monkeypatch.setattr(catalog, "load", load)
    monkeypatch.setattr(Service, "analysis", analysis)
    return record


def _session():
    """A new browser session on the page (its own session state, the shared caches); with no
    upload it analyses the default example."""
    return run_page(timeout=120)


def _errors(at) -> list[str]:
    """The page's error boxes, after checking nothing escaped as an exception/traceback."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert all("\n" not in e and "Traceback" not in e for e in errors), errors
    return errors


def _shown(at) -> list[str]:
    """Names of the models whose results the page shows (from the timings caption)."""
    caption = next((c.value for c in at.caption if c.value.startswith("Device")), None)
    if caption is None:
        return []
    return [part.rsplit(":", 1)[0] for part in caption.split(" · ")[1:]]


def _image_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("Image:")]


def _recomputed(at) -> bool:
    caption = next(c.value for c in at.caption if c.value.startswith("Device"))
    return "cached" not in caption


def _clean_result(path: Path, lam: float | None) -> Analysis:
    """What the page should show for ``path``: a fresh model that never saw any fault."""
    return analyze(load_model(path, preprocessing=None), load_image(DEFAULT_EXAMPLE.read_bytes()),
                   blocks="all", simam_lambda=lam)


def test_page_reports_engine_fault_and_recovers(ckpt: Path, spy: Spy,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """(a) in the page: one line, the SimAM model unharmed, other models unaffected."""
    fault = SimamFault(lambda: RuntimeError("injected fault in SimAM call 9")).install(
        monkeypatch)
    simam_path = ckpt / "demo" / "simam_resnet50.safetensors"
    at = _session()
    assert _errors(at) == [FAULT_MESSAGE]
    assert _shown(at) == [] and _image_captions(at) == []  # no half-drawn page
    simam = spy.model(simam_path)
    reference = load_model(simam_path)
    assert _state(simam) == _state(reference)  # eval, grads on, lambda, no hooks left
    _assert_same_weights(simam, _weights(reference))

    # meanwhile another user comparing the other two models is not affected
    other = _session()
    assert _errors(other) == [FAULT_MESSAGE]  # the default selection includes SimAM
    other.multiselect(key="models").set_value(["demo/resnet50", "demo/se_resnet50"]).run()
    assert _errors(other) == [] and _shown(other) == DEMO_NAMES[:2]

    # the next request on the same cached model works and gives a clean run's arrays
    fault.active = False
    at.run()
    assert _errors(at) == [] and _shown(at) == DEMO_NAMES
    assert _image_captions(at) == [IMAGE_CAPTION]
    assert spy.loaded(simam_path) == 1  # the same cached model, not a reload
    key, model, result, cached = spy.last("demo/simam_resnet50")
    assert model is simam and not cached
    _assert_same_arrays(result, _clean_result(simam_path, 0.1))


def test_page_reports_oom_and_other_sessions_recompute(ckpt: Path, spy: Spy,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """(b) in the page: the OOM line; the shared result cache is dropped, and another session
    simply recomputes; the failing session's next request works."""
    watcher = _session()
    assert _errors(watcher) == [] and _shown(watcher) == DEMO_NAMES
    fault = SimamFault(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to ..."))
    fault.install(monkeypatch)
    at = _session()
    assert _errors(at) == [] and not _recomputed(at)  # same image: all from the cache
    at.select_slider(key=LAMBDA_KEY).set_value(1.0).run()  # only SimAM has to run again
    assert _errors(at) == [OOM_MESSAGE] and _shown(at) == []
    fault.active = False
    watcher.run()
    assert _errors(watcher) == [] and _shown(watcher) == DEMO_NAMES
    assert _recomputed(watcher)  # its cached results were freed with the rest
    at.run()
    assert _errors(at) == [] and _shown(at) == DEMO_NAMES
    at.session_state["view"] = "Inside attention"  # the lambda is in that (lazy) tab's caption
    at.run()
    assert _errors(at) == [] and any("λ = 1.0" in c.value for c in at.caption)


# --------------------------------------------------------------- (c) checkpoints on disk


def test_checkpoint_deleted_after_load_keeps_serving(ckpt: Path, spy: Spy) -> None:
    """A loaded model keeps working when its file goes; once the catalog is re-read (every
    20 s) the model is simply no longer offered, and the rest of the selection stays."""
    at = _session()
    assert _errors(at) == [] and _shown(at) == DEMO_NAMES
    for suffix in (".safetensors", ".json"):
        (ckpt / "demo" / f"se_resnet50{suffix}").unlink()
    at.select_slider(key=LAMBDA_KEY).set_value(1.0).run()  # a new analysis, the cached model
    assert _errors(at) == [] and _shown(at) == DEMO_NAMES
    assert _errors(_session()) == []  # a new session too
    assert len(spy.loads) == 3  # nothing reloaded
    st.cache_data.clear()  # the catalog's 20 s TTL has passed
    at.run()
    assert _errors(at) == [] and _shown(at) == [DEMO_NAMES[0], DEMO_NAMES[2]]
    assert "SE-ResNet-50 [demo]" not in at.multiselect(key="models").options


@pytest.mark.parametrize("damage", list(BROKEN_MESSAGES))
def test_unloaded_checkpoint_broken_on_disk_names_the_file(ckpt: Path, spy: Spy,
                                                           damage: str) -> None:
    """A file damaged after the catalog listed it but before anyone loaded it: one line
    naming the file; the other models still render; once repaired it loads."""
    path = ckpt / "user" / "extra.safetensors"
    good = path.read_bytes()
    at = _session()
    assert "SE-ResNet-50 [user file]" in at.multiselect(key="models").options
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    at.multiselect(key="models").select("file/user/extra.safetensors").run()
    assert _errors(at) == [BROKEN_MESSAGES[damage]]
    assert _shown(at) == DEMO_NAMES
    path.write_bytes(good)
    at.run()
    assert _errors(at) == [] and _shown(at) == [*DEMO_NAMES, "SE-ResNet-50 (extra.safetensors)"]


@pytest.mark.parametrize("how", ["new file", "rewritten in place, mtime kept"])
def test_replaced_checkpoint_is_loaded_again(ckpt: Path, spy: Spy, tmp_path: Path,
                                             how: str) -> None:
    """Decision: a file replaced under the same name IS the user's new model, so the app
    notices (the model cache is keyed on inode, size, mtime and ctime of the file and its
    sidecar) and loads it; results are keyed on the checkpoint's sha256, so nothing stale is
    shown either. Even an in-place rewrite of the same size with the old mtime is noticed."""
    path = ckpt / "demo" / "resnet50.safetensors"
    at = _session()
    assert _errors(at) == [] and spy.loaded(path) == 1
    old_sha = spy.last("demo/resnet50")[0].checkpoint_sha256
    if how == "new file":
        save_checkpoint(_tiny("resnet50", 11), path, class_names=["dog", "egg", "fig"],
                        preprocessing=PREP)
    else:
        other = save_checkpoint(_tiny("resnet50", 11), tmp_path / "other", class_names=CLASSES,
                                preprocessing=PREP)
        before = path.stat()
        data = other.read_bytes()
        assert len(data) == before.st_size
        with path.open("r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns)
    at.run()
    assert _errors(at) == [] and _shown(at) == DEMO_NAMES
    assert spy.loaded(path) == 2
    key, model, result, cached = spy.last("demo/resnet50")
    assert key.checkpoint_sha256 == file_sha256(path) != old_sha and not cached
    _assert_same_arrays(result, _clean_result(path, None))
    if how == "new file":
        assert any("dog" in m.value or "egg" in m.value or "fig" in m.value for m in at.markdown)
    again = _session()  # another session gets the new model too, from the cache
    assert _errors(again) == [] and spy.loaded(path) == 2
    assert spy.last("demo/resnet50")[0].checkpoint_sha256 == key.checkpoint_sha256


# ------------------------------------------------------------ (d) the server restarted


LOST_UPLOAD = "Your uploaded image was lost with the server it was on; please upload it again."


def test_server_restart_reconnects_and_a_new_upload_works(tmp_path: Path) -> None:
    """Kill the server (SIGKILL) under an open page and start it again on the same port.

    While it is down the page says it is reconnecting; once it is back the page reconnects on
    its own, without a reload, and runs at once: the old session and its upload died with
    the process, so the page says the upload was lost with its server and shows the default
    example (no error, no traceback); a new upload is analysed by the new server.
    """
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from localhttp import closed_port
    from playwright.sync_api import sync_playwright

    from harness.apphost import (
        CHROMIUM,
        CHROMIUM_ARGS,
        alerts,
        input_pixels,
        open_session,
        png_bytes,
        start_app,
        stop_app,
        upload,
    )
    from harness.runstate import wait_settled

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (make system-deps)")
    folder = demo_or_tiny_checkpoints(tmp_path / "checkpoints")
    port = closed_port()  # free now; the server takes it, twice
    app = '[data-testid="stApp"]'
    url, proc = start_app(folder, port=port, log=tmp_path / "server-1.log")
    procs = [proc]

    def showing(page, name: str) -> None:
        """Wait until the page's figures are of ``name`` (the caption the page shows only
        after a successful analysis) and the run is over; the example's figures are on the
        page from the start, so counting images alone cannot tell a new result."""
        wait_settled(page, count=4, name=name, timeout_ms=300_000)
        assert page.locator("[data-testid='stImage']").count() >= 4

    def no_error(page) -> None:
        assert page.locator("[data-testid='stAlertContentError']").count() == 0, alerts(page)
        assert not any("went wrong" in a for a in alerts(page))
        assert "Traceback" not in page.content()
        assert page.locator("[data-testid='stException']").count() == 0

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context, page = open_session(browser, url)
            upload(page, "before.png", png_bytes(21))
            showing(page, "before.png")
            page.evaluate("window.__before_restart = true")  # gone if the page reloads

            proc.kill()  # a crash, not a graceful shutdown
            proc.wait(10)
            page.wait_for_selector(f'{app}:not([data-test-connection-state="CONNECTED"])',
                                   timeout=30_000)
            status = page.locator("[data-testid='stStatusWidget']")
            status.filter(has_text="CONNECTING").wait_for(timeout=30_000)

            url_again, proc = start_app(folder, port=port, log=tmp_path / "server-2.log")
            procs.append(proc)
            assert url_again == url
            page.wait_for_selector(f'{app}[data-test-connection-state="CONNECTED"]',
                                   timeout=60_000)
            assert page.evaluate("window.__before_restart === true")  # not reloaded
            # The page runs on the new server by itself (its run_every fragment makes the
            # frontend ask for a full run on reconnect), finds no upload there (the old
            # session and its file died with the process), says so, and shows the default
            # example instead of the old figures, whose files the new server never had.
            page.get_by_text(LOST_UPLOAD).wait_for(timeout=60_000)
            showing(page, "scene_dog_3.png")  # the bundled default example (app/paths.py)
            no_error(page)
            assert page.get_by_text("Image: before.png").count() == 0

            data = png_bytes(22)
            upload(page, "after.png", data)
            showing(page, "after.png")
            no_error(page)
            shown = input_pixels(page)  # fetched from the new server
            prep = Preprocessing(resize=shown.shape[0], crop=shown.shape[0])
            expected = prep.crop_image(Image.open(io.BytesIO(data)).convert("RGB"))
            np.testing.assert_array_equal(shown, np.asarray(expected))
            context.close()
            browser.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_app(proc)
