"""The shipped demo checkpoints: load, hashes, accuracy and localization on fresh scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DEMO_ARCHS, DEMO_DIR

from simam_viz import load_model
from simam_viz.engine.analysis import analyze
from simam_viz.studies.evaluation import _mask_in_frame
from simam_viz.studies.localization import pointing_game
from simam_viz.studies.scenes import CLASS_NAMES, FONT_PATH, SceneGenerator
from simam_viz.weights.checkpoints import file_sha256


def _sums() -> dict[str, str]:
    lines = (DEMO_DIR / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_shipped_checkpoint_loads_and_matches_its_hash(arch: str) -> None:
    path = DEMO_DIR / f"{arch}.safetensors"
    assert path.stat().st_size <= 8 * 1024 * 1024
    model = load_model(path)
    info = model.simam_viz
    assert info.arch == arch and info.layout == "simam_viz"
    assert info.sha256 == _sums()[path.name] == file_sha256(path)
    assert info.class_names == sorted(CLASS_NAMES)
    assert info.extra["provenance"]["class_glyphs"]["dog"][0].startswith("U+")


@pytest.fixture(scope="module")
def fresh_scenes():
    if not FONT_PATH.is_file():
        pytest.skip("needs fonts-noto-color-emoji (make system-deps)")
    gen = SceneGenerator(seed=20261124, size=128)  # not the training seed: unseen scenes
    classes = sorted(CLASS_NAMES)
    scenes = [gen.sample("test", i) for i in range(200)]
    return [(s.image, classes.index(s.class_name), s.mask) for s in scenes]


@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_accuracy_on_200_fresh_scenes(arch: str, fresh_scenes) -> None:
    model = load_model(DEMO_DIR / f"{arch}.safetensors")
    prep = model.simam_viz.preprocessing
    x = torch.cat([prep(image) for image, _, _ in fresh_scenes])
    labels = torch.tensor([label for _, label, _ in fresh_scenes])
    with torch.inference_mode():
        pred = torch.cat([model(chunk).argmax(1) for chunk in x.split(50)])
    accuracy = (pred == labels).float().mean().item() * 100
    assert accuracy >= 95.0, f"{arch}: {accuracy:.1f}% on 200 fresh scenes"


@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_grad_cam_points_at_the_object_in_fresh_scenes(arch: str, fresh_scenes) -> None:
    """The issue's localization bar, guarded: the last block's Grad-CAM maximum for the true
    class lies on the visible object (strict pointing game, mask brought to the input frame)."""
    model = load_model(DEMO_DIR / f"{arch}.safetensors")
    prep = model.simam_viz.preprocessing
    hits = [
        pointing_game(analyze(model, image, target=label, blocks=("layer4.2",)).cam("layer4.2"),
                      _mask_in_frame(mask, prep))
        for image, label, mask in fresh_scenes[:100]
    ]
    # 80% is the bar on the 600-scene test split; 100 scenes carry about +-4 points of noise
    assert np.mean(hits) >= 0.75, f"{arch}: pointing {100 * np.mean(hits):.0f}% on 100 scenes"
