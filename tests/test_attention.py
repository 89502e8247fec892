"""SimAM against the paper's equations, computed independently in float64 with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from simam_viz import SimAM
from simam_viz.networks.attention import CBAM, ECA, SE


def simam_numpy(x: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Eqn (5) per neuron, inverted, through a sigmoid (Eqn 6), one channel at a time.

    The authors' code normalises the variance by n = H*W - 1; Eqn (5) then gives
    1/e* = (t - mu)^2 / (4 (var + lambda)) + 1/2 exactly.
    """
    out = np.empty_like(x)
    weights = np.empty_like(x)
    n_, c_, h, w = x.shape
    for n in range(n_):
        for c in range(c_):
            ch = x[n, c]
            mu = ch.mean()
            var = ((ch - mu) ** 2).sum() / (h * w - 1)
            energy = 4 * (var + lam) / ((ch - mu) ** 2 + 2 * var + 2 * lam)  # Eqn (5)
            weights[n, c] = 1 / (1 + np.exp(-1 / energy))
            out[n, c] = ch * weights[n, c]  # Eqn (6)
    return out, weights


@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 4, 5, 9), (1, 2, 1, 2), (3, 1, 14, 14)])
@pytest.mark.parametrize("lam", [1e-4, 0.1, 1.0])
def test_simam_matches_equations(shape: tuple[int, ...], lam: float) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * rng.uniform(0.1, 3.0)
    expected, expected_w = simam_numpy(x, lam)
    module = SimAM(lam).double()
    seen = {}
    module.sigmoid.register_forward_hook(lambda m, i, o: seen.setdefault("w", o))
    got = module(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seen["w"].numpy(), expected_w, rtol=1e-12, atol=1e-12)
    assert list(module.parameters()) == [] and list(module.buffers()) == []


def test_simam_float32_close_to_float64() -> None:
    x = np.random.default_rng(0).normal(size=(2, 8, 14, 14))
    expected, _ = simam_numpy(x, 0.1)
    got = SimAM(0.1)(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_simam_gradients(lam: float) -> None:
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SimAM(lam), (x,))
    # and against autograd through an independent formula (population-variance form rescaled)
    g = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    (SimAM(lam)(x) * g).sum().backward()
    grad_module = x.grad.clone()
    x.grad = None
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=True)
    energy = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)
    (x * torch.sigmoid(1 / energy) * g).sum().backward()
    torch.testing.assert_close(grad_module, x.grad, rtol=1e-10, atol=1e-12)


def energy_eq2(params: np.ndarray, t: float, others: np.ndarray, lam: float) -> float:
    w, b = params
    return float(
        np.mean((-1 - (w * others + b)) ** 2) + (1 - (w * t + b)) ** 2 + lam * w**2
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_closed_form_is_the_minimum_of_eq2(seed: int, lam: float) -> None:
    """Eqn (2) minimised numerically equals the closed form with the others' mean/variance.

    The minimiser is w = +2 (t - mu) / ((t - mu)^2 + 2 sigma^2 + 2 lambda): the sign printed in
    Eqn (3) is the opposite one. Eqn (5) is the same minimum with mu, sigma over all neurons.
    """
    rng = np.random.default_rng(seed)
    channel = rng.normal(size=25) * 2
    t, others = channel[0], channel[1:]
    res = minimize(energy_eq2, x0=np.zeros(2), args=(t, others, lam), tol=1e-14)
    mu, var = others.mean(), others.var()  # over the M-1 other neurons, normalised by M-1
    w_closed = 2 * (t - mu) / ((t - mu) ** 2 + 2 * var + 2 * lam)
    b_closed = -0.5 * (t + mu) * w_closed
    e_closed = 4 * (var + lam) / ((t - mu) ** 2 + 2 * var + 2 * lam)
    np.testing.assert_allclose(res.x, [w_closed, b_closed], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.fun, e_closed, rtol=1e-8)
    assert np.sign(w_closed) == np.sign(t - mu)  # Eqn (3)'s printed sign would give the opposite
    assert energy_eq2(np.array([-w_closed, b_closed]), t, others, lam) > res.fun


def test_se_eca_cbam_match_independent_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    se = SE(32, bias=True).eval()
    s = x.mean(dim=(2, 3))
    fc = se.fc
    exc = torch.sigmoid(torch.relu(s @ fc[0].weight.T + fc[0].bias) @ fc[2].weight.T + fc[2].bias)
    torch.testing.assert_close(se(x), x * exc[:, :, None, None])

    eca = ECA(32, 5).eval()
    y = torch.nn.functional.conv1d(s[:, None, :], eca.conv.weight, padding=2)[:, 0]
    torch.testing.assert_close(eca(x), x * torch.sigmoid(y)[:, :, None, None])

    cbam = CBAM(32).eval()
    mlp = cbam.ChannelGate.mlp
    def m(v: torch.Tensor) -> torch.Tensor:
        return torch.relu(v @ mlp[1].weight.T + mlp[1].bias) @ mlp[3].weight.T + mlp[3].bias
    xc = x * torch.sigmoid(m(s) + m(x.amax(dim=(2, 3))))[:, :, None, None]
    sp = cbam.SpatialGate.spatial
    pooled = torch.stack([xc.max(dim=1).values, xc.mean(dim=1)], dim=1)
    z = torch.nn.functional.conv2d(pooled, sp.conv.weight, padding=3)
    z = (z - sp.bn.running_mean) / torch.sqrt(sp.bn.running_var + sp.bn.eps) * sp.bn.weight
    z = z + sp.bn.bias
    torch.testing.assert_close(cbam(x), xc * torch.sigmoid(z))


@pytest.mark.parametrize("shape", [(1, 64, 56, 56), (4, 16, 7, 7), (2, 3, 1, 2)])
def test_inference_path_matches_autograd_path(shape: tuple[int, ...]) -> None:
    """The in-place no-grad path gives the same numbers and intact hooked weights."""
    x = torch.randn(shape) * 3 + 1
    x_before = x.numpy().copy()
    module = SimAM(0.1)
    expected, expected_w = simam_numpy(x.double().numpy(), 0.1)
    with torch.inference_mode():
        fast = module(x)
    np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-5, atol=1e-5)
    seen = {}
    module.sigmoid.register_forward_hook(lambda m, i, o: seen.setdefault("w", o))
    with torch.no_grad():
        hooked = module(x)
    np.testing.assert_allclose(hooked.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen["w"].numpy(), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x.numpy(), x_before)  # input untouched
