"""Paired bootstrap intervals of differences between maps on the same scenes
(``bootstrap_interval(..., minus=)``, ``paired_differences``, ``evaluate --paired``): against
numpy resampling written here, and known cases (identical maps, a constant shift, a difference
on a few scenes only)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SQUARE_COLOURS, save_tiny_checkpoints, squares_dataset

from simam_viz import cli, load_model
from simam_viz.errors import SimamVizError
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.studies.evaluation import (
    PAIRED_FIELDS,
    bootstrap_interval,
    evaluate,
    format_paired_table,
    paired_differences,
)

N = 120  # scenes of the synthetic rows


def _row(model: str, arch: str, where: str, values: dict[str, Any], method: str = "gradcam",
         paths: list[str] | None = None) -> dict[str, Any]:
    """An evaluation row as ``evaluate(..., keep_values=True)`` returns it (means unused)."""
    paths = paths if paths is not None else [f"s{i:03d}.png" for i in range(N)]
    row: dict[str, Any] = {"model": model, "arch": arch, "method": method, "block": "layer4.2",
                           "where": where, "images": len(paths)}
    row["per_image"] = {"path": list(paths), **{k: list(map(float, v)) for k, v in values.items()}}
    for key, value in values.items():
        row[key] = float(np.nanmean(value))
    return row


def _scores(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pointing": rng.integers(0, 2, N), "energy": rng.uniform(0.3, 0.9, N),
            "iou": rng.uniform(0.0, 0.6, N)}


def _numpy_interval(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000
                    ) -> tuple[float, float]:
    """The paired percentile bootstrap, written independently: resample scene indices and
    take both models' values at the same indices."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    means = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def _find(diffs: list[dict], model: str, metric: str, where: str = "output") -> dict:
    (found,) = [d for d in diffs if d["model"] == model and d["metric"] == metric
                and d["where"] == where]
    return found


def test_minus_is_the_paired_bootstrap_of_numpy_resampling() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(0.5, 0.2, 90)
    b = a - 0.05 + rng.normal(0.0, 0.05, 90)  # correlated, as two models on the same scenes
    for seed in (0, 3):
        lo, hi = bootstrap_interval(a, minus=b, seed=seed)
        ref_lo, ref_hi = _numpy_interval(a, b, seed=seed)
        assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)
    # pairing is what makes it narrow: the unpaired intervals of a and b overlap widely
    lo, hi = bootstrap_interval(a, minus=b)
    assert 0.03 < lo < np.mean(a - b) < hi < 0.07
    a_lo, a_hi = bootstrap_interval(a)
    b_lo, b_hi = bootstrap_interval(b)
    assert a_lo < b_hi and (hi - lo) < 0.3 * (a_hi - a_lo)


def test_minus_known_cases_and_nan_scenes() -> None:
    x = np.random.default_rng(1).uniform(size=50)
    assert bootstrap_interval(x, minus=x) == (0.0, 0.0)
    lo, hi = bootstrap_interval(x + 0.25, minus=x)
    assert lo == pytest.approx(0.25, abs=1e-12) and hi == pytest.approx(0.25, abs=1e-12)
    # a scene undefined (NaN, flat map) in either is left out of both
    a, b = np.array([0.5, math.nan, 0.7]), np.array([0.25, 0.1, math.nan])
    assert bootstrap_interval(a, minus=b) == (0.25, 0.25)
    with pytest.raises(SimamVizError, match="same scenes"):
        bootstrap_interval([1.0, 2.0], minus=[1.0])


def test_identical_models_give_zero_and_no_finding() -> None:
    scores = _scores(0)
    rows = [_row("ResNet", "resnet50", "output", scores),
            _row("SimAM", "simam_resnet50", "output", scores)]
    diffs = paired_differences(rows)
    assert [d["metric"] for d in diffs] == ["pointing", "energy", "iou"]
    for d in diffs:
        assert (d["difference"], d["lo"], d["hi"]) == (0.0, 0.0, 0.0)
        assert d["excludes_zero"] is False and d["images"] == N
        assert d["reference"] == "ResNet" and d["reference_where"] == "output"
        assert set(d) == set(PAIRED_FIELDS)


def test_constant_shift_gives_exactly_that_shift_in_points() -> None:
    scores = _scores(1)
    shifted = {**scores, "energy": scores["energy"] + 0.04, "iou": scores["iou"] - 0.02}
    rows = [_row("ResNet", "resnet50", "output", scores),
            _row("SE", "se_resnet50", "output", shifted)]
    diffs = paired_differences(rows)
    energy, iou = _find(diffs, "SE", "energy"), _find(diffs, "SE", "iou")
    for d, shift in ((energy, 4.0), (iou, -2.0)):  # fractions become percentage points
        assert d["difference"] == pytest.approx(shift, abs=1e-9)
        assert d["lo"] == pytest.approx(shift, abs=1e-9)
        assert d["hi"] == pytest.approx(shift, abs=1e-9)
        assert d["excludes_zero"] is True


def test_difference_on_a_few_scenes_is_no_finding() -> None:
    """Two scenes of 120 where SimAM points right and ResNet does not: +1.7 points, but a
    resample misses both scenes about 19 % of the time, so the interval reaches 0."""
    scores = _scores(2)
    ref = {**scores, "pointing": np.ones(N)}
    ref["pointing"][[5, 60]] = 0.0
    simam = {**scores, "pointing": np.ones(N)}
    rows = [_row("ResNet", "resnet50", "output", ref),
            _row("SimAM", "simam_resnet50", "output", simam)]
    d = _find(paired_differences(rows), "SimAM", "pointing")
    assert d["difference"] == pytest.approx(200.0 / N)
    assert d["lo"] == 0.0 and d["hi"] > 2.0 and d["excludes_zero"] is False
    ref_lo, ref_hi = _numpy_interval(100.0 * simam["pointing"], 100.0 * ref["pointing"])
    assert (d["lo"], d["hi"]) == pytest.approx((ref_lo, ref_hi), abs=1e-9)


def test_every_metric_against_numpy_and_scenes_matched_by_path() -> None:
    """Real-looking scores, trust columns included, the reference's scenes in another order:
    each interval is the numpy one on the scenes matched by path."""
    ours, theirs = _scores(3), _scores(4)
    rng = np.random.default_rng(5)
    ours["road"], theirs["road"] = rng.uniform(0, 0.5, N), rng.uniform(0, 0.5, N)
    ours["road"][:3] = math.nan  # undefined scenes are left out of the pair
    order = rng.permutation(N)
    paths = [f"s{i:03d}.png" for i in range(N)]
    ref_row = _row("ResNet", "resnet50", "output", {k: v[order] for k, v in theirs.items()},
                   paths=[paths[i] for i in order])
    rows = [ref_row, _row("SimAM", "simam_resnet50", "output", ours)]
    diffs = paired_differences(rows, "ResNet", seed=2)
    assert [d["metric"] for d in diffs] == ["pointing", "energy", "iou", "road"]
    for d in diffs:
        scale = 1.0 if d["metric"] == "road" else 100.0
        a, b = scale * np.asarray(ours[d["metric"]]), scale * np.asarray(theirs[d["metric"]])
        keep = np.isfinite(a) & np.isfinite(b)
        assert d["images"] == keep.sum()
        assert d["difference"] == pytest.approx(np.mean(a[keep] - b[keep]), abs=1e-9)
        ref_lo, ref_hi = _numpy_interval(a[keep], b[keep], seed=2)
        assert d["lo"] == pytest.approx(ref_lo, abs=1e-9)
        assert d["hi"] == pytest.approx(ref_hi, abs=1e-9)
        assert d["excludes_zero"] == (ref_lo > 0 or ref_hi < 0)


def test_pairs_reference_and_after_minus_before() -> None:
    s = _scores(6)
    after = {**s, "energy": s["energy"] + 0.01}
    rows = [_row("ResNet", "resnet50", "output", s),
            _row("SimAM", "simam_resnet50", "output", s),
            _row("SimAM", "simam_resnet50", "before", s),
            _row("SimAM", "simam_resnet50", "after", after),
            _row("ResNet", "resnet50", "output", s, method="layercam"),
            _row("SimAM", "simam_resnet50", "output", s, method="layercam")]
    diffs = paired_differences(rows)
    pairs = {(d["model"], d["method"], d["where"], d["reference"], d["reference_where"])
             for d in diffs}
    assert pairs == {("SimAM", "gradcam", "output", "ResNet", "output"),
                     ("SimAM", "layercam", "output", "ResNet", "output"),
                     ("SimAM", "gradcam", "after", "SimAM", "before")}
    assert _find(diffs, "SimAM", "energy", "after")["difference"] == pytest.approx(1.0)
    # no reference: only the attention module's own effect
    only = paired_differences(rows, None)
    assert {(d["where"], d["reference_where"]) for d in only} == {("after", "before")}
    table = format_paired_table(diffs)
    assert "| SimAM − ResNet | gradcam | layer4.2 output | +0.0 [+0.0, +0.0] |" in table
    assert "| SimAM: after − before | gradcam | layer4.2 after |" in table
    assert "+1.0 [+1.0, +1.0] *" in table and "pointing Δ pts" in table


def test_bad_reference_and_missing_values_are_clear_errors() -> None:
    s = _scores(8)
    rows = [_row("A", "resnet50", "output", s), _row("B", "resnet50", "output", s)]
    with pytest.raises(SimamVizError, match="none of the evaluated models"):
        paired_differences(rows, "vgg16")
    with pytest.raises(SimamVizError, match="several models"):
        paired_differences(rows, "resnet50")
    bare = [{k: v for k, v in r.items() if k != "per_image"} for r in rows]
    with pytest.raises(SimamVizError, match="keep_values"):
        paired_differences(bare, "A")
    other = [rows[0], _row("C", "se_resnet50", "output", s, paths=["x.png"] * N)]
    with pytest.raises(SimamVizError, match="same scenes"):
        paired_differences(other, "A")


# ---- on real (tiny, untrained) models through the CLI ----------------------------------------

SIDE = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    data = squares_dataset(tmp_path_factory.mktemp("paired_data"), SIDE, per_class=2)
    archs = ("resnet50", "se_resnet50", "simam_resnet50")
    folder = save_tiny_checkpoints(tmp_path_factory.mktemp("paired_ckpt"), archs=archs,
                                   classes=list(SQUARE_COLOURS),
                                   preprocessing=Preprocessing(resize=SIDE, crop=SIDE),
                                   random_bn=True)
    return data, [folder / "demo" / f"{arch}.safetensors" for arch in archs]


def test_cli_paired_csv_matches_the_api_and_leaves_the_plain_csv_alone(
        setup: tuple[Path, list[Path]], tmp_path: Path, capsys) -> None:
    data, checkpoints = setup
    plain, with_paired, paired = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "p.csv"
    base = ["evaluate", "--data", str(data), "--checkpoints", *map(str, checkpoints),
            "--methods", "gradcam", "layercam"]
    assert cli.main([*base, "--csv", str(plain)]) == 0
    assert "Paired differences" not in capsys.readouterr().out
    assert cli.main([*base, "--csv", str(with_paired), "--paired-csv", str(paired)]) == 0
    printed = capsys.readouterr().out
    assert plain.read_bytes() == with_paired.read_bytes()
    assert "Paired differences" in printed and "− " in printed

    models = [load_model(path) for path in checkpoints]
    rows = evaluate(models, data, methods=("gradcam", "layercam"), keep_values=True)
    expected = paired_differences(rows)
    written = list(csv.DictReader(paired.open()))
    assert list(written[0]) == list(PAIRED_FIELDS)
    # SE and SimAM minus ResNet for 2 methods, SE's and SimAM's after minus before: 8 pairs
    assert len(written) == len(expected) == 8 * 3
    for got, want in zip(written, expected, strict=True):  # the CLI names models otherwise
        assert (got["arch"], got["method"], got["where"], got["metric"]) == \
            (want["arch"], want["method"], want["where"], want["metric"])
        assert float(got["difference"]) == pytest.approx(want["difference"], abs=5e-5)
        assert float(got["lo"]) == pytest.approx(want["lo"], abs=5e-5)
        assert got["excludes_zero"] == str(want["excludes_zero"])
    # each difference is that of the two rows' own per-image values
    by = {(r["model"], r["method"], r["where"]): r for r in rows}
    for want in expected:
        a = np.asarray(by[want["model"], want["method"], want["where"]]["per_image"][
            want["metric"]])
        b = np.asarray(by[want["reference"], want["method"], want["reference_where"]][
            "per_image"][want["metric"]])
        assert want["difference"] == pytest.approx(100.0 * np.mean(a - b), abs=1e-9)
        assert want["images"] == 6


def test_cli_reference_errors_are_one_line(setup: tuple[Path, list[Path]], capsys) -> None:
    data, checkpoints = setup
    base = ["evaluate", "--data", str(data), "--checkpoints", *map(str, checkpoints),
            "--limit", "3"]
    assert cli.main([*base, "--reference", "resnet50"]) == 2
    assert capsys.readouterr().err.strip() == "error: --reference needs --paired"
    assert cli.main([*base, "--paired", "--reference", "vgg16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: reference 'vgg16' is none of the evaluated models")
    assert "\n" not in err and "Traceback" not in err


# ---- scripts/seed_study.py: seeds found, spread and verdicts ----------------------------------


@pytest.fixture(scope="module")
def seed_study():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "seed_study.py"
    spec = importlib.util.spec_from_file_location("seed_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_folders_take_only_finished_seeds(seed_study, tmp_path: Path) -> None:
    for seed, done, archs in (("1", True, seed_study.ARCHS), ("2", False, seed_study.ARCHS),
                              ("3", True, seed_study.ARCHS[:2]), ("x", True, seed_study.ARCHS)):
        final = tmp_path / "build" / "seeds" / seed / "final"
        final.mkdir(parents=True)
        for arch in archs:
            (final / f"{arch}.safetensors").write_bytes(b"")
        if done:
            (final / ".done").touch()
    found = seed_study.seed_folders(tmp_path)
    assert found == {0: tmp_path / "checkpoints" / "demo",
                     1: tmp_path / "build" / "seeds" / "1" / "final"}


def _seed_rows(seed_study, shift: float, seed: int) -> list[dict]:
    rows = []
    for arch in seed_study.ARCHS:
        s = _scores(seed)
        if arch == "simam_resnet50":
            s = {**s, "iou": s["iou"] + shift}
        for method in seed_study.METHODS:
            rows.append(_row(seed_study.TITLES[arch], arch, "output", s, method=method))
    return rows


def test_one_seed_says_no_spread_and_verdicts_need_every_seed(seed_study) -> None:
    one = {0: _seed_rows(seed_study, 0.05, 0)}
    assert "1 seed: no spread yet" in seed_study.means_table(one)
    table = seed_study.differences_table({0: paired_differences(one[0], "ResNet-50")})
    line = next(x for x in table.splitlines() if x.startswith("| SimAM-ResNet-50 − ResNet-50 |")
                and "| iou |" in x)
    assert "+5.0 [+5.0, +5.0] *" in line and line.endswith("| finding on 1 seed only |")
    # three seeds: +5, +5, -1 points of IoU: the sign flips, so no finding
    three = {s: _seed_rows(seed_study, shift, s) for s, shift in ((0, .05), (1, .05), (2, -.01))}
    diffs = {s: paired_differences(rows, "ResNet-50") for s, rows in three.items()}
    line = next(x for x in seed_study.differences_table(diffs).splitlines()
                if x.startswith("| SimAM-ResNet-50 − ResNet-50 | gradcam | iou |"))
    assert "| +3.00 | -1.00 to +5.00 | no finding |" in line
    means = seed_study.means_table(three)
    assert "| seed 0 | seed 1 | seed 2 | mean across seeds | range (min-max) |" in means
    agree = {s: paired_differences(_seed_rows(seed_study, 0.02, s), "ResNet-50")
             for s in (0, 1)}
    assert "| finding (every seed) |" in seed_study.differences_table(agree)
