"""The intervention study: per-scene values, means, bootstrap and paired intervals, CLI, script.

Three tiny untrained models (random BatchNorm) on six coloured-square scenes. Per-scene values
are checked against :func:`intervention_effects` called directly, every mean against numpy,
every interval against a bootstrap written here with numpy (the same seeded draw of scenes),
and every paired difference against the per-scene differences of the two rows.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import SQUARE_COLOURS, save_tiny_checkpoints, squares_dataset

from simam_viz import cli, load_model
from simam_viz.engine.intervention import MODES, intervention_effects
from simam_viz.errors import SimamVizError
from simam_viz.images import load_image
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.studies.interventions import (
    BLOCK_SETS,
    COMPARISONS,
    METRICS,
    NOISE,
    ROW_FIELDS,
    block_sets,
    format_intervention_table,
    format_paired_interventions,
    intervention_study,
    paired_interventions,
    read_rows,
    write_intervention_csv,
    write_per_image_csv,
    write_rows,
)

SIDE = 48
ARCHS = ("resnet50", "se_resnet50", "simam_resnet50")
SIZES = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3, "all": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return squares_dataset(tmp_path_factory.mktemp("iv_data"), SIDE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("iv_study_ckpt"), archs=ARCHS,
                                 classes=list(SQUARE_COLOURS), random_bn=True,
                                 preprocessing=Preprocessing(resize=SIDE, crop=SIDE))


@pytest.fixture(scope="module")
def models(folder: Path) -> dict[str, object]:
    return {arch: load_model(folder / "demo" / f"{arch}.safetensors") for arch in ARCHS}


@pytest.fixture(scope="module")
def rows(models: dict, data: Path) -> list[dict]:
    return intervention_study(list(models.values()), data)


def _row(rows: list[dict], arch: str, mode: str, blocks: str) -> dict:
    (found,) = [r for r in rows if r["arch"] == arch and r["mode"] == mode
                and r["blocks"] == blocks]
    return found


def _numpy_interval(diff: np.ndarray, seed: int = 0, resamples: int = 2000
                    ) -> tuple[float, float]:
    """Percentile bootstrap of the mean, written out: draw scenes, average, take quantiles."""
    idx = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    lo, hi = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)


def test_rows_cover_every_mode_its_kind_takes_and_every_stage(rows: list[dict]) -> None:
    assert {r["arch"] for r in rows} == {"se_resnet50", "simam_resnet50"}  # ResNet: nothing
    for arch, modes in (("se_resnet50", [m for m in MODES if m != "exact"]),
                        ("simam_resnet50", list(MODES))):
        mine = [r for r in rows if r["arch"] == arch]
        assert sorted({r["mode"] for r in mine}) == sorted(modes)
        assert len(mine) == len(modes) * len(BLOCK_SETS)
        for r in mine:
            assert r["n_blocks"] == SIZES[r["blocks"]]
            assert r["images"] == 6 and r["target"] == "prediction"
            assert set(ROW_FIELDS) <= set(r)


def test_per_scene_values_are_intervention_effects(rows: list[dict], models: dict,
                                                   data: Path) -> None:
    model = models["simam_resnet50"]
    sets = block_sets(model)
    assert sets["layer2"] == ("layer2.0", "layer2.1", "layer2.2", "layer2.3")
    for mode in ("exact", "spatial_mean"):
        first = _row(rows, "simam_resnet50", mode, "layer1")["per_image"]
        for i, path in enumerate(first["path"]):
            direct = intervention_effects(model, load_image(path), mode=mode, block_sets=sets)
            ref = direct["reference"]
            for name in BLOCK_SETS:
                per = _row(rows, "simam_resnet50", mode, name)["per_image"]
                assert per["path"][i] == path and per["target"][i] == ref["target"]
                assert per["prob_ref"][i] == ref["prob"]
                assert per["prob"][i] == direct[name]["prob"]
                assert per["prob_change"][i] == direct[name]["prob"] - ref["prob"]
                assert per["flip"][i] == int(direct[name]["top1"] != ref["top1"])
                assert per["kl"][i] == direct[name]["kl"]


def test_means_and_intervals_are_numpy_on_the_rows(rows: list[dict]) -> None:
    for r in rows:
        for metric in METRICS:
            values = np.asarray(r["per_image"][metric], dtype=np.float64)
            assert r[metric] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
            lo, hi = _numpy_interval(values)
            assert r[f"{metric}_lo"] == pytest.approx(lo, abs=1e-12)
            assert r[f"{metric}_hi"] == pytest.approx(hi, abs=1e-12)
        assert r["prob_ref"] == pytest.approx(np.mean(r["per_image"]["prob_ref"]))
    # the identity mode over all 16 blocks does change these random models
    assert _row(rows, "simam_resnet50", "identity", "all")["kl"] > 1e-4


def test_se_channel_mean_changes_nothing_and_spatial_mean_is_constant(rows: list[dict]) -> None:
    """SE's weights are one per channel: their mean over positions is themselves, and their
    mean over channels is their overall mean."""
    for name in BLOCK_SETS:
        same = _row(rows, "se_resnet50", "channel_mean", name)["per_image"]
        assert np.max(np.abs(same["prob_change"])) < NOISE
        assert same["flip"] == [0] * 6
        spatial = _row(rows, "se_resnet50", "spatial_mean", name)["per_image"]
        constant = _row(rows, "se_resnet50", "constant", name)["per_image"]
        assert spatial["prob"] == pytest.approx(constant["prob"], abs=1e-6)
    diffs = paired_interventions(rows)
    for d in diffs:
        if d["arch"] == "se_resnet50" and (d["a"], d["b"]) == ("channel_mean", "model"):
            assert d["verdict"] == "no finding" and not d["excludes_zero"]


def test_paired_differences_are_per_scene_differences(rows: list[dict]) -> None:
    diffs = paired_interventions(rows, seed=3)
    seen = set()
    for d in diffs:
        a = _row(rows, d["arch"], d["a"], d["blocks"])["per_image"][d["metric"]]
        a = np.asarray(a, dtype=np.float64)
        if d["b"] == "model":
            b = np.zeros_like(a)
            assert d["metric"] != "kl"  # KL from the model is >= 0: never compared
        else:
            b = np.asarray(_row(rows, d["arch"], d["b"], d["blocks"])["per_image"][d["metric"]],
                           dtype=np.float64)
        assert d["images"] == 6
        assert d["difference"] == pytest.approx(np.mean(a - b), rel=1e-12, abs=1e-15)
        lo, hi = _numpy_interval(a - b, seed=3)
        assert d["lo"] == pytest.approx(lo, abs=1e-12) and d["hi"] == pytest.approx(hi, abs=1e-12)
        assert d["excludes_zero"] == (lo > NOISE or hi < -NOISE)
        assert d["verdict"] == ("finding" if d["excludes_zero"] else "no finding")
        seen.add((d["arch"], d["a"], d["b"]))
    # SE takes no exact mode: that comparison is SimAM's alone
    assert ("simam_resnet50", "exact", "model") in seen
    assert ("se_resnet50", "exact", "model") not in seen
    expected = {(c.a, c.b or "model") for c in COMPARISONS}
    assert {(a, b) for arch, a, b in seen if arch == "simam_resnet50"} == expected
    assert len(diffs) == sum(len(BLOCK_SETS) * len(c.metrics) for c in COMPARISONS) + sum(
        len(BLOCK_SETS) * len(c.metrics) for c in COMPARISONS if c.a != "exact")


def _fake_rows(values_a: list[float], values_b: list[float]) -> list[dict]:
    def row(mode: str, prob: list[float]) -> dict:
        per = {"path": [f"s{i}.png" for i in range(len(prob))], "prob_change": prob,
               "flip": [0] * len(prob), "kl": [abs(p) for p in prob]}
        return {"model": "M", "arch": "simam_resnet50", "mode": mode, "blocks": "all",
                "per_image": per}
    return [row("channel_mean", values_a), row("constant", values_b)]


def test_paired_known_cases() -> None:
    rng = np.random.default_rng(0)
    b = list(rng.uniform(-0.3, 0.0, 40))
    shifted = paired_interventions(_fake_rows([x + 0.05 for x in b], b))
    (d,) = [x for x in shifted if x["b"] == "constant" and x["metric"] == "prob_change"]
    assert d["difference"] == pytest.approx(0.05) and d["lo"] == pytest.approx(0.05)
    assert d["verdict"] == "finding"
    same = paired_interventions(_fake_rows(b, b))
    assert all(x["verdict"] == "no finding" for x in same if x["b"] == "constant")
    tiny = paired_interventions(_fake_rows([x + 1e-8 for x in b], b))  # float noise
    assert all(x["verdict"] == "no finding" for x in tiny if x["b"] == "constant")
    table = format_paired_interventions(shifted)
    line = next(x for x in table.splitlines() if "channel_mean − constant" in x)
    assert "+0.0500 [+0.0500, +0.0500] *" in line and "finding (Δ target prob" in line
    moved = _fake_rows(b, b)
    moved[1]["per_image"]["path"] = list(reversed(moved[1]["per_image"]["path"]))
    with pytest.raises(SimamVizError, match="same scenes"):
        paired_interventions(moved)


def test_label_target_follows_the_label(models: dict, data: Path) -> None:
    model = models["se_resnet50"]
    rows = intervention_study([model], data, modes=["identity"], target="label", limit=3)
    assert {r["mode"] for r in rows} == {"identity"} and rows[0]["images"] == 3
    per = _row(rows, "se_resnet50", "identity", "all")["per_image"]
    assert per["target"] == per["label"]
    for i, path in enumerate(per["path"]):
        direct = intervention_effects(model, load_image(path), mode="identity",
                                      block_sets=block_sets(model), target=per["label"][i])
        assert per["prob"][i] == direct["all"]["prob"]


def test_bad_requests_are_one_line_errors(models: dict, data: Path) -> None:
    with pytest.raises(SimamVizError, match="no model with an attention module"):
        intervention_study([models["resnet50"]], data)
    with pytest.raises(SimamVizError, match="that takes exact"):
        intervention_study([models["se_resnet50"]], data, modes=["exact"])
    with pytest.raises(SimamVizError, match="unknown intervention mode 'flat'"):
        intervention_study([models["se_resnet50"]], data, modes=["flat"])
    with pytest.raises(SimamVizError, match="unknown target"):
        intervention_study([models["se_resnet50"]], data, target="truth")
    with pytest.raises(SimamVizError, match="no such split"):
        intervention_study([models["se_resnet50"]], data, split="val")


def test_tables_and_files(rows: list[dict], tmp_path: Path) -> None:
    table = format_intervention_table(rows)
    r = _row(rows, "simam_resnet50", "identity", "all")
    cell = (f"{r['prob_change']:+.4f} [{r['prob_change_lo']:+.4f}, "
            f"{r['prob_change_hi']:+.4f}] | {100 * r['flip']:.1f} [{100 * r['flip_lo']:.1f}, "
            f"{100 * r['flip_hi']:.1f}] | {r['kl']:.4f} [{r['kl_lo']:.4f}, {r['kl_hi']:.4f}]")
    assert f"| {r['model']} | identity | all (16) | {r['prob_ref']:.3f} | {cell} |" in table
    with write_intervention_csv(rows, tmp_path / "rows.csv").open(encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(rows) and list(got[0]) == list(ROW_FIELDS)
    line = next(x for x in got if x["arch"] == "simam_resnet50" and x["mode"] == "identity"
                and x["blocks"] == "all")
    assert float(line["kl"]) == pytest.approx(r["kl"], abs=1e-6)
    with write_per_image_csv(rows, tmp_path / "scenes.csv").open(encoding="utf-8") as fh:
        scenes = list(csv.DictReader(fh))
    assert len(scenes) == sum(x["images"] for x in rows)
    mine = [s for s in scenes if s["arch"] == "simam_resnet50" and s["mode"] == "identity"
            and s["blocks"] == "all"]
    assert [float(s["kl"]) for s in mine] == pytest.approx(r["per_image"]["kl"], abs=1e-6)
    nan_row = {**rows[0], "kl_lo": math.nan}
    back = read_rows(write_rows([nan_row, *rows[1:]], tmp_path / "rows.json"))
    assert math.isnan(back[0]["kl_lo"]) and back[1:] == rows[1:]
    assert back[0]["per_image"] == rows[0]["per_image"]
    json.loads((tmp_path / "rows.json").read_text())  # strict JSON
    (tmp_path / "other.json").write_text('{"format": "x", "rows": []}')
    with pytest.raises(SimamVizError, match="not an intervention study file"):
        read_rows(tmp_path / "other.json")


def test_cli_evaluate_interventions_matches_the_api(folder: Path, data: Path, tmp_path: Path,
                                                    capsys) -> None:
    ckpts = [str(folder / "demo" / f"{a}.safetensors") for a in ARCHS]
    out_csv, paired_csv = tmp_path / "iv.csv", tmp_path / "paired.csv"
    per_image = tmp_path / "scenes.json"
    code = cli.main(["evaluate", "--data", str(data), "--checkpoints", *ckpts, "--device", "cpu",
                     "--interventions", "--modes", "constant", "channel_mean", "--limit", "4",
                     "--seed", "2", "--csv", str(out_csv), "--paired-csv", str(paired_csv),
                     "--per-image", str(per_image)])
    printed = capsys.readouterr().out
    assert code == 0
    from simam_viz.weights.catalog import load, resolve  # as the CLI loads them (names)

    same = [load(resolve(path)) for path in ckpts]
    api = intervention_study(same, data, modes=["constant", "channel_mean"], limit=4, seed=2)
    assert format_intervention_table(api) in printed
    diffs = paired_interventions(api, seed=2)
    assert format_paired_interventions(diffs) in printed
    with out_csv.open(encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert {(g["arch"], g["mode"], g["blocks"]) for g in got} == {
        (r["arch"], r["mode"], r["blocks"]) for r in api}
    for g in got:
        r = _row(api, g["arch"], g["mode"], g["blocks"])
        for field in ("prob_change", "prob_change_lo", "flip_hi", "kl", "kl_hi"):
            assert float(g[field]) == pytest.approx(r[field], abs=1e-6)
    with paired_csv.open(encoding="utf-8") as fh:
        paired = list(csv.DictReader(fh))
    assert len(paired) == len(diffs)  # channel_mean − constant and channel_mean − model
    assert {(p["a"], p["b"]) for p in paired} == {("channel_mean", "constant"),
                                                  ("channel_mean", "model")}
    assert [r["per_image"] for r in read_rows(per_image)] == [r["per_image"] for r in api]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--modes", "constant"], "--modes needs --interventions"),
    (["--interventions", "--faithfulness"], "cannot be combined with --faithfulness"),
    (["--interventions", "--reference", "resnet50"], "cannot be combined with --reference"),
    (["--interventions", "--modes", "flat"], "invalid choice: 'flat'"),
    (["--interventions", "--modes", "exact", "--checkpoints", "SE"], "that takes exact"),
])
def test_cli_interventions_errors_are_one_line(folder: Path, data: Path, capsys, argv,
                                               needle) -> None:
    if "SE" in argv:
        argv = [str(folder / "demo" / "se_resnet50.safetensors") if a == "SE" else a
                for a in argv]
    else:
        argv = [*argv, "--checkpoints", str(folder / "demo" / "se_resnet50.safetensors")]
    code = cli.main(["evaluate", "--data", str(data), "--device", "cpu", *argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in captured.err


@pytest.fixture(scope="module")
def study_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "intervention_study.py"
    spec = importlib.util.spec_from_file_location("intervention_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_script_tables_from_its_cache(study_script, rows: list[dict], tmp_path: Path,
                                            capsys) -> None:
    """The script's cache is one file per arch; present files are not recomputed, and the
    tables are the library's on the cached rows with the models named by their titles."""
    assert study_script.attention_archs() == ("se_resnet50", "simam_resnet50")
    out = tmp_path / "study"
    for arch in study_script.attention_archs():
        write_rows([r for r in rows if r["arch"] == arch], study_script._cache(out, arch, 6))
    study_script.run_jobs("unused", 6, out, 2, tmp_path)  # everything cached: no job
    assert study_script.main(["--from-cache", "--out", str(out), "--limit", "6"]) == 0
    titled = [{**r, "model": study_script.TITLES[r["arch"]]} for r in rows]
    table = (out / "table.md").read_text(encoding="utf-8")
    assert format_intervention_table(titled) in table
    assert format_paired_interventions(paired_interventions(titled)) in table
    assert "| SimAM-ResNet-50 | channel_mean − model | 3-D part beyond the channel part |" \
        in table
    assert sorted(p.name for p in out.iterdir()) == [
        "paired.csv", "per_image.csv", "rows.csv", "se_resnet50-n6.json",
        "simam_resnet50-n6.json", "table.md"]
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="missing"):
        study_script.main(["--from-cache", "--out", str(tmp_path / "empty")])
