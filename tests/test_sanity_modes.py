"""``sanity_check``'s two modes (cascade, independent) and the flat-map rule, against
independent computations: which parameters each step's model has random, with which weights,
and how a flat map enters the means."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SQUARE_COLOURS, save_tiny_checkpoints, squares_dataset, tiny_model
from skimage.metrics import structural_similarity

from simam_viz import cli, load_model
from simam_viz.engine import trust
from simam_viz.engine.analysis import analyze
from simam_viz.engine.trust import (
    SANITY_LAYERS,
    SANITY_MODES,
    SanityStep,
    compare_maps,
    sanity_check,
)
from simam_viz.errors import AnalysisError, SimamVizError
from simam_viz.images import load_image
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.rendering import trust_charts, trust_figures
from simam_viz.studies.evaluation import _sanity_values, evaluate

BLOCK = "layer3.1"


def _model(arch: str = "se_resnet50", seed: int = 0) -> torch.nn.Module:
    """A tiny random model with non-trivial BN statistics (so a reset BN is a change)."""
    return tiny_model(arch, seed, num_classes=4, random_bn=True).eval()


def _input(seed: int = 5) -> torch.Tensor:
    return torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _prefixes(layer: str) -> tuple[str, ...]:
    """The state-dict key prefixes of one step's part (the stem is conv1 + bn1)."""
    return ("conv1.", "bn1.") if layer == "stem" else (f"{layer}.",)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _recorded(model: torch.nn.Module, x: torch.Tensor, mode: str, **kwargs):
    """``sanity_check`` with every model ``analyze`` sees snapshotted: the trained reference
    first, then one state per step, exactly as the step's map was computed."""
    seen: list[dict[str, torch.Tensor]] = []
    real = trust.analyze

    def spy(m, *args, **kw):
        seen.append(_state(m))
        return real(m, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trust, "analyze", spy)
        steps = sanity_check(model, x, block=BLOCK, mode=mode, seed=3, **kwargs)
    assert len(seen) == 1 + len(SANITY_LAYERS)
    return steps, seen[0], seen[1:]


@pytest.fixture(scope="module")
def runs():
    """Both modes on one SE model (its excitation layers are reset with their block), with the
    model's state before and after."""
    model = _model()
    x = _input()
    before = _state(model)
    torch.manual_seed(99)
    rng = torch.get_rng_state()
    out = {mode: _recorded(model, x, mode) for mode in SANITY_MODES}
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is left as it was
    return model, x, before, out


def test_independent_step_randomises_its_part_alone(runs) -> None:
    _, _, before, out = runs
    _, trained, states = out["independent"]
    assert not _changed(before, trained)  # the reference map is the trained model's
    for layer, state in zip(SANITY_LAYERS, states, strict=True):
        changed = _changed(trained, state)
        assert changed, layer
        assert all(k.startswith(_prefixes(layer)) for k in changed), (layer, changed)
        weights = [k for k in state if k.startswith(_prefixes(layer)) and k.endswith("weight")]
        assert weights and all(k in changed for k in weights if state[k].dim() > 1)  # convs/fc


def test_cascade_step_randomises_every_part_so_far(runs) -> None:
    _, _, _, out = runs
    _, trained, states = out["cascade"]
    for index, state in enumerate(states):
        done = tuple(p for layer in SANITY_LAYERS[: index + 1] for p in _prefixes(layer))
        changed = _changed(trained, state)
        assert all(k.startswith(done) for k in changed)
        assert any(k.startswith(_prefixes(SANITY_LAYERS[index])) for k in changed)


def test_a_part_gets_the_same_random_weights_in_both_modes(runs) -> None:
    """Independent step k's part k equals the cascade's part k at step k and at every later
    step (the cascade keeps it): one seed per step, whatever the mode."""
    _, _, _, out = runs
    cascade, independent = out["cascade"][2], out["independent"][2]
    for index, layer in enumerate(SANITY_LAYERS):
        keys = [k for k in independent[index] if k.startswith(_prefixes(layer))]
        for later in (index, len(SANITY_LAYERS) - 1):
            for k in keys:
                assert torch.equal(independent[index][k], cascade[later][k]), (layer, k)


def test_trained_model_is_unchanged(runs) -> None:
    model, _, before, _ = runs
    assert not _changed(before, _state(model))
    assert not model.training


def test_first_step_is_the_same_in_both_modes_and_later_ones_differ(runs) -> None:
    """Step 0 (fc alone) is one model in both modes; from step 1 on, the cascade has more of
    the model random than the independent mode."""
    _, _, _, out = runs
    cascade, independent = out["cascade"][0], out["independent"][0]
    np.testing.assert_array_equal(cascade[0].cam, independent[0].cam)
    assert (cascade[0].spearman, cascade[0].ssim) == (independent[0].spearman,
                                                      independent[0].ssim)
    assert any(not np.array_equal(c.cam, i.cam)
               for c, i in zip(cascade[1:], independent[1:], strict=True))


@pytest.mark.parametrize("index", [9, 17])
def test_independent_map_is_that_of_a_copy_with_one_part_reset(runs, index: int) -> None:
    model, x, _, out = runs
    steps = out["independent"][0]
    layer = SANITY_LAYERS[index]
    reference = analyze(model, x, blocks=(BLOCK,))
    hand = copy.deepcopy(model)
    seed = int(np.random.SeedSequence([3, index]).generate_state(1, dtype=np.uint64)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in (("conv1", "bn1") if layer == "stem" else (layer,)):
            for module in hand.get_submodule(name).modules():
                if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
                    module.reset_parameters()
    cam = analyze(hand, x, target=reference.target, blocks=(BLOCK,)).cam(BLOCK)
    np.testing.assert_allclose(steps[index].cam, cam, atol=1e-6)
    assert steps[index].layer == layer


# ---- the flat-map rule ------------------------------------------------------------------------


def test_a_flat_map_counts_as_no_agreement() -> None:
    rng = np.random.default_rng(0)
    reference = rng.random((40, 40))
    for flat_map in (np.zeros_like(reference), np.full_like(reference, 0.4)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ConstantInputWarning
            got = compare_maps(reference, flat_map)
        assert got["flat"] is True and got["spearman"] == 0.0 and got["hog"] == 0.0
        assert got["ssim"] == pytest.approx(
            structural_similarity(reference, flat_map, data_range=1.0), abs=1e-12)
    assert compare_maps(reference, reference)["flat"] is False
    undefined = compare_maps(np.zeros_like(reference), reference)  # a flat *trained* map
    assert math.isnan(undefined["spearman"]) and math.isnan(undefined["hog"])
    assert undefined["flat"] is False


def _step(layer: str, spearman: float, flat: bool) -> SanityStep:
    return SanityStep(layer=layer, spearman=spearman, ssim=0.5, hog=spearman, flat=flat,
                      cam=np.zeros((2, 2)))


def test_flat_maps_enter_the_study_means_as_zero() -> None:
    steps = [_step("fc", 0.8, False), _step("layer4.2", 0.0, True), _step("layer4.1", -0.4, False),
             _step("stem", 0.0, True)]
    values = _sanity_values(steps)
    assert values["mean_abs_spearman"] == pytest.approx((0.8 + 0.0 + 0.4 + 0.0) / 4)
    assert values["flat"] == pytest.approx(50.0)
    assert values["spearman_stem"] == 0.0 and values["hog_stem"] == 0.0
    assert values["spearman_fc"] == pytest.approx(0.8)


def test_real_flat_maps_follow_the_rule_everywhere() -> None:
    """This tiny plain ResNet's Grad-CAM goes flat at 2 of the 18 steps: those steps are
    flagged, scored 0, counted in the means, marked on the chart and in the report."""
    model = _model("resnet50", seed=1)
    steps = sanity_check(model, _input(0), block=BLOCK, mode="cascade", seed=0)
    flags = [bool(np.ptp(s.cam) == 0) for s in steps]
    assert [s.flat for s in steps] == flags and sum(flags) == 2
    for step in steps:
        if step.flat:
            assert step.spearman == 0.0 and step.hog == 0.0 and math.isfinite(step.ssim)
        else:
            assert math.isfinite(step.spearman)
    values = _sanity_values(steps)
    assert values["flat"] == pytest.approx(100.0 * sum(flags) / len(steps))
    assert values["mean_abs_spearman"] == pytest.approx(np.mean([abs(s.spearman) for s in steps]))
    rows = trust_figures.sanity_rows(steps)
    assert trust_figures.sanity_series(rows, "spearman") == [s.spearman for s in steps]
    chart = trust_charts.sanity_chart(steps, mode="cascade")
    assert chart.data[-1].name == "flat map"
    assert list(chart.data[-1].x) == [s.layer for s in steps if s.flat]
    report = trust_figures.report({}, steps, mode="cascade")
    assert [r["flat"] for r in report["sanity"]] == flags
    assert report["mode"] == "cascade" and "Spearman 0" in report["flat_rule"]


def test_charts_are_labelled_by_mode() -> None:
    steps = [_step(layer, 0.5, False) for layer in SANITY_LAYERS]
    cascade = trust_charts.sanity_chart(steps)
    independent = trust_charts.sanity_chart(steps, mode="independent")
    assert "cascade" in cascade.layout.title.text
    assert "one layer randomised at a time" in independent.layout.title.text
    assert independent.layout.xaxis.title.text == "randomised alone"
    assert [t.name for t in cascade.data] == ["spearman", "ssim", "hog"]  # no flat map, no trace


# ---- bad input, the study and the CLI ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["", "Cascade", "random", None, 3])
def test_bad_mode_is_one_line_before_any_pass(mode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust, "analyze", lambda *a, **k: pytest.fail("a pass was run"))
    with pytest.raises(AnalysisError, match="unknown sanity mode") as err:
        sanity_check(_model("resnet50"), _input(), block=BLOCK, mode=mode)
    assert "\n" not in str(err.value) and "cascade, independent" in str(err.value)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = squares_dataset(tmp_path_factory.mktemp("modes_data"), 48, per_class=1)
    folder = save_tiny_checkpoints(tmp_path_factory.mktemp("modes_ckpt"), archs=("resnet50",),
                                   classes=list(SQUARE_COLOURS),
                                   preprocessing=Preprocessing(resize=48, crop=48),
                                   random_bn=True)
    return data, folder / "demo" / "resnet50.safetensors"


def test_evaluate_passes_the_mode_through(study) -> None:
    data, checkpoint = study
    model = load_model(checkpoint)
    (row,) = evaluate([model], data, sanity=True, sanity_mode="independent", limit=1,
                      resamples=10)
    assert row["cascade"]["mode"] == "independent"
    (path,) = row["per_image"]["path"]
    steps = sanity_check(model, load_image(path), target=0, block=row["block"],
                         where=row["where"], method=row["method"], seed=0, mode="independent")
    assert row["cascade"]["spearman"] == [[s.spearman for s in steps]]
    assert row["spearman_stem"] == pytest.approx(steps[-1].spearman)
    assert row["flat"] == pytest.approx(100.0 * np.mean([s.flat for s in steps]))
    with pytest.raises(SimamVizError, match="unknown sanity mode 'both'"):
        evaluate([model], data, sanity=True, sanity_mode="both", limit=1)


def test_cli_sanity_mode(study, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, checkpoint = study
    base = ["evaluate", "--data", str(data), "--checkpoints", str(checkpoint), "--limit", "1"]
    assert cli.main([*base, "--sanity-mode", "independent"]) == 2
    assert capsys.readouterr().err.strip() == "error: --sanity-mode needs --sanity"
    assert cli.main([*base, "--sanity", "--sanity-mode", "both"]) == 2
    assert "invalid choice: 'both'" in capsys.readouterr().err
    out = tmp_path / "per_image.json"
    assert cli.main([*base, "--sanity", "--sanity-mode", "independent",
                     "--per-image", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["rows"][0]["cascade"]["mode"] == "independent"
