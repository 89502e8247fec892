"""The engine's maps equal pytorch-grad-cam's and the paper's equations, from one pass."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import hook_count, tiny_model
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from simam_viz import ARCHS, BLOCKS
from simam_viz.engine.analysis import AnalysisError, analyze
from simam_viz.engine.cam_methods import METHODS


def _model(arch: str = "simam_resnet50", seed: int = 0, width: float = 0.25, classes: int = 10):
    """Random BN statistics, so maps are not trivially uniform; classes named class0, ..."""
    return tiny_model(arch, seed, width=width, num_classes=classes, random_bn=True,
                      class_names=[f"class{i}" for i in range(classes)])


def _x(seed: int, size: int = 96) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _library_cam(method: str, model, module, x, target: int) -> np.ndarray:
    cls = METHODS[method].cls
    with cls(model, [module]) as cam:
        out = cam(x, [ClassifierOutputTarget(target)])
    return out[0]


@pytest.mark.parametrize("block", ["layer4.2", "layer3.1", "layer1.0"])
def test_simam_maps_equal_pytorch_grad_cam(block: str) -> None:
    model, x = _model(), _x(1)
    result = analyze(model, x, blocks=("layer4.2", "layer3.1", "layer1.0"))
    bottleneck = model.get_submodule(block)
    simam = bottleneck.conv2[1]
    for where, module in [("before", bottleneck.conv2[0]), ("after", simam),
                          ("attention", simam.sigmoid), ("output", bottleneck)]:
        expected = _library_cam("gradcam", model, module, x, result.target)
        np.testing.assert_allclose(result.cam(block, where), expected, atol=1e-5)
        assert result.cam(block, where).shape == (96, 96)
        assert result.cam(block, where).dtype == np.float32
        raw = result.raw_cam(block, where)
        if raw.max() > 0:  # scaled map is the min-max scaled raw map
            assert np.corrcoef(raw.ravel(), result.cam(block, where).ravel())[0, 1] > 0.99


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if not spec.slow])
def test_every_fast_method_equals_the_library(method: str) -> None:
    model, x = _model(seed=3), _x(2)
    result = analyze(model, x, method=method, target=4)
    simam = model.layer4[2].conv2[1]
    for where, module in [("after", simam), ("attention", simam.sigmoid)]:
        expected = _library_cam(method, model, module, x, 4)
        np.testing.assert_allclose(result.cam("layer4.2", where), expected, atol=1e-4)


def test_slow_method_scorecam_equals_the_library() -> None:
    model, x = _model(seed=4, width=0.125), _x(3, 64)
    result = analyze(model, x, method="scorecam", target=2)
    simam = model.layer4[2].conv2[1]
    expected = _library_cam("scorecam", model, simam, x, 2)
    np.testing.assert_allclose(result.cam("layer4.2", "after"), expected, atol=1e-4)
    assert hook_count(model) == 0


def test_channel_averaged_attention_equals_equations() -> None:
    model, x = _model(seed=5), _x(4)
    seen = {}
    handle = model.layer4[0].conv2[0].register_forward_hook(lambda m, i, o: seen.setdefault("f", o))
    result = analyze(model, x, blocks=("layer4.0",))
    handle.remove()
    f = seen["f"][0].detach().double().numpy()  # conv2 output = SimAM input, C x h x w
    mu = f.mean(axis=(1, 2), keepdims=True)
    var = ((f - mu) ** 2).sum(axis=(1, 2), keepdims=True) / (f.shape[1] * f.shape[2] - 1)
    weights = 1 / (1 + np.exp(-((f - mu) ** 2 / (4 * (var + 0.1)) + 0.5)))
    w, avg = result.attention("layer4.0")
    np.testing.assert_allclose(w, weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(avg, weights.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.channel_weights("layer4.0"), weights.mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)


def test_one_forward_one_backward_for_all_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(seed=6), _x(5)
    calls = {"fwd": 0, "bwd": 0}
    handle = model.register_forward_hook(lambda *a: calls.__setitem__("fwd", calls["fwd"] + 1))
    real_backward = torch.autograd.backward

    def counting_backward(*args, **kwargs):
        calls["bwd"] += 1
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    result = analyze(model, x, blocks="all")
    handle.remove()
    assert calls == {"fwd": 1, "bwd": 1}
    assert result.blocks == BLOCKS
    assert all(len(result.wheres(b)) == 4 for b in BLOCKS)
    assert hook_count(model) == 0


def test_se_channel_weights_are_the_excitation() -> None:
    model, x = _model("se_resnet50", seed=7), _x(6)
    seen = {}
    block = model.layer3[2]
    handle = block.bn3[1].fc.register_forward_hook(lambda m, i, o: seen.setdefault("e", o))
    result = analyze(model, x, blocks=("layer3.2",))
    handle.remove()
    np.testing.assert_allclose(result.channel_weights("layer3.2"), seen["e"][0].detach().numpy())
    assert result.wheres("layer3.2") == ("output", "before", "after")
    expected = _library_cam("gradcam", model, block.bn3[0], x, result.target)
    np.testing.assert_allclose(result.cam("layer3.2", "before"), expected, atol=1e-5)
    with pytest.raises(AnalysisError, match="no 3-D attention weights"):
        result.attention("layer3.2")


def test_state_is_restored_and_lambda_is_per_call() -> None:
    model, x = _model(seed=8), _x(7)
    model.train()
    model.fc.weight.requires_grad_(False)
    base = analyze(model, x)
    assert model.training and not model.fc.weight.requires_grad
    assert model.conv1.weight.requires_grad and model.conv1.weight.grad is None
    changed = analyze(model, x, simam_lambda=1e-4)
    assert changed.simam_lambda == 1e-4 and base.simam_lambda == 0.1
    assert all(m.e_lambda == 0.1 for m in model.modules() if hasattr(m, "e_lambda"))
    other = _model(seed=8)
    for m in other.modules():
        if hasattr(m, "e_lambda"):
            m.e_lambda = 1e-4
    ref = analyze(other, x)
    np.testing.assert_array_equal(changed.probabilities, ref.probabilities)
    assert not np.array_equal(changed.probabilities, base.probabilities)


def test_bad_requests_fail_before_any_work() -> None:
    model, x = _model(seed=9), _x(8)
    for kwargs, message in [
        ({"target": 10}, "out of range"),
        ({"target": -1}, "out of range"),
        ({"target": "zebra"}, "unknown class"),
        ({"blocks": ("layer5.0",)}, "unknown block"),
        ({"method": "magic"}, "unknown CAM method"),
        ({"simam_lambda": -1.0}, "positive"),
    ]:
        with pytest.raises(AnalysisError, match=message):
            analyze(model, x, **kwargs)
    with pytest.raises(AnalysisError, match="1x3xHxW"):
        analyze(model, torch.randn(2, 3, 32, 32))
    assert analyze(model, x, target="class3").target == 3
    assert hook_count(model) == 0


def test_threads_match_serial_results_exactly() -> None:
    model = _model(seed=10, width=0.125)
    images = [_x(20, 64), _x(21, 64)]
    serial = [analyze(model, img, blocks=("layer4.2", "layer2.1")) for img in images]
    failures: list[str] = []

    def worker(k: int) -> None:
        for i in range(25):
            j = (i + k) % 2
            r = analyze(model, images[j], blocks=("layer4.2", "layer2.1"))
            for key, arr in r.arrays().items():
                if not np.array_equal(arr, serial[j].arrays()[key]):
                    failures.append(f"thread {k} run {i}: {key}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_anomaly_detection_and_finite_maps(arch: str) -> None:
    model, x = _model(arch, seed=11), _x(9)
    with torch.autograd.set_detect_anomaly(True):
        result = analyze(model, x, blocks=("layer4.2", "layer2.0"))
    for block in ("layer4.2", "layer2.0"):
        for where in result.wheres(block):
            cam, raw = result.cam(block, where), result.raw_cam(block, where)
            assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
            assert np.isfinite(raw).all() and raw.min() >= 0
            notes = [n for n in result.notes if n.startswith(f"{block}/{where}: ")]
            if cam.std() > 0:
                assert notes == [], notes  # a map with content needs no excuse
                continue
            # a flat map is only right when the raw map is empty after ReLU, and then the
            # note naming exactly this map says so
            assert raw.max() <= 0, f"{block}/{where} is flat but its raw max is {raw.max()}"
            assert any("empty after ReLU" in n for n in notes), (
                f"{block}/{where} is flat and no note names it: {result.notes}")
    for note in result.notes:  # and no note is about a map that is not empty
        block, where = note.split(":", 1)[0].split("/")
        assert result.raw_cam(block, where).max() <= 0, note


def test_pil_input_uses_model_preprocessing() -> None:
    from PIL import Image

    from simam_viz.networks.preprocess import Preprocessing

    model = _model(seed=12)
    model.simam_viz.preprocessing = Preprocessing(resize=80, crop=64)
    pic = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), np.uint8))
    result = analyze(model, pic)
    assert result.image.shape == (64, 64, 3) and result.cam("layer4.2").shape == (64, 64)


def test_errors_inside_the_pass_remove_hooks() -> None:
    model, x = _model(seed=13), _x(10)

    def boom(*args):
        raise RuntimeError("injected")

    handle = model.layer3[0].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="injected"):
        analyze(model, x, blocks="all")
    handle.remove()
    assert hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    assert analyze(model, x).cam("layer4.2").shape == (96, 96)
