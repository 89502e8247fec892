"""Faithfulness baselines (a random and a centred map) and ROAD's tie-breaking.

ROAD (pytorch-grad-cam) cuts a map at ``np.percentile`` and keeps ``map < threshold``: on a
map that is 0 on 70 % of its pixels, "most relevant first" at 20-60 % imputes every pixel.
The jitter must end that without reordering distinct values; the baselines must be scored
exactly like the map, and be what their definitions say.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SQUARE_COLOURS, randomize_bn, save_tiny_checkpoints, squares_dataset, tiny_model
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
from pytorch_grad_cam.metrics.perturbation_confidence import (
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from simam_viz import cli, load_model
from simam_viz.engine.trust import (
    BASELINES,
    CENTER_SIGMA,
    SCORES,
    _break_ties,
    _center_map,
    _random_map,
    _score_map,
    faithfulness,
)
from simam_viz.images import load_image
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.studies.evaluation import (
    BASELINE_FIELDS,
    FAITHFULNESS_FIELDS,
    evaluate,
    format_table,
    write_csv,
)

# pytorch-grad-cam's ROAD calls np.float32 on a torch tensor, which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")

SIDE = 64
PIXELS = SIDE * SIDE
PER_MAP = {*SCORES, "deletion_curve", "insertion_curve"}


def _sparse_map(seed: int = 0) -> np.ndarray:
    """0 on 70 % of the pixels (as after Grad-CAM's ReLU), distinct values in (0, 1] elsewhere,
    float32 like the analysis' maps."""
    rng = np.random.default_rng(seed)
    cam = np.zeros(PIXELS, np.float32)
    live = rng.permutation(PIXELS)[: PIXELS - round(0.7 * PIXELS)]
    cam[live] = rng.uniform(0.01, 1.0, live.size).astype(np.float32)
    cam[live[0]] = 1.0
    return cam.reshape(SIDE, SIDE)


class _Spy:
    """An imputer that records the library's binary mask (1 = kept) and imputes nothing."""

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.kept.append(mask.clone())
        return img


def _imputed(remover: type, percentile: int, cam: np.ndarray) -> int:
    """Pixels the library's ROAD mask logic imputes for ``cam`` at ``percentile``."""
    spy = _Spy()
    remover(percentile, spy)(torch.zeros(3, SIDE, SIDE), torch.from_numpy(cam))
    return int((spy.kept[0] == 0).sum())


@pytest.mark.parametrize("percentile", [20, 30, 40, 50, 60])
def test_ties_no_longer_make_morf_impute_the_whole_image(percentile: int) -> None:
    cam = _sparse_map()
    assert (cam == 0).mean() == pytest.approx(0.7, abs=1e-3)
    # the bias: with the 0s tied, the threshold is 0 and nothing is "< 0"
    assert _imputed(RemoveMostRelevantFirst, percentile, cam) == PIXELS
    jittered = _break_ties(cam, seed=0)
    share = 1.0 - percentile / 100.0  # MoRF at p imputes all but the p % least relevant
    assert abs(_imputed(RemoveMostRelevantFirst, percentile, jittered) - share * PIXELS) <= 1
    # and the imputed pixels are the most relevant: every non-zero pixel is among them
    spy = _Spy()
    RemoveMostRelevantFirst(percentile, spy)(torch.zeros(3, SIDE, SIDE),
                                             torch.from_numpy(jittered))
    assert bool((spy.kept[0].numpy()[cam > 0] == 0).all())


@pytest.mark.parametrize("percentile", [20, 40, 60, 80])
def test_ties_no_longer_bias_lerf(percentile: int) -> None:
    cam = _sparse_map(1)
    if percentile >= 40:  # without the jitter LeRF imputes the 70 % zeros whatever p is
        assert _imputed(RemoveLeastRelevantFirst, percentile, cam) == round(0.7 * PIXELS)
    got = _imputed(RemoveLeastRelevantFirst, percentile, _break_ties(cam, seed=3))
    assert abs(got - (1.0 - percentile / 100.0) * PIXELS) <= 1


def test_jitter_keeps_the_order_of_distinct_values_and_breaks_every_tie() -> None:
    rng = np.random.default_rng(4)
    levels = np.array([0.0, 1e-7, 2e-7, 0.3, 0.3 + 2**-23, 0.999999, 1.0], np.float32)
    cam = levels[rng.integers(0, levels.size, (40, 50))]  # 7 values, each tied ~285 times
    jittered = _break_ties(cam, seed=5)
    assert jittered.dtype == np.float64 and jittered.shape == cam.shape
    assert np.unique(jittered).size == cam.size  # no tie left
    order = np.argsort(jittered, axis=None)
    assert np.all(np.diff(cam.ravel()[order].astype(np.float64)) >= 0)  # distinct order kept
    smallest_gap = np.diff(np.unique(cam.astype(np.float64))).min()
    assert np.all(jittered - cam >= 0) and np.all(jittered - cam < smallest_gap / 2)
    # the tied pixels are put in an order that is not their position
    zeros = np.flatnonzero(cam.ravel() == 0)
    assert not np.array_equal(np.sort(zeros), zeros[np.argsort(jittered.ravel()[zeros])])


def test_jitter_is_deterministic_per_seed() -> None:
    cam = _sparse_map()
    np.testing.assert_array_equal(_break_ties(cam, 0), _break_ties(cam, 0))
    assert not np.array_equal(_break_ties(cam, 0), _break_ties(cam, 1))
    flat = _break_ties(np.zeros((8, 8), np.float32), 2)  # no order to keep: a random ranking
    assert np.unique(flat).size == 64
    np.testing.assert_array_equal(flat, _break_ties(np.zeros((8, 8), np.float32), 2))


def test_random_map_is_smooth_noise_fixed_by_the_seed() -> None:
    first = _random_map((48, 40), (6, 5), seed=0)
    assert first.shape == (48, 40) and first.dtype == np.float32
    assert first.min() == 0.0 and first.max() == 1.0
    np.testing.assert_array_equal(first, _random_map((48, 40), (6, 5), seed=0))
    assert not np.array_equal(first, _random_map((48, 40), (6, 5), seed=1))
    # smoothed to the native resolution: neighbours differ far less than in pixel noise
    step = np.abs(np.diff(first, axis=1)).mean()
    assert step < 0.1
    # the same draw at the native resolution, upsampled: its 6x5 cell means follow the noise
    noise = np.random.default_rng(np.random.SeedSequence([0, 0x72616E])).random(
        (6, 5), dtype=np.float32)
    cells = first.reshape(6, 8, 5, 8).mean(axis=(1, 3))
    assert np.corrcoef(cells.ravel(), noise.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("size", [(49, 49), (48, 64)])
def test_center_map_peaks_at_the_centre(size: tuple[int, int]) -> None:
    height, width = size
    got = _center_map(size)
    assert got.shape == size and got.min() == 0.0 and got.max() == pytest.approx(1.0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bell = np.exp(-((y - (height - 1) / 2) ** 2 / (2 * (CENTER_SIGMA * height) ** 2)
                    + (x - (width - 1) / 2) ** 2 / (2 * (CENTER_SIGMA * width) ** 2)))
    expected = (bell - bell.min()) / (bell.max() - bell.min())
    np.testing.assert_allclose(got, expected, atol=1e-6)
    peaks = np.argwhere(got == got.max())
    np.testing.assert_allclose(peaks.mean(axis=0), [(height - 1) / 2, (width - 1) / 2])
    if height % 2:
        assert got[height // 2, width // 2] == got.max()
    assert got[0, 0] == got.min()  # corners are the farthest


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor]:
    model = randomize_bn(tiny_model("simam_resnet50", seed=3, width=0.125))
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(8))
    return model, x


@pytest.fixture(scope="module")
def with_baselines(toy) -> dict:
    model, x = toy
    return faithfulness(model, x, block="layer3.1", target=1, baselines=True)


def test_baselines_are_a_json_ready_dict_beside_unchanged_scores(toy, with_baselines) -> None:
    model, x = toy
    plain = faithfulness(model, x, block="layer3.1", target=1)
    assert "baselines" not in plain
    got = dict(with_baselines)
    baselines = got.pop("baselines")
    assert got == plain  # the map's own scores do not depend on the baselines
    assert set(baselines) == set(BASELINES) == {"random", "center"}
    for entry in baselines.values():
        assert set(entry) >= PER_MAP
        assert len(entry["deletion_curve"]) == len(entry["insertion_curve"]) == 21
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
    # the block's own output resolution, found independently with a hook
    sizes: list[tuple[int, ...]] = []
    handle = model.layer3[1].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-2:]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    assert baselines["random"]["resolution"] == list(sizes[0]) == [3, 3]
    assert baselines["center"]["sigma"] == CENTER_SIGMA
    assert json.loads(json.dumps(with_baselines)) == with_baselines


def test_baseline_scores_equal_the_library_and_rise_called_directly(toy,
                                                                    with_baselines) -> None:
    model, x = toy
    maps = {"random": _random_map((48, 48), (3, 3), 0), "center": _center_map((48, 48))}
    targets = [ClassifierOutputSoftmaxTarget(1)]
    blurred = gaussian_blur(x, [11, 11], [5.0, 5.0])
    model.eval()
    for name, cam in maps.items():
        entry = with_baselines["baselines"][name]
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)  # the imputer's noise, reseeded for every map
            road = ROADCombined(percentiles=[20, 40, 60, 80])(
                x, _break_ties(cam, 0)[None], targets, model)
            drop = DropInConfidence()(x, cam[None], targets, model)
        assert entry["road"] == pytest.approx(float(road[0]), abs=1e-6)
        assert entry["drop_in_confidence"] == pytest.approx(float(drop[0]), abs=1e-6)
        # RISE by hand: pixels by value, ties by position, 21 steps
        order = sorted(range(cam.size), key=lambda i: (-float(cam.flat[i]), i))
        deletion, insertion = [], []
        for step in range(21):
            rows, cols = np.unravel_index(np.array(order[: round(step / 20 * cam.size)],
                                                   dtype=np.intp), cam.shape)
            deleted, inserted = x.clone(), blurred.clone()
            deleted[0, :, rows, cols] = 0.0
            inserted[0, :, rows, cols] = x[0, :, rows, cols]
            with torch.no_grad():
                both = torch.softmax(model(torch.cat([deleted, inserted])), dim=1)[:, 1]
            deletion.append(float(both[0]))
            insertion.append(float(both[1]))
        np.testing.assert_allclose(entry["deletion_curve"], deletion, atol=1e-5)
        np.testing.assert_allclose(entry["insertion_curve"], insertion, atol=1e-5)
        assert entry["deletion_auc"] == pytest.approx(np.trapezoid(deletion, dx=0.05), abs=1e-5)


def test_random_baseline_follows_the_seed(toy) -> None:
    model, x = toy
    again = faithfulness(model, x, block="layer4.2", target=0, baselines=True, seed=2)
    other = faithfulness(model, x, block="layer4.2", target=0, baselines=True, seed=2)
    assert again["baselines"] == other["baselines"]
    shifted = faithfulness(model, x, block="layer4.2", target=0, baselines=True, seed=3)
    assert (shifted["baselines"]["random"]["deletion_curve"]
            != again["baselines"]["random"]["deletion_curve"])
    # the centre map does not depend on the seed; only ROAD's noise and jitter do
    assert (shifted["baselines"]["center"]["deletion_curve"]
            == again["baselines"]["center"]["deletion_curve"])


class _CentreReader(nn.Module):
    """Two logits; class 0's grows with the mean of the input's central 16x16 pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, :, 24:40, 24:40].mean(dim=(1, 2, 3))
        return torch.stack([8.0 * centre - 4.0, torch.zeros_like(centre)], dim=1)


def test_a_model_that_reads_the_centre_rewards_the_centre_map() -> None:
    """Scores with a model whose output we control: deleting the centre first must drop class
    0's probability at once, inserting it first must raise it; a random map does neither."""
    model = _CentreReader()
    x = torch.zeros(1, 3, SIDE, SIDE)
    x[:, :, 24:40, 24:40] = 1.0  # the evidence: a bright central square
    with torch.no_grad():
        centre = _score_map(model, x, _center_map((SIDE, SIDE)), 0, 0, None)
        noise = _score_map(model, x, _random_map((SIDE, SIDE), (8, 8), 0), 0, 0, None)
    full, none = 1 / (1 + np.exp(-4.0)), 1 / (1 + np.exp(4.0))
    # 16x16 of 64x64 is 1/16 of the pixels: the centre map has all of it by f = 0.1
    assert centre["deletion_curve"][0] == pytest.approx(full, abs=1e-6)
    assert centre["deletion_curve"][2] == pytest.approx(none, abs=1e-6)
    assert centre["insertion_curve"][2] == pytest.approx(full, abs=1e-6)
    assert np.all(np.diff(centre["deletion_curve"]) <= 1e-7)  # monotone: only ever deletes
    assert centre["deletion_auc"] < noise["deletion_auc"] - 0.2
    assert centre["insertion_auc"] > noise["insertion_auc"]
    assert centre["road"] > noise["road"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three 48 px scenes of coloured squares and an untrained tiny SimAM-ResNet-50."""
    data = squares_dataset(tmp_path_factory.mktemp("baseline_data"), 48)
    folder = save_tiny_checkpoints(tmp_path_factory.mktemp("baseline_ckpt"),
                                   archs=("simam_resnet50",), classes=list(SQUARE_COLOURS),
                                   preprocessing=Preprocessing(resize=48, crop=48),
                                   random_bn=True)
    return data, folder / "demo" / "simam_resnet50.safetensors"


def test_evaluate_baseline_columns_are_means_of_direct_calls(study, tmp_path: Path) -> None:
    data, checkpoint = study
    model = load_model(checkpoint)
    rows = evaluate([model], data, faithfulness=True, baselines=True, limit=3)
    assert BASELINE_FIELDS[:2] == ("road_random", "road_center")
    assert len(BASELINE_FIELDS) == 2 * len(FAITHFULNESS_FIELDS)
    paths = rows[0]["per_image"]["path"]
    labels = [sorted(SQUARE_COLOURS).index(Path(p).parent.name) for p in paths]
    for row in rows:
        direct = [faithfulness(model, load_image(p), target=label, block=row["block"],
                               where=row["where"], baselines=True)
                  for p, label in zip(paths, labels, strict=True)]
        for field in FAITHFULNESS_FIELDS:
            assert row[field] == pytest.approx(np.mean([d[field] for d in direct]), abs=1e-12)
            for kind in ("random", "center"):
                column = f"{field}_{kind}"
                expected = np.mean([d["baselines"][kind][field] for d in direct])
                assert row[column] == pytest.approx(expected, abs=1e-12), column
                assert row[f"{column}_lo"] <= row[column] + 1e-12 <= row[f"{column}_hi"] + 2e-12
    table = format_table(rows)
    assert table.count(": random map |") == table.count(": center map |") == len(rows)
    header = next(csv.reader(write_csv(rows, tmp_path / "b.csv").open()))
    at = header.index("road_random")
    assert header[at:at + 6] == ["road_random", "road_random_lo", "road_random_hi",
                                 "road_center", "road_center_lo", "road_center_hi"]
    plain = evaluate([model], data, faithfulness=True, limit=3)
    assert not any(f in plain[0] for f in BASELINE_FIELDS)
    assert ": random map" not in format_table(plain)


def test_cli_baselines_need_faithfulness(study, capsys) -> None:
    data, checkpoint = study
    code = cli.main(["evaluate", "--data", str(data), "--checkpoints", str(checkpoint),
                     "--baselines"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --baselines needs --faithfulness"
