"""Interventions on the attention: every mode against an independent computation.

The reference for each mode is a deep copy of the model whose attention modules are replaced
by hand-written modules: they compute the module's weights from its parameters with explicit
formulas (not the module's forward, not the library's hooks), apply the mode with numpy-style
means, and multiply. ``exact`` is also checked against Eqn (2)'s numeric minimum
(``solve_eq2``, a least-squares solve), neuron by neuron.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import hook_count, tiny_model
from scipy.stats import spearmanr
from torch import nn

from simam_viz import AnalysisError, intervene
from simam_viz.engine.intervention import MODES, attention_blocks, exact_simam_weights
from simam_viz.engine.neuron import solve_eq2
from simam_viz.networks.attention import CBAM, ECA, SE, SimAM
from simam_viz.networks.models import attention_module

ATTENTION_ARCHS = ("se_resnet50", "eca_resnet50", "cbam_resnet50", "simam_resnet50")


def _image(seed: int = 0, side: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _hand_weights(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (B, C, H, W) weights ``module`` multiplies ``x`` by, from its parameters."""
    if isinstance(module, SimAM):
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)) ** 2
        v = d.sum(dim=(2, 3), keepdim=True) / n
        return torch.sigmoid(d / (4 * (v + module.e_lambda)) + 0.5)
    pooled = x.mean(dim=(2, 3))
    if isinstance(module, SE):
        fc1, fc2 = module.fc[0], module.fc[2]
        hidden = F.relu(pooled @ fc1.weight.T + (0 if fc1.bias is None else fc1.bias))
        out = hidden @ fc2.weight.T + (0 if fc2.bias is None else fc2.bias)
        return torch.sigmoid(out)[:, :, None, None].expand_as(x)
    if isinstance(module, ECA):
        kernel = module.conv.weight.view(-1)
        k = kernel.numel()
        padded = F.pad(pooled, ((k - 1) // 2, (k - 1) // 2))
        out = torch.stack([(padded[:, c:c + k] * kernel).sum(dim=1)
                           for c in range(pooled.shape[1])], dim=1)
        return torch.sigmoid(out)[:, :, None, None].expand_as(x)
    if isinstance(module, CBAM):
        lin1, lin2 = module.ChannelGate.mlp[1], module.ChannelGate.mlp[3]

        def mlp(v: torch.Tensor) -> torch.Tensor:
            return F.relu(v @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias

        c = torch.sigmoid(mlp(pooled) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
        x1 = x * c
        maps = torch.cat([x1.amax(dim=1, keepdim=True), x1.mean(dim=1, keepdim=True)], dim=1)
        bn = module.SpatialGate.spatial.bn
        conv = F.conv2d(maps, module.SpatialGate.spatial.conv.weight, padding=3)
        s = torch.sigmoid((conv - bn.running_mean.view(1, -1, 1, 1))
                          / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
                          * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
        return c * s
    raise AssertionError(type(module))


class _HandMode(nn.Module):
    """A hand-written stand-in: the original module's weights, changed by ``mode``."""

    def __init__(self, original: nn.Module, mode: str) -> None:
        super().__init__()
        self.original, self.mode = original, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _hand_weights(self.original, x)
        if self.mode == "identity":
            w = torch.ones_like(w)
        elif self.mode == "constant":
            w = torch.ones_like(w) * w.mean()
        elif self.mode == "channel_mean":
            w = w.mean(dim=(2, 3), keepdim=True).expand_as(w)
        elif self.mode == "spatial_mean":
            w = w.mean(dim=1, keepdim=True).expand_as(w)
        elif self.mode == "exact":
            w = _loop_exact(x, self.original.e_lambda)
        return x * w


def _loop_exact(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Leave-one-out statistics neuron by neuron (slow, obviously right)."""
    flat = x.detach().double().reshape(x.shape[0], x.shape[1], -1)
    out = torch.empty_like(flat)
    m = flat.shape[-1]
    for i in range(m):
        others = torch.cat([flat[..., :i], flat[..., i + 1:]], dim=-1)
        mu = others.mean(dim=-1)
        var = ((others - mu[..., None]) ** 2).sum(dim=-1) / (m - 1)
        out[..., i] = torch.sigmoid((flat[..., i] - mu) ** 2 / (4 * (var + lam)) + 0.5)
    return out.reshape(x.shape).to(x.dtype)


def _by_hand(model: nn.Module, blocks: tuple[str, ...], mode: str) -> nn.Module:
    """A copy of ``model`` whose attention modules in ``blocks`` are hand-written stand-ins."""
    copy_ = copy.deepcopy(model).eval()
    for block in blocks:
        module = attention_module(copy_, block)
        parent_name, _, child = _module_path(copy_, module).rpartition(".")
        setattr(copy_.get_submodule(parent_name), child, _HandMode(module, mode))
    return copy_


def _module_path(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _probs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x)[0].double(), dim=0).numpy()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: tiny_model(arch, seed=3, width=0.25, num_classes=5, random_bn=True).eval()
            for arch in ATTENTION_ARCHS}


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_every_mode_matches_hand_written_weights(models, arch: str) -> None:
    model = models[arch]
    x = _image(1)
    kind_modes = [m for m in MODES if m != "exact" or arch == "simam_resnet50"]
    blocks = ("layer1.0", "layer3.2")
    p_ref = _probs(model, x)
    for mode in kind_modes:
        result = intervene(model, x, mode=mode, blocks=blocks)
        expected = _probs(_by_hand(model, blocks, mode), x)
        target = int(p_ref.argmax())
        assert result.target == target and result.top1_ref == target
        assert result.prob_ref == pytest.approx(p_ref[target], abs=1e-6)
        assert result.prob == pytest.approx(expected[target], abs=2e-5), mode
        assert result.top1 == int(expected.argmax())
        kl = float(np.sum(p_ref * (np.log(p_ref) - np.log(expected))))
        assert result.kl == pytest.approx(kl, abs=2e-5), mode


def test_modes_change_the_decision_differently(models) -> None:
    """Not all modes are the identity in disguise: on SimAM each moves the probabilities."""
    model = models["simam_resnet50"]
    x = _image(2)
    kls = {mode: intervene(model, x, mode=mode).kl for mode in MODES}
    assert all(kl > 1e-7 for kl in kls.values()), kls
    assert len({round(kl, 9) for kl in kls.values()}) == len(MODES)


def test_channel_modes_are_noops_where_they_should_be(models) -> None:
    """SE's weights are constant over positions: channel_mean keeps them (KL 0), and
    spatial_mean of channel weights is their mean, which is the constant mode."""
    model = models["se_resnet50"]
    x = _image(4)
    assert intervene(model, x, mode="channel_mean").kl == pytest.approx(0.0, abs=1e-9)
    spatial = intervene(model, x, mode="spatial_mean")
    constant = intervene(model, x, mode="constant")
    assert spatial.prob == pytest.approx(constant.prob, abs=1e-6)


def test_identity_everywhere_equals_a_network_without_attention(models) -> None:
    model = models["simam_resnet50"]
    x = _image(5)
    stripped = copy.deepcopy(model).eval()
    for block in attention_blocks(stripped):
        module = attention_module(stripped, block)
        parent, _, child = _module_path(stripped, module).rpartition(".")
        setattr(stripped.get_submodule(parent), child, nn.Identity())
    result = intervene(model, x, mode="identity")
    expected = _probs(stripped, x)
    assert result.blocks == attention_blocks(model) and len(result.blocks) == 16
    assert result.prob == pytest.approx(expected[result.target], abs=1e-6)


def test_exact_weights_are_eqn2_minimum_neuron_by_neuron() -> None:
    x = (torch.randn(1, 3, 5, 6, generator=torch.Generator().manual_seed(7)) * 2 + 0.5).double()
    lam = 0.1
    weights = exact_simam_weights(x, lam).double()
    flat = x.double().reshape(3, -1).numpy()
    for channel, index in [(0, 0), (1, 13), (2, 29), (2, 7)]:
        t = flat[channel, index]
        others = np.delete(flat[channel], index)
        _, _, energy = solve_eq2(t, others, lam)
        expected = 1 / (1 + math.exp(-1 / energy))  # Eqn (6): sigmoid of the inverse energy
        assert float(weights[0, channel].reshape(-1)[index]) == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(weights, _loop_exact(x.double(), lam), rtol=1e-12, atol=1e-12)


def test_exact_is_close_to_but_not_eqn5(models) -> None:
    """With M neurons the shortcut differs from the exact minimum by O(1/M): small, not 0."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    module = SimAM(0.1)
    shortcut = _hand_weights(module, x)
    exact = exact_simam_weights(x, 0.1)
    gap = (exact - shortcut).abs()
    assert 0 < float(gap.max()) < 0.1


def test_grad_cam_and_spearman_are_independent_recomputations(models) -> None:
    model = models["simam_resnet50"]
    x = _image(6)
    result = intervene(model, x, mode="constant", blocks=("layer4.0",), cam_block="layer4.2")
    hand = _by_hand(model, ("layer4.0",), "constant")
    cam = _gradcam(hand, x, "layer4.2", result.target)
    np.testing.assert_allclose(result.cam, cam, atol=2e-4)
    np.testing.assert_allclose(result.cam_ref, _gradcam(model, x, "layer4.2", result.target),
                               atol=2e-4)
    rho = spearmanr(result.cam_ref.ravel(), result.cam.ravel()).statistic
    assert result.cam_spearman == pytest.approx(rho, abs=1e-9)
    assert result.cam.min() == 0 and result.cam.max() == pytest.approx(1.0)


def _gradcam(model: nn.Module, x: torch.Tensor, block: str, target: int) -> np.ndarray:
    """Grad-CAM by hand: channel weights = mean gradient, ReLU, bilinear up, min-max."""
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
        store["act"] = output
        output.register_hook(lambda g: store.__setitem__("grad", g))

    handle = model.get_submodule(block).register_forward_hook(hook)
    try:
        logits = model(x.clone().requires_grad_(True))
        logits[0, target].backward()
    finally:
        handle.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * store["act"]).sum(dim=1)).detach()[0].numpy()
    import cv2

    cam = cam - cam.min()
    cam = cam / (cam.max() + 1e-7)
    cam = cv2.resize(cam.astype(np.float32), (x.shape[-1], x.shape[-2]))
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def test_per_block_rows_match_single_block_runs(models) -> None:
    model = models["cbam_resnet50"]
    x = _image(9)
    blocks = ("layer1.1", "layer2.0", "layer4.2")
    result = intervene(model, x, mode="spatial_mean", blocks=blocks, per_block=True)
    assert list(result.per_block) == list(blocks)
    for block in blocks:
        alone = intervene(model, x, mode="spatial_mean", blocks=(block,))
        row = result.per_block[block]
        assert row["prob"] == pytest.approx(alone.prob, abs=1e-6)
        assert row["kl"] == pytest.approx(alone.kl, abs=1e-6)
        assert row["top1"] == alone.top1


def test_model_left_exactly_as_it_was() -> None:
    model = tiny_model("simam_resnet50", seed=1, width=0.25, num_classes=4, random_bn=True)
    model.train()
    model.layer2.eval()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    lambdas = [m.e_lambda for m in model.modules() if isinstance(m, SimAM)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    intervene(model, _image(3), mode="exact", per_block=True, simam_lambda=3.0)
    with pytest.raises(AnalysisError):
        intervene(model, _image(3), mode="nonsense")
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert [m.e_lambda for m in model.modules() if isinstance(m, SimAM)] == lambdas
    assert hook_count(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_lambda_applies_to_both_runs(models) -> None:
    """``simam_lambda`` is the model's lambda for the call: the reference run uses it too."""
    model = models["simam_resnet50"]
    x = _image(10)
    changed = copy.deepcopy(model).eval()
    for m in changed.modules():
        if isinstance(m, SimAM):
            m.e_lambda = 5.0
    result = intervene(model, x, mode="identity", simam_lambda=5.0)
    assert result.prob_ref == pytest.approx(_probs(changed, x)[result.target], abs=1e-6)
    assert result.simam_lambda == 5.0


@pytest.mark.parametrize(("arch", "kwargs", "message"), [
    ("se_resnet50", {"mode": "exact"}, "does not apply to SE"),
    ("simam_resnet50", {"mode": "zero"}, "unknown intervention mode"),
    ("simam_resnet50", {"mode": "identity", "blocks": ("layer9.0",)}, "unknown block"),
    ("simam_resnet50", {"mode": "identity", "cam_block": "fc"}, "unknown block"),
    ("simam_resnet50", {"mode": "identity", "blocks": ()}, "no block given"),
    ("simam_resnet50", {"mode": "identity", "simam_lambda": -1.0}, "positive"),
    ("simam_resnet50", {"mode": "identity", "target": 99}, "out of range"),
    ("resnet50", {"mode": "identity"}, "no attention module"),
])
def test_bad_arguments_are_one_line_errors(arch: str, kwargs: dict, message: str) -> None:
    model = tiny_model(arch, seed=0, width=0.125, num_classes=3)
    with pytest.raises(AnalysisError, match=message) as info:
        intervene(model, _image(0), **kwargs)
    assert "\n" not in str(info.value)


def test_effects_per_block_set_match_intervene(models) -> None:
    from simam_viz.engine.intervention import intervention_effects

    model = models["simam_resnet50"]
    x = _image(11)
    sets = {"layer2": tuple(f"layer2.{i}" for i in range(4)), "one": ("layer3.1",)}
    table = intervention_effects(model, x, mode="channel_mean", block_sets=sets)
    ref = table["reference"]
    for name, blocks in sets.items():
        full = intervene(model, x, mode="channel_mean", blocks=blocks)
        assert ref["target"] == full.target and ref["prob"] == pytest.approx(full.prob_ref)
        assert table[name]["prob"] == pytest.approx(full.prob, abs=1e-6)
        assert table[name]["kl"] == pytest.approx(full.kl, abs=1e-6)
        assert table[name]["top1"] == full.top1
    with pytest.raises(AnalysisError, match="no block set"):
        intervention_effects(model, x, mode="identity", block_sets={})


def test_block_alone_passes_from_cached_inputs_equal_whole_passes(models) -> None:
    """The shortened passes (from a block's cached input) give the whole passes' numbers; a
    hook on the model makes ``_effects`` fall back to whole passes, which must agree."""
    from simam_viz.engine.intervention import _can_start_at_a_block, intervention_effects

    model = models["simam_resnet50"]
    x = _image(12)
    sets = {b: (b,) for b in attention_blocks(model)}
    assert _can_start_at_a_block(model)
    fast = intervention_effects(model, x, mode="spatial_mean", block_sets=sets)
    handle = model.register_forward_hook(lambda *args: None)
    try:
        assert not _can_start_at_a_block(model)
        slow = intervention_effects(model, x, mode="spatial_mean", block_sets=sets)
    finally:
        handle.remove()
    for name in sets:
        assert fast[name]["prob"] == pytest.approx(slow[name]["prob"], abs=1e-6)
        assert fast[name]["kl"] == pytest.approx(slow[name]["kl"], abs=1e-6)
        assert fast[name]["top1"] == slow[name]["top1"]
