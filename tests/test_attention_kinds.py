"""Every attention kind in its own shape: ``Analysis.attention_weights`` and ``weight_variance``.

The weights the analysis reports are checked against weights computed independently of
``simam_viz``: from the official checkpoint layouts' raw tensors (tests/layouts.py) with the
modules' equations, recorded by forward hooks on the reference networks, and for SimAM from
Eqns (5)-(6) on the recorded input. ``weight_variance`` is checked against a least-squares fit
of the additive two-way model, an independent route to the same sums of squares.
"""

from __future__ import annotations

import re
from pathlib import Path

import layouts
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simam_viz import analyze, build_model, load_model, weight_variance
from simam_viz.networks.kinds import KINDS, SHAPES, kind_named, kind_of_module
from simam_viz.networks.models import ARCHS, attention_module

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("layer1.0", "layer3.5", "layer4.2")


def _image(seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g)


def _bn3_outputs(reference: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each bottleneck's raw bn3 output, seen before the layout's attention hook changes it."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, block in layouts._blocks(reference):
        def hook(m, i, o, name=name):
            seen[name] = o.detach().clone()
        handles.append(block.bn3.register_forward_hook(hook, prepend=True))
    with torch.no_grad():
        reference(x)
    for h in handles:
        h.remove()
    return seen


def _analysed_official(tmp_path: Path, builder, name: str, seed: int):
    """A checkpoint in an official layout, loaded and analysed, with the reference network's
    raw bn3 outputs for the same input and the checkpoint's tensors."""
    checkpoint, reference = builder()
    path = tmp_path / name
    torch.save(checkpoint, path)
    x = _image(seed)
    result = analyze(load_model(path), x, blocks=BLOCKS)
    return result, _bn3_outputs(reference, x), checkpoint["state_dict"]


def test_kinds_say_shapes_and_sites() -> None:
    assert KINDS["none"].shapes == () and not KINDS["none"].has_attention
    assert KINDS["se"].shapes == ("channel",) and KINDS["eca"].shapes == ("channel",)
    assert KINDS["cbam"].shapes == ("channel", "spatial")
    assert KINDS["simam"].shapes == ("full",) and KINDS["simam"].cam_weights == "full"
    assert [k.has_lambda for k in KINDS.values()] == [False, False, False, False, True]
    assert set(SHAPES) == {"channel", "spatial", "full"}
    assert kind_named(None) is KINDS["none"]
    with pytest.raises(ValueError, match="unknown attention kind"):
        kind_named("transformer")
    for arch, spec in ARCHS.items():
        model = build_model(arch, width=0.25, num_classes=3)
        assert kind_of_module(attention_module(model, "layer2.1")) is spec.kind
        assert model.simam_viz.kind is spec.kind


def test_resnet50_has_no_weights() -> None:
    model = build_model("resnet50", width=0.25, num_classes=4)
    r = analyze(model, _image(), blocks=BLOCKS)
    assert r.kind is KINDS["none"]
    assert all(r.attention_weights(b) == {} for b in BLOCKS)
    assert not r.has_channel_weights("layer4.2")
    assert not any(k.startswith("attention_weights/") for k in r.arrays())


def test_eca_official_layout_channel_weights(tmp_path: Path) -> None:
    r, raw, state = _analysed_official(tmp_path, layouts.eca_official, "eca.pth.tar", 1)
    for block in BLOCKS:
        weights = r.attention_weights(block)
        assert set(weights) == {"channel"}
        kernel = state[f"module.{block}.eca.conv.weight"]
        k = kernel.shape[-1]
        pooled = raw[block].mean(dim=(2, 3))[:, None, :]
        expected = torch.sigmoid(F.conv1d(pooled, kernel, padding=(k - 1) // 2))[0, 0]
        assert weights["channel"].shape == (raw[block].shape[1],)
        np.testing.assert_allclose(weights["channel"], expected.numpy(), atol=2e-5)
        np.testing.assert_array_equal(r.channel_weights(block), weights["channel"])


def test_cbam_official_layout_channel_and_spatial_weights(tmp_path: Path) -> None:
    r, raw, state = _analysed_official(tmp_path, layouts.cbam_official, "cbam.pth.tar", 2)
    for block in BLOCKS:
        t = {k.split(f"{block}.cbam.", 1)[1]: v for k, v in state.items()
             if k.startswith(f"module.{block}.cbam.")}
        o = raw[block]

        def mlp(z, t=t):
            h = F.relu(z @ t["ChannelGate.mlp.1.weight"].T + t["ChannelGate.mlp.1.bias"])
            return h @ t["ChannelGate.mlp.3.weight"].T + t["ChannelGate.mlp.3.bias"]

        channel = torch.sigmoid(mlp(o.mean(dim=(2, 3))) + mlp(o.amax(dim=(2, 3))))
        xc = o * channel[:, :, None, None]
        pooled = torch.cat([xc.amax(1, keepdim=True), xc.mean(1, keepdim=True)], 1)
        z = F.conv2d(pooled, t["SpatialGate.spatial.conv.weight"], padding=3)
        spatial = torch.sigmoid((z - 0.2) / (1.5 + 1e-5) ** 0.5 * 0.9 + 0.1)[0, 0]
        weights = r.attention_weights(block)
        assert set(weights) == {"channel", "spatial"}
        assert weights["spatial"].shape == tuple(o.shape[-2:])
        np.testing.assert_allclose(weights["channel"], channel[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(weights["spatial"], spatial.numpy(), atol=2e-5)
    # the arrays export keeps both, and the spatial gate is not the channel mean of anything
    arrays = r.arrays()
    assert arrays["attention_weights/layer4.2/spatial"].shape == raw["layer4.2"].shape[-2:]
    assert arrays["attention_weights/layer4.2/channel"].shape == (raw["layer4.2"].shape[1],)


def test_se_channel_weights_match_an_independent_excitation() -> None:
    model = build_model("se_resnet50", width=0.25, num_classes=4)
    block = "layer3.5"
    se = attention_module(model, block)
    seen: dict[str, torch.Tensor] = {}
    handle = se.register_forward_pre_hook(lambda m, i: seen.update(x=i[0].detach().clone()))
    try:
        r = analyze(model, _image(3), blocks=(block,))
    finally:
        handle.remove()
    fc0, fc2 = se.fc[0].weight.detach(), se.fc[2].weight.detach()
    expected = torch.sigmoid(F.relu(seen["x"].mean(dim=(2, 3)) @ fc0.T) @ fc2.T)[0]
    weights = r.attention_weights(block)
    assert set(weights) == {"channel"}
    np.testing.assert_allclose(weights["channel"], expected.numpy(), atol=2e-6)


def test_simam_full_weights_are_eqn5_on_the_recorded_input() -> None:
    model = build_model("simam_resnet50", width=0.25, num_classes=4, simam_lambda=0.1)
    block = "layer2.1"
    simam = attention_module(model, block)
    seen: dict[str, torch.Tensor] = {}
    handle = simam.register_forward_pre_hook(lambda m, i: seen.update(x=i[0].detach().clone()))
    try:
        r = analyze(model, _image(4), blocks=(block,), simam_lambda=0.3)
    finally:
        handle.remove()
    x = seen["x"][0].double().numpy()
    n = x.shape[1] * x.shape[2] - 1
    d = (x - x.mean(axis=(1, 2), keepdims=True)) ** 2
    var = d.sum(axis=(1, 2), keepdims=True) / n
    expected = 1 / (1 + np.exp(-(d / (4 * (var + 0.3)) + 0.5)))
    weights = r.attention_weights(block)
    assert set(weights) == {"full"} and weights["full"].shape == x.shape
    np.testing.assert_allclose(weights["full"], expected, atol=2e-6)
    full, mean_map = r.attention(block)
    np.testing.assert_array_equal(full, weights["full"])
    np.testing.assert_allclose(mean_map, expected.mean(axis=0), atol=2e-6)
    np.testing.assert_allclose(r.channel_weights(block), expected.mean(axis=(1, 2)), atol=2e-6)


def test_attention_weights_refuses_a_block_not_analysed() -> None:
    model = build_model("cbam_resnet50", width=0.25, num_classes=4)
    r = analyze(model, _image(), blocks=("layer4.2",))
    with pytest.raises(Exception, match="was not analysed"):
        r.attention_weights("layer1.0")


# --- weight_variance -----------------------------------------------------------------------


def _anova_by_least_squares(w: np.ndarray) -> dict[str, float]:
    """Explained sums of squares of nested linear models (mean, + channel, + position)."""
    c, h, wd = w.shape
    y = w.reshape(-1).astype(np.float64)
    ones = np.ones((y.size, 1))
    chan = np.kron(np.eye(c), np.ones((h * wd, 1)))
    pos = np.kron(np.ones((c, 1)), np.eye(h * wd))

    def rss(design: np.ndarray) -> float:
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.square(y - design @ coef).sum())

    total = rss(ones)
    after_channel = rss(np.hstack([ones, chan]))
    after_both = rss(np.hstack([ones, chan, pos]))
    after_position = rss(np.hstack([ones, pos]))
    return {"channel": (total - after_channel) / total,
            "spatial": (total - after_position) / total,
            "interaction": after_both / total}


def test_weight_variance_matches_a_least_squares_two_way_fit() -> None:
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(6, 1, 1)) + rng.normal(size=(1, 4, 5))
         + 0.5 * rng.normal(size=(6, 4, 5)))
    got = weight_variance(w)
    want = _anova_by_least_squares(w)
    for key in ("channel", "spatial", "interaction"):
        assert got[key] == pytest.approx(want[key], abs=1e-10)
    assert got["channel"] + got["spatial"] + got["interaction"] == pytest.approx(1.0)
    assert got["total"] == pytest.approx(w.var())


def test_weight_variance_extremes_and_kinds_of_input() -> None:
    rng = np.random.default_rng(1)
    channel = rng.uniform(0.2, 0.9, size=8)
    spatial = rng.uniform(0.2, 0.9, size=(5, 5))
    assert weight_variance(np.broadcast_to(channel[:, None, None], (8, 5, 5)))["channel"] == \
        pytest.approx(1.0)
    assert weight_variance({"channel": channel})["channel"] == pytest.approx(1.0)
    assert weight_variance(channel)["channel"] == pytest.approx(1.0)
    assert weight_variance({"spatial": spatial})["spatial"] == pytest.approx(1.0)
    additive = channel[:, None, None] + spatial[None]
    assert weight_variance(additive)["interaction"] == pytest.approx(0.0, abs=1e-12)
    # CBAM applies a product: mostly main effects, a little interaction, never negative
    product = weight_variance({"channel": channel, "spatial": spatial})
    np.testing.assert_allclose(
        [product[k] for k in ("channel", "spatial", "interaction")],
        [_anova_by_least_squares(channel[:, None, None] * spatial[None])[k]
         for k in ("channel", "spatial", "interaction")], atol=1e-10)
    assert 0 < product["interaction"] < 0.1
    flat = weight_variance(np.full((3, 2, 2), 0.62))
    assert flat["total"] == 0.0 and all(np.isnan(flat[k]) for k in ("channel", "spatial"))
    for bad in ({}, np.zeros((2, 2, 2, 2)), np.array([[[np.nan]]])):
        with pytest.raises(ValueError):
            weight_variance(bad)


def test_weight_variance_of_real_simam_weights_is_mostly_not_channel() -> None:
    """SimAM's weights vary within channels (Figure 2's 3-D): on a random image the channel
    means explain only part of their variance."""
    model = build_model("simam_resnet50", width=0.25, num_classes=4)
    r = analyze(model, _image(5), blocks=("layer1.0",))
    shares = weight_variance(r.attention_weights("layer1.0"))
    assert shares["spatial"] + shares["interaction"] > 0.5


def test_no_architecture_name_comparison_outside_the_kinds() -> None:
    """Views and exports ask a kind what it has; only kinds.py names kinds in comparisons."""
    names = "|".join(["none", *KINDS, *ARCHS])
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = []
    for folder in ("simam_viz", "app"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "kinds.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
