"""``simam-viz explain``: the JSON is explain_neuron's, the PNGs are written, errors are one line.

Runs the shipped demo SimAM model (the command's default) on a bundled example scene, like
tests/test_neuron.py, and compares against :func:`explain_neuron` called directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import CHECKPOINTS_DIR, DEFAULT_EXAMPLE, DEMO_DIR, image_size

from simam_viz import cli
from simam_viz.engine.neuron import explain_neuron
from simam_viz.images import load_image
from simam_viz.rendering.neuron_figures import HEADER, PANEL_H, PANEL_W
from simam_viz.weights.checkpoints import load_model

DEMO = DEMO_DIR
IMAGE = DEFAULT_EXAMPLE


@pytest.fixture(autouse=True)
def _shipped_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default checkpoint is the demo SimAM model of the repository's checkpoints/."""
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(CHECKPOINTS_DIR))
    monkeypatch.delenv("SIMAM_VIZ_DEMO_MODELS", raising=False)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model(DEMO / "simam_resnet50.safetensors")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["explain", *argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("y", "x", "lam"), [(6, 10, None), (9, 9, 0.5)])
def test_json_is_explain_neuron(model, capsys, y: int, x: int, lam: float | None) -> None:
    argv = [str(IMAGE), "--block", "layer4.2", "--channel", "32", "--y", str(y), "--x", str(x)]
    if lam is not None:
        argv += ["--lambda", str(lam)]
    code, out, err = _run(capsys, *argv)
    assert code == 0 and err == ""
    got = json.loads(out)  # stdout is exactly one JSON document
    direct = explain_neuron(model, load_image(IMAGE), block="layer4.2", channel=32, y=y, x=x,
                            simam_lambda=lam)
    assert set(got) == set(direct) - {"values", "weights"}
    for key, value in direct.items():
        if key in ("values", "weights"):
            continue
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        elif isinstance(value, tuple):
            assert got[key] == list(value), key
        else:
            assert got[key] == value, key
    assert got["lambda"] == (0.1 if lam is None else lam)
    assert abs(got["module_weight"] - got["weight"]) < 1e-6
    assert out.startswith('{\n  "block": "layer4.2",')  # indent 2


def test_object_and_background_neurons(capsys) -> None:
    """The numbers the issue reports for scene_dog_3, layer4.2, channel 32."""
    base = [str(IMAGE), "--channel", "32"]
    _, out, _ = _run(capsys, *base, "--y", "6", "--x", "10")
    edge = json.loads(out)
    assert edge["t"] == pytest.approx(-2.7311, abs=1e-3)
    assert edge["energy"] == pytest.approx(0.3946, abs=1e-3)
    assert edge["energy_exact"] == pytest.approx(0.3676, abs=1e-3)
    assert edge["weight"] == pytest.approx(0.9265, abs=1e-3) and edge["weight_rank"] == 1
    _, out, _ = _run(capsys, *base, "--y", "9", "--x", "9")
    plain = json.loads(out)
    assert plain["t"] == pytest.approx(-0.4290, abs=1e-3)
    assert plain["energy"] == pytest.approx(1.999, abs=1e-3)
    assert plain["weight"] == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-3)  # the floor
    assert plain["weight_rank"] == plain["M"] == 121


def test_out_writes_the_panels(tmp_path: Path, capsys) -> None:
    out = tmp_path / "panels"
    dpi = 40
    code, stdout, err = _run(capsys, str(IMAGE), "--channel", "32", "--y", "6", "--x", "10",
                             "--out", str(out), "--dpi", str(dpi))
    assert code == 0
    stem = "scene_dog_3_layer4.2_c32_y6_x10"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{stem}.json"] + [f"{stem}_{n}.png"
                                               for n in ("map", "line", "curve", "explain")])
    assert err.count("wrote ") == 5 and "wrote" not in stdout
    single = (int(PANEL_W * dpi + 1e-8), int(PANEL_H * dpi + 1e-8))
    for name in ("map", "line", "curve"):
        assert image_size((out / f"{stem}_{name}.png").read_bytes()) == single
    assert image_size((out / f"{stem}_explain.png").read_bytes()) == (
        int(3 * PANEL_W * dpi + 1e-8), int((PANEL_H + HEADER) * dpi + 1e-8))
    manifest = json.loads((out / f"{stem}.json").read_text())
    assert manifest["explanation"] == json.loads(stdout)
    assert manifest["checkpoint"] == "demo/simam_resnet50" and manifest["dpi"] == dpi
    assert len(manifest["image_sha256"]) == 64 and "torch" in manifest["versions"]


@pytest.mark.parametrize(("argv", "words"), [
    (["--block", "layer9.9"], "unknown block"),
    (["--channel", "128"], "channel 128 out of range"),
    (["--y", "11"], "y 11 out of range"),
    (["--x", "-1"], "x -1 out of range"),
    (["--checkpoint", "demo/resnet50"], "needs a SimAM model"),
    (["--checkpoint", "demo/nope"], "unknown checkpoint"),
    (["--lambda", "0"], "--lambda must be positive"),
    (["--image", "missing.png"], "no such image file"),
])
def test_bad_input_is_one_line_and_status_2(capsys, argv: list[str], words: str) -> None:
    args = {"--image": str(IMAGE), "--block": "layer4.2", "--channel": "0", "--y": "0",
            "--x": "0"}
    args.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    image = args.pop("--image")
    code, out, err = _run(capsys, image, *[v for kv in args.items() for v in kv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err


def test_missing_arguments_are_a_usage_error(capsys) -> None:
    code, out, err = _run(capsys, str(IMAGE), "--channel", "1", "--y", "1")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--x" in err
