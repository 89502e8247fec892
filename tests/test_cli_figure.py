"""The batch CLI: golden PNG sizes, manifest fields, bad images skipped and reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import image_size, save_tiny_checkpoints
from PIL import Image

from simam_viz import cli
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.rendering.figures import CBAR, LABEL, PANEL, TOP

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """Tiny demo models of their own classes, resized to 72 then cropped to 64."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("ckpts"), classes=CLASSES,
                                 preprocessing=Preprocessing(resize=72, crop=64),
                                 dilate_last=False, provenance={"test_top1": 33.3})


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (folder / "notes.txt").write_text("ignored")
    return folder


def _size(path: Path) -> tuple[int, int]:
    return image_size(path.read_bytes())


def test_figure_batch(demo_dir: Path, images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(demo_dir))
    out = tmp_path / "out"
    code = cli.main(["figure", str(images), "--out", str(out), "--dpi", "40", "--npz",
                     "--target", "dog", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # something was skipped
    assert "broken.png" in captured.err and captured.err.count("error:") == 1
    names = sorted(p.name for p in out.iterdir())
    for stem in ("a", "b"):
        assert f"{stem}_figure1.png" in names and f"{stem}_figure1.json" in names
        assert f"{stem}_figure6_SimAM-ResNet-50-demo.png" in names
        assert f"{stem}_channels_SimAM-ResNet-50-demo.png" in names
        assert f"{stem}_depth_ResNet-50-demo.png" in names
    assert not any(n.startswith("broken") for n in names)
    h = round((PANEL + LABEL + TOP) * 40)
    assert _size(out / "a_figure1.png") == (round(4 * PANEL * 40), h)
    assert _size(out / "a_figure6_SimAM-ResNet-50-demo.png") == (round((4 * PANEL + CBAR) * 40), h)
    manifest = json.loads((out / "a_figure1.json").read_text())
    assert len(manifest["image_sha256"]) == 64 and manifest["block"] == "layer4.2"
    assert manifest["method"] == "gradcam" and manifest["request"]["dpi"] == 40
    assert [m["target_name"] for m in manifest["models"]] == ["dog"] * 3
    assert all(len(m["checkpoint_sha256"]) == 64 for m in manifest["models"])
    simam = next(m for m in manifest["models"] if m["arch"] == "simam_resnet50")
    assert simam["lambda"] == 0.1 and "torch" in manifest["versions"]
    arrays = np.load(out / "a_SimAM-ResNet-50-demo.npz")
    assert arrays["cam__layer4.2__attention"].shape == (64, 64)
    assert arrays["attention_weights__layer4.2__full"].shape[0] == 64  # layer4 conv2: 512 / 8


def test_figure_usage_errors(demo_dir: Path, images: Path, tmp_path: Path, monkeypatch,
                             capsys) -> None:
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(demo_dir))
    for extra, message in [
        (["--target", "7"], "out of range"),
        (["--target", "zebra"], "unknown class"),
        (["--block", "layer9.0"], "unknown block"),
        (["--dpi", "5"], "--dpi"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
         "device"),
        (["--checkpoints", "nope"], "unknown checkpoint"),
    ]:
        code = cli.main(["figure", str(images), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and message in err, (extra, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_predict(demo_dir: Path, images: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(demo_dir))
    code = cli.main(["predict", str(images / "a.png"), str(images / "broken.png"), "--top", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "broken.png" in err
    lines = [x for x in out.splitlines() if x.startswith("  ")]
    assert len(lines) == 3 and all(x.count("%") == 2 for x in lines)


@pytest.mark.parametrize("command", ["figure", "predict"])
def test_one_bad_input_alone_is_a_usage_error(command: str, demo_dir: Path, images: Path,
                                              tmp_path: Path, monkeypatch, capsys) -> None:
    """Nothing else to do: exit 2 with one `error:` line (a batch with some bad files: 1)."""
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(demo_dir))
    args = [command, str(images / "broken.png"), "--device", "cpu"]
    if command == "figure":
        args += ["--out", str(tmp_path / "out")]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.png" in lines[0]
    assert "(skipped)" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_exports_follow_each_models_attention_kind(tmp_path: Path) -> None:
    """Figure 6 for every model with attention, with its kind's panels and the screen's
    pixels; a channel figure for every model with channel weights; the attention-shapes
    composite with its numbers in its JSON; Figure 1 at the last block, as on screen."""
    from helpers import noise_image, tiny_model

    from simam_viz.rendering import panels
    from simam_viz.rendering.export import (
        ExportRequest,
        analyze_all,
        render,
        slug,
        write_exports,
    )

    archs = ("resnet50", "se_resnet50", "eca_resnet50", "cbam_resnet50", "simam_resnet50")
    models = [tiny_model(arch, seed, class_names=CLASSES) for seed, arch in enumerate(archs)]
    request = ExportRequest(figures=("1", "6", "channels", "shapes"), block="layer3.1", dpi=40)
    results = analyze_all(models, noise_image(), request)
    assert all(r.blocks == ("layer3.1", "layer4.2") for r in results)
    figs = render(results, request)
    names = {r.kind.label: slug(r.model_name) for r in results}
    attention = [label for label in names if label != "ResNet-50"]
    assert set(figs) == ({"figure1", "shapes_layer3.1"}
                         | {f"figure6_{names[a]}" for a in attention}
                         | {f"channels_{names[a]}" for a in attention})
    blend = {"colormap": request.colormap, "alpha": request.alpha}
    for r in results[1:]:
        shown = panels.figure6_panels(r.kind)
        axes = [ax for ax in figs[f"figure6_{names[r.kind.label]}"].axes if ax.get_images()]
        assert [ax.get_title() for ax in axes] == [p.title for p in shown]
        for ax, panel in zip(axes, shown, strict=True):
            np.testing.assert_array_equal(np.asarray(ax.get_images()[0].get_array()),
                                          panels.figure6_panel(r, "layer3.1", panel, blend))
    assert len(panels.figure6_panels(results[3].kind)) == 3  # CBAM: before, after, gate
    assert len(panels.figure6_panels(results[1].kind)) == 2  # SE: before, after
    # 3-D weights: top channel maps above the bars; a channel gate: bars alone
    assert len([ax for ax in figs[f"channels_{names['SimAM']}"].axes if ax.get_images()]) > 0
    se_axes = figs[f"channels_{names['SE']}"].axes
    assert len(se_axes) == 1 and not se_axes[0].get_images()
    bars = [p.get_height() for p in se_axes[0].patches]
    np.testing.assert_allclose(bars, np.sort(results[1].channel_weights("layer3.1"))[::-1])

    written = write_exports(results, models, request, tmp_path, "x", "0" * 64)
    assert (tmp_path / "x_shapes_layer3.1.png") in written
    report = json.loads((tmp_path / "x_shapes_layer3.1.json").read_text())
    assert report["figure"] == "shapes_layer3.1" and report["image_sha256"] == "0" * 64
    assert sorted(report["shapes"]["models"]) == sorted(r.model_name for r in results[1:])
    assert [m["attention"] for m in report["models"]] == list(names)
