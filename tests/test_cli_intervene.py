"""``simam-viz intervene``: the JSON is intervene()'s, the PNG is written, bad input is one line.

Tiny untrained checkpoints (random BatchNorm, so the attention weights vary and every mode
changes something) in a temporary checkpoints folder; each CLI run is compared with
:func:`simam_viz.intervene` called directly on the same checkpoint and image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import (
    CLASSES,
    file_names,
    image_size,
    noise_image,
    save_tiny_checkpoints,
    tiny_model,
)

from simam_viz import cli, intervene, load_model
from simam_viz.images import load_image
from simam_viz.networks.models import BLOCKS
from simam_viz.rendering.intervention_figures import ROW_H, TOP, WIDTH


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``demo/resnet50``, ``demo/se_resnet50`` and ``demo/simam_resnet50``, tiny and random."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("iv_ckpt"), random_bn=True)


@pytest.fixture(autouse=True)
def _checkpoints(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny folder is the checkpoints folder, so the default model is its SimAM one."""
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(folder))
    monkeypatch.delenv("SIMAM_VIZ_DEMO_MODELS", raising=False)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iv_img") / "noise.png"
    noise_image(4, 80, 72).save(path)
    return path


def _ckpt(folder: Path, arch: str) -> Path:
    return folder / "demo" / f"{arch}.safetensors"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["intervene", *argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("arch", "mode", "flags", "direct"), [
    ("simam_resnet50", "channel_mean", ["--per-block"], {"per_block": True}),
    ("simam_resnet50", "exact", ["--blocks", "layer2.1", "layer4.0", "--lambda", "0.3",
                                 "--target", "ball"],
     {"blocks": ("layer2.1", "layer4.0"), "simam_lambda": 0.3, "target": "ball"}),
    ("se_resnet50", "constant", ["--blocks", "layer3", "--cam-block", "layer3.5", "--per-block"],
     {"blocks": tuple(f"layer3.{i}" for i in range(6)), "cam_block": "layer3.5",
      "per_block": True}),
])
def test_json_numbers_are_intervene_run_directly(folder, image_path, tmp_path, capsys, arch,
                                                 mode, flags, direct) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, str(image_path), "--checkpoint", str(_ckpt(folder, arch)),
                             "--mode", mode, *flags, "--dpi", "40", "--out", str(out))
    assert code == 0, err
    assert err == ""
    assert file_names(out) == ["intervention.json", "intervention.png"]
    doc = json.loads((out / "intervention.json").read_text(encoding="utf-8"))
    (got,) = doc["interventions"]
    ref = intervene(load_model(_ckpt(folder, arch)), load_image(image_path), mode=mode, **direct)
    assert got["mode"] == mode and got["arch"] == arch
    assert got["blocks"] == list(ref.blocks)
    assert got["target"] == ref.target and got["target_name"] == ref.target_name
    assert got["top1_ref"] == ref.top1_ref and got["top1"] == ref.top1
    assert got["flipped"] == ref.flipped
    for key in ("prob_ref", "prob", "prob_change", "kl", "cam_spearman"):
        want = getattr(ref, key)
        if math.isnan(want):  # a flat reference map: JSON has no NaN, so null
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    assert got["cam_block"] == ref.cam_block
    assert got["simam_lambda"] == (pytest.approx(ref.simam_lambda) if ref.simam_lambda
                                   else None)
    if direct.get("per_block"):
        assert set(got["per_block"]) == set(ref.per_block)
        for block, values in ref.per_block.items():
            assert got["per_block"][block]["top1"] == values["top1"]
            assert got["per_block"][block]["prob"] == pytest.approx(values["prob"], rel=1e-9)
            assert got["per_block"][block]["kl"] == pytest.approx(values["kl"], rel=1e-9,
                                                                  abs=1e-15)
            assert got["per_block_change"][block] == pytest.approx(
                values["prob"] - ref.prob_ref, rel=1e-9, abs=1e-15)
    else:
        assert got["per_block"] is None
    assert doc["checkpoint"] == f"file/{arch}.safetensors" and doc["dpi"] == 40
    assert len(doc["image_sha256"]) == 64
    # the figure: 11 inches wide, one intervention row, at --dpi
    width, height = image_size((out / "intervention.png").read_bytes())
    assert width == round(WIDTH * 40)
    assert height == pytest.approx((TOP + ROW_H) * 40, abs=2)
    # the summary line says what the JSON says
    line = stdout.splitlines()[0]
    assert f"{ref.prob_ref:.4f} -> {ref.prob:.4f}" in line
    assert ("flipped" if ref.flipped else "kept") in line


def test_default_checkpoint_is_the_demo_simam_model(folder, image_path, tmp_path,
                                                    capsys) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, str(image_path), "--mode", "identity", "--blocks", "layer1.0",
                        "--out", str(out), "--dpi", "30")
    assert code == 0, err
    doc = json.loads((out / "intervention.json").read_text(encoding="utf-8"))
    assert doc["checkpoint"] == "demo/simam_resnet50"
    (got,) = doc["interventions"]
    ref = intervene(load_model(_ckpt(folder, "simam_resnet50")), load_image(image_path),
                    mode="identity", blocks=["layer1.0"])
    assert got["prob"] == pytest.approx(ref.prob, rel=1e-9)
    assert got["target_name"] in CLASSES


def _assert_one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(("arch", "argv", "needle"), [
    ("simam_resnet50", ["--mode", "sideways"], "invalid choice: 'sideways'"),
    ("se_resnet50", ["--mode", "exact"], "mode 'exact' does not apply to SE"),
    ("simam_resnet50", ["--mode", "constant", "--blocks", "layer9.1"],
     "unknown block 'layer9.1'"),
    ("simam_resnet50", ["--mode", "constant", "--blocks", "layer5"], "unknown block 'layer5'"),
    ("resnet50", ["--mode", "identity"], "no attention module to change"),
    ("resnet50", ["--mode", "identity", "--blocks", "layer2"],
     "this model has no attention module to change"),
    ("simam_resnet50", ["--mode", "constant", "--cam-block", "fc"], "unknown block 'fc'"),
    ("simam_resnet50", ["--mode", "constant", "--lambda", "-1"], "--lambda must be positive"),
    ("simam_resnet50", ["--mode", "constant", "--target", "unicorn"], "unknown class"),
    ("simam_resnet50", ["--mode", "constant", "--dpi", "5"], "--dpi must be between"),
    ("simam_resnet50", [], "the following arguments are required: --mode"),
])
def test_bad_arguments_are_one_line_and_write_nothing(folder, image_path, tmp_path, capsys,
                                                      arch, argv, needle) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, str(image_path), "--checkpoint", str(_ckpt(folder, arch)),
                             *argv, "--out", str(out))
    _assert_one_line_error(code, stdout, err, needle)
    assert not out.exists()


def test_bad_image_and_checkpoint_are_one_line(folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, str(tmp_path / "missing.png"), "--mode", "constant",
                             "--out", str(out))
    _assert_one_line_error(code, stdout, err, "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    code, stdout, err = _run(capsys, str(broken), "--mode", "constant", "--out", str(out))
    _assert_one_line_error(code, stdout, err, "error: ")
    code, stdout, err = _run(capsys, str(broken), "--checkpoint", "nowhere/none",
                             "--mode", "constant", "--out", str(out))
    _assert_one_line_error(code, stdout, err, "error: ")  # the image is read first
    noise_image(1).save(tmp_path / "ok.png")
    code, stdout, err = _run(capsys, str(tmp_path / "ok.png"), "--checkpoint", "nowhere/none",
                             "--mode", "constant", "--out", str(out))
    _assert_one_line_error(code, stdout, err, "unknown checkpoint 'nowhere/none'")
    assert not out.exists()


def test_stage_names_expand_to_their_attention_blocks() -> None:
    simam = tiny_model("simam_resnet50")
    assert cli._expand_blocks(None, simam) is None
    assert cli._expand_blocks(["layer4", "layer1.2"], simam) == [
        "layer4.0", "layer4.1", "layer4.2", "layer1.2"]
    plain = tiny_model("resnet50")
    assert cli._expand_blocks(["layer1"], plain) == [b for b in BLOCKS if b.startswith("layer1")]
    assert cli._expand_blocks(["layer7"], simam) == ["layer7"]  # intervene() refuses it
