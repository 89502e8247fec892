"""``evaluate --faithfulness --sanity``: columns against direct calls, bootstrap intervals, and
the plain CSV left as it was."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import SQUARE_COLOURS, save_tiny_checkpoints, squares_dataset
from PIL import Image
from scipy.stats import bootstrap

from simam_viz import cli, load_model
from simam_viz.engine.trust import SANITY_LAYERS, faithfulness, sanity_check
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.studies.evaluation import (
    FAITHFULNESS_FIELDS,
    FIELDS,
    SANITY_FIELDS,
    bootstrap_interval,
    evaluate,
    format_table,
    write_csv,
)

# pytorch-grad-cam's ROAD calls np.float32 on a torch tensor, which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")

SIDE = 48
COLOURS = SQUARE_COLOURS
OLD_HEADER = "model,arch,method,block,where,images,top1,pointing,energy,iou"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test split of 3 classes x 2 coloured squares on noise, 48 px, with masks."""
    return squares_dataset(tmp_path_factory.mktemp("trust_data"), SIDE)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Untrained tiny ResNet-50 and SimAM-ResNet-50 (random BN: maps are not uniform)."""
    folder = save_tiny_checkpoints(tmp_path_factory.mktemp("trust_ckpt"),
                                   archs=("resnet50", "simam_resnet50"), classes=list(COLOURS),
                                   preprocessing=Preprocessing(resize=SIDE, crop=SIDE),
                                   random_bn=True)
    return [folder / "demo" / f"{arch}.safetensors" for arch in ("resnet50", "simam_resnet50")]


@pytest.fixture(scope="module")
def models(checkpoints: list[Path]) -> list:
    return [load_model(path) for path in checkpoints]


@pytest.fixture(scope="module")
def rows(models: list, data: Path) -> list[dict]:
    return evaluate(models, data, methods=("gradcam",), faithfulness=True, sanity=True)


def _images(data: Path) -> list[tuple[Image.Image, int]]:
    """The split's images with their labels, read here without the evaluation module."""
    out = []
    for label, name in enumerate(sorted(COLOURS)):
        for path in sorted((data / "test" / name).glob("*.png")):
            with Image.open(path) as im:
                out.append((im.convert("RGB"), label))
    return out


def test_rows_cover_every_map_including_before_and_after_simam(rows: list[dict]) -> None:
    maps = {(r["arch"], r["where"]) for r in rows}
    assert maps == {("resnet50", "output"), ("simam_resnet50", "output"),
                    ("simam_resnet50", "before"), ("simam_resnet50", "after")}
    for row in rows:
        assert row["images"] == 6 and len(row["per_image"]["road"]) == 6
        for field in FAITHFULNESS_FIELDS:
            assert math.isfinite(row[field])
        assert 0.0 <= row["flat"] <= 100.0
        assert np.asarray(row["cascade"]["spearman"], dtype=float).shape == (6, 18)
        assert row["cascade"]["layers"] == list(SANITY_LAYERS)


def test_columns_are_means_of_direct_calls(rows: list[dict], models: list, data: Path) -> None:
    """Every trust column is the mean over images of faithfulness() / sanity_check() called
    directly on the image, with the label as target, for the row's map."""
    images = _images(data)
    by_name = {m.simam_viz.name: m for m in models}
    for row in rows:
        model = by_name[row["model"]]
        request = dict(block=row["block"], where=row["where"], method=row["method"], seed=0)
        faith = [faithfulness(model, im, target=label, **request) for im, label in images]
        steps = [sanity_check(model, im, target=label, **request) for im, label in images]
        for field in FAITHFULNESS_FIELDS:
            expected = np.mean([f[field] for f in faith])
            assert row[field] == pytest.approx(expected, rel=1e-9, abs=1e-12), field
        for score in ("spearman", "ssim", "hog"):
            for index, step in ((0, "fc"), (-1, "stem")):
                values = np.array([getattr(s[index], score) for s in steps])
                if np.isnan(values).all():
                    assert math.isnan(row[f"{score}_{step}"])
                else:
                    assert row[f"{score}_{step}"] == pytest.approx(np.nanmean(values), rel=1e-9)
        spearman = np.array([[st.spearman for st in s] for s in steps])  # images x 18
        flat = np.array([[st.flat for st in s] for s in steps])
        defined = ~np.isnan(spearman).all(axis=1)  # images whose trained map is not flat
        # the flat-map rule: a flat map counts as 0, not left out
        assert np.all(spearman[defined][flat[defined]] == 0.0)
        per_image = [np.mean(np.abs(r[~np.isnan(r)])) for r in spearman if (~np.isnan(r)).any()]
        assert row["mean_abs_spearman"] == pytest.approx(np.mean(per_image), rel=1e-9)
        assert row["flat"] == pytest.approx(100.0 * flat.mean())
        np.testing.assert_array_equal(np.asarray(row["cascade"]["spearman"], dtype=float),
                                      spearman)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible(rows: list[dict]) -> None:
    for row in rows:
        for field in (*FAITHFULNESS_FIELDS, *SANITY_FIELDS):
            if not math.isfinite(row[field]):
                continue
            lo, hi = row[f"{field}_lo"], row[f"{field}_hi"]
            assert lo <= row[field] + 1e-12 and row[field] <= hi + 1e-12, (field, lo, hi)
            values = row["per_image"][field]
            assert bootstrap_interval(values, seed=0) == (lo, hi)  # from the stored values
            assert bootstrap_interval(values, seed=0) == bootstrap_interval(values, seed=0)


def test_bootstrap_interval_matches_scipy_and_handles_edges() -> None:
    values = np.random.default_rng(3).exponential(size=80)  # skewed, like the scores
    lo, hi = bootstrap_interval(values, resamples=20000, seed=1)
    ref = bootstrap((values,), np.mean, n_resamples=20000, method="percentile",
                    confidence_level=0.95, random_state=5).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    assert lo < values.mean() < hi
    assert bootstrap_interval([0.25, 0.25, 0.25]) == (0.25, 0.25)
    assert bootstrap_interval([0.5, float("nan")]) == (0.5, 0.5)  # NaN (flat map) left out
    assert all(math.isnan(v) for v in bootstrap_interval([float("nan")]))
    assert bootstrap_interval(values, seed=2) != bootstrap_interval(values, seed=1)


def test_format_table_prints_mean_and_interval(rows: list[dict]) -> None:
    table = format_table(rows)
    assert "| road ↑ |" in table and "| deletion auc ↓ |" in table
    assert "| spearman fc ↓ |" in table and "| mean abs Spearman ↓ |" in table
    row = rows[0]
    cell = (f"{row['road']:.3f} [{row['road_lo']:.3f}, {row['road_hi']:.3f}]")
    assert cell in table
    assert len(re.findall(r"-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]", table)) >= 4 * 12


def test_csv_with_trust_columns(rows: list[dict], tmp_path: Path) -> None:
    path = write_csv(rows, tmp_path / "trust.csv")
    with path.open() as fh:
        header = fh.readline().strip().split(",")
        table = list(csv.DictReader(path.open()))
    assert header[: len(FIELDS)] == list(FIELDS)
    assert header[len(FIELDS) : len(FIELDS) + 3] == ["road", "road_lo", "road_hi"]
    assert len(header) == len(FIELDS) + 3 * (len(FAITHFULNESS_FIELDS) + len(SANITY_FIELDS))
    assert float(table[0]["road"]) == pytest.approx(rows[0]["road"], abs=5e-5)


def test_cli_without_flags_keeps_the_old_csv(checkpoints: list[Path], data: Path,
                                             tmp_path: Path, capsys) -> None:
    out = tmp_path / "plain.csv"
    code = cli.main(["evaluate", "--data", str(data), "--checkpoints",
                     *map(str, checkpoints), "--csv", str(out)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == OLD_HEADER and len(lines) == 1 + 4
    printed = capsys.readouterr().out
    assert "| model | method |" in printed and "road" not in printed and "[" not in printed
    plain = evaluate([load_model(checkpoints[0])], data)
    assert set(plain[0]) == set(FIELDS)  # no per-image values, no intervals


def test_cli_with_flags_writes_columns_and_per_image_json(checkpoints: list[Path], data: Path,
                                                          tmp_path: Path, capsys) -> None:
    out, per_image = tmp_path / "trust.csv", tmp_path / "per_image.json"
    code = cli.main(["evaluate", "--data", str(data), "--checkpoints", str(checkpoints[0]),
                     "--faithfulness", "--limit", "3", "--csv", str(out),
                     "--per-image", str(per_image)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["images"] == "3"
    assert "insertion_auc_hi" in rows[0] and "spearman_fc" not in rows[0]
    document = json.loads(per_image.read_text())
    values = document["rows"][0]["per_image"]
    assert len(values["insertion_auc"]) == 3 and len(values["path"]) == 3
    assert float(rows[0]["insertion_auc"]) == pytest.approx(np.mean(values["insertion_auc"]),
                                                            abs=5e-5)
    assert re.search(r"\| road ↑ \|", capsys.readouterr().out)


def test_cli_per_image_needs_a_trust_flag(checkpoints: list[Path], data: Path,
                                          tmp_path: Path, capsys) -> None:
    code = cli.main(["evaluate", "--data", str(data), "--checkpoints", str(checkpoints[0]),
                     "--per-image", str(tmp_path / "x.json")])
    assert code == 2
    assert capsys.readouterr().err.strip() == \
        "error: --per-image needs --faithfulness or --sanity"
