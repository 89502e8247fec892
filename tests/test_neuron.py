"""One SimAM neuron explained, checked against independent float64 NumPy and SciPy numbers.

The demo SimAM model (width 0.25, layer4 dilated: an 11x11 grid at layer4.2 for the 161-pixel
crop) sees a bundled example scene. Every expected number here comes from the paper's
equations written out again in this file, from a SciPy minimisation of Eqn (2), or from
``analyze``'s own recording, never from ``simam_viz.engine.neuron`` itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DEFAULT_EXAMPLE, DEMO_DIR
from scipy.optimize import minimize

from simam_viz.engine.analysis import analyze
from simam_viz.engine.neuron import (
    energy_curve,
    explain_from_arrays,
    explain_neuron,
    record_simam,
    separating_line,
    solve_eq2,
    weight_curve,
)
from simam_viz.errors import AnalysisError
from simam_viz.images import load_image
from simam_viz.weights.checkpoints import load_model

DEMO = DEMO_DIR
BLOCK = "layer4.2"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model(DEMO / "simam_resnet50.safetensors")


@pytest.fixture(scope="module")
def image():
    return load_image(DEFAULT_EXAMPLE)


@pytest.fixture(scope="module")
def simam_input(model, image) -> np.ndarray:
    """The SimAM module's input at BLOCK, recorded here by a hook of the test's own."""
    seen = {}
    module = model.get_submodule(BLOCK).conv2[1]
    handle = module.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    try:
        with torch.no_grad():
            model(model.simam_viz.preprocessing(image))
    finally:
        handle.remove()
    return seen["x"][0].double().numpy()


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def _eq5_numpy(channel: np.ndarray, t: float, lam: float) -> tuple[float, float, float, float]:
    """Mean, variance (n = M - 1, the authors' code), Eqn (5)'s e* and Eqn (6)'s weight."""
    mu = channel.sum() / channel.size
    var = ((channel - mu) ** 2).sum() / (channel.size - 1)
    energy = 4 * (var + lam) / ((t - mu) ** 2 + 2 * var + 2 * lam)
    return mu, var, energy, 1 / (1 + np.exp(-1 / energy))


def _eq2(params: np.ndarray, t: float, others: np.ndarray, lam: float) -> float:
    w, b = params
    return float(np.mean((-1 - (w * others + b)) ** 2) + (1 - (w * t + b)) ** 2 + lam * w**2)


def _extremes(values: np.ndarray) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """A channel, its neuron farthest from the channel mean and the one nearest to it."""
    c = int(np.argmax(values.std(axis=(1, 2))))
    dev = np.abs(values[c] - values[c].mean())
    far = np.unravel_index(np.argmax(dev), dev.shape)
    near = np.unravel_index(np.argmin(dev), dev.shape)
    return c, (int(far[0]), int(far[1])), (int(near[0]), int(near[1]))


def test_energy_and_weight_match_eqns_5_and_6(model, image, simam_input) -> None:
    c, far, near = _extremes(simam_input)
    lam = model.get_submodule(BLOCK).conv2[1].e_lambda
    for y, x in (far, near, (0, 0)):
        got = explain_neuron(model, image, block=BLOCK, channel=c, y=y, x=x)
        channel = simam_input[c]
        t = channel[y, x]
        mu, var, energy, weight = _eq5_numpy(channel, t, lam)
        assert got["t"] == t  # the exact float32 the module saw, upcast
        np.testing.assert_array_equal(got["values"], channel)
        assert got["grid"] == channel.shape and got["channels"] == simam_input.shape[0]
        assert (got["block"], got["channel"], got["y"], got["x"]) == (BLOCK, c, y, x)
        assert got["lambda"] == lam
        np.testing.assert_allclose([got["mean"], got["variance"]], [mu, var], rtol=1e-12)
        np.testing.assert_allclose(got["energy"], energy, rtol=1e-12)
        np.testing.assert_allclose(got["importance"], 1 / energy, rtol=1e-12)
        np.testing.assert_allclose(got["weight"], weight, rtol=1e-12)
        assert abs(got["module_weight"] - got["weight"]) < 1e-6


def test_exact_minimum_of_eq2_matches_scipy(model, image, simam_input) -> None:
    """energy_exact, w, b are Eqn (2)'s minimum; the printed Eqn (3) sign is the wrong one."""
    c, far, near = _extremes(simam_input)
    lam = model.get_submodule(BLOCK).conv2[1].e_lambda
    for y, x in (far, near):
        got = explain_neuron(model, image, block=BLOCK, channel=c, y=y, x=x)
        flat = simam_input[c].ravel()
        k = y * simam_input.shape[2] + x
        t, others = flat[k], np.delete(flat, k)
        res = minimize(_eq2, x0=np.zeros(2), args=(t, others, lam), method="BFGS",
                       options={"gtol": 1e-12})
        np.testing.assert_allclose(got["energy_exact"], res.fun, rtol=1e-9)
        np.testing.assert_allclose([got["w"], got["b"]], res.x, rtol=1e-5, atol=1e-7)
        assert got["energy_exact"] <= res.fun + 1e-12
        np.testing.assert_allclose([got["mean_others"], got["variance_others"]],
                                   [others.mean(), others.var()], rtol=1e-12)
        # the closed form with the minimising sign agrees; the printed pair is far from minimal
        np.testing.assert_allclose([got["closed_w"], got["closed_b"]], res.x, rtol=1e-5)
        np.testing.assert_allclose(got["energy_closed"], res.fun, rtol=1e-9)
        assert np.sign(got["w"]) == np.sign(t - others.mean())
        np.testing.assert_allclose([got["paper_w"], got["paper_b"]], -res.x, rtol=1e-5)
        assert got["energy_at_paper"] > res.fun
        assert got["energy_at_paper"] == pytest.approx(_eq2(-res.x, t, others, lam), rel=1e-6)
        # Eqn (5)'s whole-channel shortcut: shown, not hidden
        assert got["approximation_gap"] == pytest.approx(got["energy"] - res.fun, abs=1e-9)
        assert got["threshold"] == pytest.approx((t + others.mean()) / 2, rel=1e-9)


def test_module_weight_equals_analyze(model, image) -> None:
    result = analyze(model, image, blocks=[BLOCK, "layer1.0"])
    for block in (BLOCK, "layer1.0"):
        weights = result.attention(block)[0]
        c = int(np.argmax(weights.mean(axis=(1, 2))))
        y, x = np.unravel_index(np.argmin(weights[c]), weights[c].shape)
        got = explain_neuron(model, image, block=block, channel=c, y=int(y), x=int(x))
        assert abs(got["module_weight"] - weights[c, y, x]) < 1e-6
        assert abs(got["weight"] - weights[c, y, x]) < 1e-6
        np.testing.assert_allclose(got["weights"], weights[c], atol=1e-6)
        # the lowest float32 weight; float64 may order near-ties at the bottom differently
        assert got["weight_rank"] >= got["M"] - 2


def test_before_tap_is_the_simam_input(model, image, simam_input) -> None:
    """The ``before`` tap (conv2[0]'s output) is what SimAM sees, and record_simam records it."""
    seen = {}
    conv = model.get_submodule(BLOCK).conv2[0]
    handle = conv.register_forward_hook(lambda m, a, o: seen.setdefault("x", o.clone()))
    try:
        with torch.no_grad():
            model(model.simam_viz.preprocessing(image))
    finally:
        handle.remove()
    np.testing.assert_array_equal(seen["x"][0].double().numpy(), simam_input)
    rec = record_simam(model, image, block=BLOCK)
    np.testing.assert_array_equal(rec.values, simam_input)
    assert rec.values.shape == rec.weights.shape and rec.block == BLOCK


def test_lambda_override_changes_energy_as_eqn_5_says(model, image, simam_input) -> None:
    modules = [m for m in model.modules() if type(m).__name__ == "SimAM"]
    before = [m.e_lambda for m in modules]
    c, far, _ = _extremes(simam_input)
    default = explain_neuron(model, image, block=BLOCK, channel=c, y=far[0], x=far[1])
    got = explain_neuron(model, image, block=BLOCK, channel=c, y=far[0], x=far[1],
                         simam_lambda=2.0)
    assert [m.e_lambda for m in modules] == before  # restored
    assert got["lambda"] == 2.0 and default["lambda"] == before[0]
    mu, var, energy, weight = _eq5_numpy(got["values"], got["t"], 2.0)
    np.testing.assert_allclose([got["energy"], got["weight"]], [energy, weight], rtol=1e-12)
    assert abs(got["module_weight"] - got["weight"]) < 1e-6
    assert got["energy"] != pytest.approx(default["energy"], rel=1e-3)
    expected = analyze(model, image, blocks=[BLOCK], simam_lambda=2.0).attention(BLOCK)[0]
    assert abs(got["module_weight"] - expected[c, far[0], far[1]]) < 1e-6
    # on fixed inputs, a larger lambda pulls every e* towards 2 (weights towards sigmoid(1/2))
    arrays = [explain_from_arrays(simam_input, channel=c, y=far[0], x=far[1], lam=lam)
              for lam in (0.1, 2.0, 1e6)]
    for lam, res in zip((0.1, 2.0, 1e6), arrays, strict=True):
        assert res["energy"] == pytest.approx(_eq5_numpy(simam_input[c], res["t"], lam)[2],
                                              rel=1e-12)
    assert arrays[0]["energy"] < arrays[1]["energy"] < arrays[2]["energy"] < 2
    assert arrays[2]["energy"] == pytest.approx(2, rel=1e-5)


def test_a_standout_neuron_has_lower_energy_and_higher_weight(model, image, simam_input) -> None:
    c, far, near = _extremes(simam_input)
    hi = explain_neuron(model, image, block=BLOCK, channel=c, y=far[0], x=far[1])
    lo = explain_neuron(model, image, block=BLOCK, channel=c, y=near[0], x=near[1])
    assert abs(hi["t"] - hi["mean"]) > 1.5 * np.sqrt(hi["variance"])  # it does stand out
    assert abs(lo["t"] - lo["mean"]) < 0.2 * np.sqrt(lo["variance"])
    assert hi["energy"] < 1.0 < lo["energy"] < 2.0
    assert hi["energy_exact"] < lo["energy_exact"]
    assert hi["weight"] > lo["weight"] + 0.1 and hi["module_weight"] > lo["module_weight"]
    assert hi["weight_rank"] == 1 and lo["weight_rank"] == hi["M"]
    assert lo["weight"] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=5e-3)  # e* ~ 2 at the mean
    # the exact line separates the standout neuron from most others, and not the average one
    assert hi["separated"] > lo["separated"]
    # dropping t from the statistics matters for the standout neuron, hardly at the mean
    assert abs(hi["approximation_gap"]) > 100 * abs(lo["approximation_gap"])


def test_from_arrays_equals_explain_neuron(model, image) -> None:
    rec = record_simam(model, image, block=BLOCK)
    a = explain_neuron(model, image, block=BLOCK, channel=5, y=3, x=7)
    b = explain_from_arrays(rec.values, channel=5, y=3, x=7, lam=rec.lam, weights=rec.weights,
                            block=BLOCK)
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key])
        else:
            assert value == b[key], key
    bare = explain_from_arrays(rec.values, channel=5, y=3, x=7, lam=rec.lam)
    assert bare["module_weight"] is None


def test_pure_helpers() -> None:
    rng = np.random.default_rng(7)
    channel = rng.normal(size=(6, 5)) * 3 + 1
    lam = 0.05
    mu, var = channel.mean(), ((channel - channel.mean()) ** 2).sum() / (channel.size - 1)
    ts = np.linspace(-10, 10, 41)
    energies = 4 * (var + lam) / ((ts - mu) ** 2 + 2 * var + 2 * lam)
    np.testing.assert_allclose(energy_curve(ts, mu, var, lam), energies, rtol=1e-12)
    np.testing.assert_allclose(weight_curve(ts, mu, var, lam), 1 / (1 + np.exp(-1 / energies)),
                               rtol=1e-12)
    assert weight_curve(1e6, mu, var, lam) == 1.0  # no overflow far from the mean
    t, others = channel.ravel()[0], channel.ravel()[1:]
    res = minimize(_eq2, x0=np.zeros(2), args=(t, others, lam), method="BFGS",
                   options={"gtol": 1e-12})
    w, b, energy = solve_eq2(t, others, lam)
    np.testing.assert_allclose([w, b], res.x, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(energy, res.fun, rtol=1e-9)
    np.testing.assert_allclose(separating_line(t, others.mean(), others.var(), lam), [w, b],
                               rtol=1e-10)
    # a large common offset leaves w alone and costs no accuracy (solve_eq2 centres)
    w2, b2, e2 = solve_eq2(t + 1e4, others + 1e4, lam)
    np.testing.assert_allclose([w2, e2], [w, energy], rtol=1e-7)
    assert b2 == pytest.approx(b - w * 1e4, rel=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"block": "layer5.0"}, "unknown block"),
        ({"block": 3}, "unknown block"),
        ({"block": "layer4"}, "unknown block"),
        ({"channel": 128}, "out of range"),
        ({"channel": -1}, "out of range"),
        ({"channel": 1.0}, "integer"),
        ({"channel": True}, "integer"),
        ({"y": 11}, "out of range"),
        ({"x": -1}, "out of range"),
        ({"x": "2"}, "integer"),
        ({"y": np.float32(1)}, "integer"),
        ({"simam_lambda": 0}, "positive"),
        ({"simam_lambda": float("nan")}, "positive"),
        ({"simam_lambda": "big"}, "positive"),
    ],
)
def test_bad_requests_raise_one_line(model, image, kwargs, words) -> None:
    with pytest.raises(AnalysisError, match=words) as info:
        explain_neuron(model, image, **kwargs)
    assert "\n" not in str(info.value)
    assert _hooks(model) == 0


@pytest.mark.parametrize("name", ["resnet50", "se_resnet50"])
def test_models_without_simam_are_refused(image, name: str) -> None:
    other = load_model(DEMO / f"{name}.safetensors")
    with pytest.raises(AnalysisError, match="needs a SimAM model") as info:
        explain_neuron(other, image)
    assert "\n" not in str(info.value)


def test_bad_arrays_raise_one_line() -> None:
    good = np.zeros((2, 3, 3))
    for values, kwargs in [(np.zeros((3, 3)), {}), (np.full((1, 2, 2), np.nan), {}),
                           (np.zeros((1, 1, 1)), {}), (good, {"lam": -1.0}),
                           (good, {"channel": 2}), (good, {"weights": np.zeros((2, 3))})]:
        args = {"channel": 0, "y": 0, "x": 0, "lam": 0.1, **kwargs}
        with pytest.raises(AnalysisError) as info:
            explain_from_arrays(values, **args)
        assert "\n" not in str(info.value)


def test_model_state_is_restored_even_when_the_pass_fails(model, image) -> None:
    modules = list(model.modules())
    params = list(model.parameters())
    original = ([m.training for m in modules], [p.requires_grad for p in params])
    expected = explain_neuron(model, image, channel=1, y=2, x=3, simam_lambda=0.5)
    model.train()
    model.layer1.eval()
    params[0].requires_grad_(not params[0].requires_grad)
    modes = [m.training for m in modules]
    flags = [p.requires_grad for p in params]
    lambdas = [m.e_lambda for m in modules if hasattr(m, "e_lambda")]
    try:
        got = explain_neuron(model, image, channel=1, y=2, x=3, simam_lambda=0.5)
        assert got["t"] == expected["t"]  # computed in eval mode (BN running statistics)

        def boom(*args: object) -> None:
            raise RuntimeError("boom")

        handle = model.fc.register_forward_hook(boom)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                explain_neuron(model, image, simam_lambda=0.5)
        finally:
            handle.remove()
        assert [m.training for m in modules] == modes
        assert [p.requires_grad for p in params] == flags
        assert [m.e_lambda for m in modules if hasattr(m, "e_lambda")] == lambdas
        assert _hooks(model) == 0
    finally:
        for m, mode in zip(modules, original[0], strict=True):
            m.training = mode
        for p, flag in zip(params, original[1], strict=True):
            p.requires_grad_(flag)
