"""Faithfulness scores and the randomization sanity check, against independent computations."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from helpers import DEFAULT_EXAMPLE, DEMO_DIR
from PIL import Image
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import rankdata
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torchvision.transforms.functional import gaussian_blur

from simam_viz.engine.analysis import analyze
from simam_viz.engine.trust import (
    SANITY_LAYERS,
    SANITY_SCORES,
    SCORES,
    _break_ties,
    compare_maps,
    faithfulness,
    sanity_check,
)
from simam_viz.errors import AnalysisError
from simam_viz.networks.models import build_model
from simam_viz.weights.checkpoints import load_model

DEMO = DEMO_DIR
DOG = DEFAULT_EXAMPLE

# pytorch-grad-cam's ROAD calls np.float32 on a torch tensor, which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")


@pytest.fixture(scope="module")
def simam():
    return load_model(DEMO / "simam_resnet50.safetensors")


@pytest.fixture(scope="module")
def dog() -> Image.Image:
    with Image.open(DOG) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def scores(simam, dog):
    return faithfulness(simam, dog)


@pytest.fixture(scope="module")
def steps(simam, dog):
    return sanity_check(simam, dog, seed=0)


def _input(model, image: Image.Image) -> torch.Tensor:
    return model.simam_viz.preprocessing(image)


def _softmax(model, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(x), dim=1)[0, target])


def _toy(seed: int = 0, arch: str = "resnet50"):
    """A tiny random ResNet-50 with non-trivial BN statistics (maps are not uniform)."""
    torch.manual_seed(seed)
    model = build_model(arch, width=0.125, num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.2)
    return model


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "grads": [p.requires_grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for name in ("modes", "grads", "hooks"):
        assert before[name] == after[name], name


def test_every_score_states_its_direction() -> None:
    for table in (SCORES, SANITY_SCORES):
        for direction, meaning in table.values():
            assert direction in ("higher is better", "lower is better") and meaning
    assert SCORES["road"][0] == "higher is better"
    assert SCORES["drop_in_confidence"][0] == "lower is better"
    assert SCORES["increase_in_confidence"][0] == "higher is better"
    assert SCORES["deletion_auc"][0] == "lower is better"
    assert SCORES["insertion_auc"][0] == "higher is better"


def test_result_is_a_json_ready_mapping(scores, simam) -> None:
    assert set(SCORES) <= set(scores)
    assert scores["target"] == 7 and scores["target_name"] == simam.simam_viz.class_names[7]
    assert (scores["block"], scores["where"], scores["method"]) == ("layer4.2", "output",
                                                                    "gradcam")
    assert json.loads(json.dumps(scores)) == scores


def test_library_scores_equal_the_library_called_directly(scores, simam, dog) -> None:
    x = _input(simam, dog)
    cam = analyze(simam, x).cam("layer4.2", "output")[None]
    targets = [ClassifierOutputSoftmaxTarget(scores["target"])]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # ROAD's imputer draws noise; faithfulness seeds it with seed=0
        # ROAD sees the map with its ties broken (tests/test_trust_baselines.py checks how)
        road = ROADCombined(percentiles=[20, 40, 60, 80])(x, _break_ties(cam[0], 0)[None],
                                                          targets, simam)
    drop = DropInConfidence()(x, cam, targets, simam)
    increase = IncreaseInConfidence()(x, cam, targets, simam)
    assert scores["road"] == pytest.approx(float(road[0]), abs=1e-6)
    assert scores["drop_in_confidence"] == pytest.approx(float(drop[0]), abs=1e-6)
    assert scores["increase_in_confidence"] == float(increase[0])
    # the input multiplied by the map, scored by hand: the sign conventions the SCORES state
    p0 = _softmax(simam, x, scores["target"])
    p1 = _softmax(simam, x * torch.from_numpy(cam[0]), scores["target"])
    assert scores["drop_in_confidence"] == pytest.approx(max(p0 - p1, 0.0), abs=1e-5)
    assert scores["increase_in_confidence"] == float(p1 > p0)


def test_rise_curves_endpoints_and_areas(scores, simam, dog) -> None:
    x, target = _input(simam, dog), scores["target"]
    fractions = np.asarray(scores["fractions"])
    deletion, insertion = np.asarray(scores["deletion_curve"]), np.asarray(
        scores["insertion_curve"])
    np.testing.assert_allclose(fractions, np.arange(21) / 20, atol=1e-12)
    assert deletion.shape == insertion.shape == (21,)
    original = _softmax(simam, x, target)
    assert scores["probability"] == pytest.approx(original, abs=1e-5)
    assert deletion[0] == pytest.approx(original, abs=1e-5)  # nothing deleted yet
    assert insertion[-1] == pytest.approx(original, abs=1e-5)  # everything revealed
    assert deletion[-1] == pytest.approx(_softmax(simam, torch.zeros_like(x), target), abs=1e-5)
    blurred = gaussian_blur(x, [11, 11], [5.0, 5.0])
    assert insertion[0] == pytest.approx(_softmax(simam, blurred, target), abs=1e-5)
    trapezoid = lambda y: float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(fractions)))  # noqa: E731
    assert scores["deletion_auc"] == pytest.approx(trapezoid(deletion), abs=1e-9)
    assert scores["insertion_auc"] == pytest.approx(trapezoid(insertion), abs=1e-9)
    assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1


def test_rise_equals_a_plain_reimplementation_on_a_toy_model() -> None:
    model = _toy(1)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    got = faithfulness(model, x, target=3, block="layer2.0")
    cam = analyze(model, x, target=3, blocks="layer2.0").cam("layer2.0")
    pixels = cam.size
    order = sorted(range(pixels), key=lambda i: (-float(cam.flat[i]), i))
    blurred = gaussian_blur(x, [11, 11], [5.0, 5.0])
    deletion, insertion = [], []
    for step in range(21):
        top = order[: round(step / 20 * pixels)]
        rows, cols = np.unravel_index(np.array(top, dtype=np.intp), cam.shape)
        deleted, inserted = x.clone(), blurred.clone()
        deleted[0, :, rows, cols] = 0.0
        inserted[0, :, rows, cols] = x[0, :, rows, cols]
        deletion.append(_softmax(model, deleted, 3))
        insertion.append(_softmax(model, inserted, 3))
    np.testing.assert_allclose(got["deletion_curve"], deletion, atol=1e-5)
    np.testing.assert_allclose(got["insertion_curve"], insertion, atol=1e-5)
    auc = lambda y: sum((y[i] + y[i + 1]) / 2 * 0.05 for i in range(20))  # noqa: E731
    assert got["deletion_auc"] == pytest.approx(auc(deletion), abs=1e-5)
    assert got["insertion_auc"] == pytest.approx(auc(insertion), abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"block": "layer5.0"}, "unknown block"),
        ({"where": "attention", "block": "layer1.0"}, "no 'attention' map"),
        ({"method": "nope"}, "unknown CAM method"),
        ({"target": 99}, "out of range"),
        ({"target": "zebra"}, "unknown class"),
    ],
)
def test_bad_requests_raise_one_line(kwargs: dict, words: str) -> None:
    model = _toy()  # a plain ResNet: it has no attention taps
    x = torch.zeros(1, 3, 32, 32)
    for check in (faithfulness, sanity_check):
        with pytest.raises(AnalysisError, match=words) as err:
            check(model, x, **kwargs)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_raises(seed) -> None:
    for check in (faithfulness, sanity_check):
        with pytest.raises(AnalysisError, match="seed"):
            check(_toy(), torch.zeros(1, 3, 32, 32), seed=seed)


def test_sanity_steps_cascade_from_the_logits_down(steps, simam, dog) -> None:
    names = ["fc", *(f"layer{s}.{b}" for s, n in ((4, 3), (3, 6), (2, 4), (1, 3))
                     for b in reversed(range(n))), "stem"]
    assert [s.layer for s in steps] == names == list(SANITY_LAYERS)
    assert len(steps) == 18
    reference = analyze(simam, dog).cam("layer4.2", "output")
    assert steps[0].spearman < 1 and steps[0].ssim < 1 and steps[0].hog < 1
    assert steps[-1].spearman < 0.5  # nothing of the trained model is left
    for step in steps:
        assert step.cam.shape == reference.shape == (161, 161)
        got = compare_maps(reference, step.cam)
        assert (step.spearman, step.ssim, step.hog) == pytest.approx(
            (got["spearman"], got["ssim"], got["hog"]), nan_ok=True)
        assert step.flat == got["flat"] == (np.ptp(step.cam) == 0)
        assert step.scores()["layer"] == step.layer and step.scores()["flat"] == step.flat


def test_sanity_steps_equal_a_hand_randomised_copy(steps, simam, dog) -> None:
    """Step k's map is that of a copy with parts 0..k reset, each under its step's seed."""
    x = _input(simam, dog)
    model = copy.deepcopy(simam)
    for index, layer in enumerate(SANITY_LAYERS):
        seed = int(np.random.SeedSequence([0, index]).generate_state(1, dtype=np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in (("conv1", "bn1") if layer == "stem" else (layer,)):
                for module in model.get_submodule(name).modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        if index in (0, 3, 17):
            cam = analyze(model, x, target=7).cam("layer4.2")
            np.testing.assert_allclose(steps[index].cam, cam, atol=1e-6)
    assert isinstance(model.layer1[0].conv2[1], type(simam.layer1[0].conv2[1]))  # SimAM kept


def test_sanity_is_reproducible_per_seed() -> None:
    model = _toy(2, "simam_resnet50")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    first = sanity_check(model, x, block="layer3.1", seed=0)
    again = sanity_check(model, x, block="layer3.1", seed=0)
    other = sanity_check(model, x, block="layer3.1", seed=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.cam, b.cam)
        assert (a.spearman, a.ssim, a.hog) == pytest.approx((b.spearman, b.ssim, b.hog),
                                                            nan_ok=True)
    assert not np.array_equal(first[0].cam, other[0].cam)


def test_map_against_itself_scores_one_and_flat_maps_score_zero(steps) -> None:
    cam = steps[0].cam
    assert compare_maps(cam, cam) == pytest.approx(
        {"spearman": 1.0, "ssim": 1.0, "hog": 1.0, "flat": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning either
        flat = compare_maps(cam, np.zeros_like(cam))
    # the flat-map rule: no agreement with the trained map, not a value left out
    assert flat["flat"] and flat["spearman"] == 0.0 and flat["hog"] == 0.0
    assert np.isfinite(flat["ssim"])
    assert np.isnan(compare_maps(cam, np.full_like(cam, np.nan))["ssim"])


def test_compare_maps_equals_its_definitions(steps) -> None:
    a, b = steps[0].cam.astype(np.float64), steps[5].cam.astype(np.float64)
    got = compare_maps(a, b)
    ranks = np.corrcoef(rankdata(a.ravel()), rankdata(b.ravel()))[0, 1]
    assert got["spearman"] == pytest.approx(ranks, abs=1e-9)
    assert got["ssim"] == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-9)
    assert got["hog"] == pytest.approx(np.corrcoef(hog(a), hog(b))[0, 1], abs=1e-9)


def test_caller_model_and_global_rng_are_untouched() -> None:
    model = _toy(3, "se_resnet50")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    handle = model.layer2.register_forward_hook(lambda *args: None)
    before = _snapshot(model)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    try:
        scores = faithfulness(model, x, block="layer3.1", where="after")
        steps = sanity_check(model, x, block="layer3.1", where="after", seed=3)
        after = _snapshot(model)
    finally:
        handle.remove()
    _assert_same(before, after)
    assert torch.equal(rng, torch.get_rng_state())
    assert scores["where"] == "after" and len(steps) == 18


def test_lambda_override_applies_to_every_pass_and_is_undone() -> None:
    """``simam_lambda`` is the analysis's lambda for every forward pass of both checks (the
    app checks the map it shows, at the sidebar's lambda), and the model keeps its own."""
    from simam_viz.networks.attention import SimAM

    model = _toy(3, "simam_resnet50")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    before = _snapshot(model)
    at_two = faithfulness(model, x, simam_lambda=2.0, block="layer3.1")
    _assert_same(before, _snapshot(model))
    shifted = copy.deepcopy(model).eval()
    for m in shifted.modules():
        if isinstance(m, SimAM):
            m.e_lambda = 2.0
    target = at_two["target"]
    assert at_two["probability"] == pytest.approx(_softmax(shifted, x, target), abs=1e-6)
    assert at_two["probability"] != pytest.approx(_softmax(model.eval(), x, target), abs=1e-6)
    reference = analyze(shifted, x, target=target, blocks=("layer3.1",)).cam("layer3.1")
    assert np.allclose(
        analyze(model, x, target=target, blocks=("layer3.1",), simam_lambda=2.0).cam("layer3.1"),
        reference)
    progress: list[float] = []
    steps = sanity_check(model, x, target=target, block="layer3.1", simam_lambda=2.0,
                         progress=progress.append)
    assert progress == [(i + 1) / len(SANITY_LAYERS) for i in range(len(SANITY_LAYERS))]
    assert len(steps) == len(SANITY_LAYERS)
    _assert_same(before, _snapshot(model))
