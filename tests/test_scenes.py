"""The scene generator: deterministic bytes, masks equal to the pasted glyph, balance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from simam_viz.scenes import CLASS_NAMES, FONT_PATH, SceneGenerator, generate_dataset

pytestmark = pytest.mark.skipif(
    not FONT_PATH.is_file(), reason="needs fonts-noto-color-emoji (make system-deps)"
)


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = SceneGenerator(3, 96), SceneGenerator(3, 96)
    for i in range(6):
        sa, sb = a.sample("train", i), b.sample("train", i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert np.array_equal(sa.mask, sb.mask) and sa.label == sb.label
    other = SceneGenerator(4, 96).sample("train", 0)
    assert other.image.tobytes() != a.sample("train", 0).image.tobytes()
    assert a.sample("val", 0).image.tobytes() != a.sample("train", 0).image.tobytes()


def test_mask_is_the_pasted_glyph_alpha() -> None:
    gen = SceneGenerator(1, 128, distractor_prob=0.0, occlusion_prob=0.0)
    for i in range(8):
        scene = gen.sample("test", i)
        alpha = np.asarray(scene.object_layer.getchannel("A"))
        np.testing.assert_array_equal(scene.mask, alpha > 127)
        recomposed = scene.background.convert("RGBA")
        recomposed.alpha_composite(scene.object_layer)
        assert recomposed.convert("RGB").tobytes() == scene.image.tobytes()
        # outside the object the picture is the background untouched
        outside = alpha == 0
        np.testing.assert_array_equal(np.asarray(scene.image)[outside],
                                      np.asarray(scene.background)[outside])


def test_occlusion_removes_pixels_from_the_mask() -> None:
    gen = SceneGenerator(2, 128, distractor_prob=0.0, occlusion_prob=1.0)
    scene = gen.sample("train", 5)
    alpha = np.asarray(scene.object_layer.getchannel("A")) > 127
    assert scene.occluded and scene.mask.sum() < alpha.sum()
    assert not (scene.mask & ~alpha).any()


def test_balanced_classes_and_object_sizes() -> None:
    gen = SceneGenerator(0, 160)
    n = len(CLASS_NAMES) * 10
    labels = [gen.label_of("train", i) for i in range(n)]
    assert np.bincount(labels).tolist() == [10] * len(CLASS_NAMES)
    scales = [gen.sample("train", i).scale for i in range(96)]
    assert 0.2 <= min(scales) < 0.3 and 0.7 < max(scales) <= 0.8


def test_generate_dataset_is_an_image_folder(tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    out = generate_dataset(tmp_path / "ds", seed=0, counts={"train": 24, "test": 12}, size=64,
                           progress=False)
    folder = ImageFolder(str(out / "train"))
    assert len(folder) == 24 and folder.classes == sorted(CLASS_NAMES)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["counts"] == {"train": 24, "test": 12}
    assert meta["classes"][0]["glyphs"][0].startswith("U+")
    path, _ = folder.samples[0]
    mask_path = out / "masks" / "train" / path.split("/")[-2] / path.split("/")[-1]
    mask = np.asarray(Image.open(mask_path))
    scene = SceneGenerator(0, 64).sample("train", int(path.split("/")[-1][:6]))
    np.testing.assert_array_equal(mask, scene.mask)
