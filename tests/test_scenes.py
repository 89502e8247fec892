"""The scene generator: deterministic bytes, masks equal to the pasted glyph, balance, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simam_viz.errors import SimamVizError
from simam_viz.studies.scenes import (
    CLASS_NAMES,
    CLASSES,
    FONT_PATH,
    SceneGenerator,
    _glyph,
    gallery_examples,
    generate_dataset,
)

needs_font = pytest.mark.skipif(
    not FONT_PATH.is_file(),
    reason=f"needs {FONT_PATH}: apt-get install fonts-noto-color-emoji (make system-deps)",
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_missing_font_is_a_one_line_error_with_the_install_hint(tmp_path) -> None:
    with pytest.raises(SimamVizError) as err:
        SceneGenerator(0, 64, font_path=tmp_path / "nope.ttf")
    message = str(err.value)
    assert "apt-get install fonts-noto-color-emoji" in message and "\n" not in message
    not_a_font = tmp_path / "bad.ttf"
    not_a_font.write_bytes(b"not a font")
    with pytest.raises(SimamVizError, match="fonts-noto-color-emoji"):
        SceneGenerator(0, 64, font_path=not_a_font)


@needs_font
def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = SceneGenerator(3, 96), SceneGenerator(3, 96, font_path=None)
    for i in range(6):
        sa, sb = a.sample("train", i), b.sample("train", i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.mask.dtype == np.bool_ and sa.mask.shape == (96, 96)
        assert np.array_equal(sa.mask, sb.mask) and sa.label == sb.label
        assert sa.glyph == sb.glyph and sa.bbox == sb.bbox
    other = SceneGenerator(4, 96).sample("train", 0)
    assert other.image.tobytes() != a.sample("train", 0).image.tobytes()
    assert a.sample("val", 0).image.tobytes() != a.sample("train", 0).image.tobytes()


@needs_font
def test_a_sample_does_not_depend_on_what_was_generated_before() -> None:
    fresh = SceneGenerator(7, 64).sample("test", 5)
    busy = SceneGenerator(7, 64)
    for i in (9, 0, 3):
        busy.sample("train", i)
    again = busy.sample("test", 5)
    assert again.image.tobytes() == fresh.image.tobytes()
    assert np.array_equal(again.mask, fresh.mask)


@needs_font
def test_every_glyph_renders_in_colour_and_uncropped() -> None:
    for name, glyphs in CLASSES.items():
        assert len(glyphs) >= 1 and len(set(glyphs)) == len(glyphs), name
        for char in glyphs:
            im = _glyph(char, str(FONT_PATH))
            rgba = np.asarray(im)
            colours = np.unique(rgba[rgba[..., 3] > 0][:, :3], axis=0)
            # a missing glyph would come out as a one-colour box or nothing at all
            assert len(colours) > 20, f"{name} U+{ord(char):04X}"
            assert 60 < max(im.size) < 150, f"{name} U+{ord(char):04X}: {im.size}"


@needs_font
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
        # the object, and so the mask, lies inside the recorded box
        x0, y0, x1, y1 = scene.bbox
        ys, xs = np.nonzero(alpha)
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert scene.glyph in CLASSES[scene.class_name] and scene.distractor is None


@needs_font
def test_occlusion_removes_pixels_from_the_mask() -> None:
    gen = SceneGenerator(2, 128, distractor_prob=0.0, occlusion_prob=1.0)
    for i in range(4):
        scene = gen.sample("train", i)
        alpha = np.asarray(scene.object_layer.getchannel("A")) > 127
        assert scene.occluded and scene.mask.sum() < alpha.sum()
        assert not (scene.mask & ~alpha).any()
        # where the mask still says "object", the picture is the unoccluded composite
        composite = scene.background.convert("RGBA")
        composite.alpha_composite(scene.object_layer)
        np.testing.assert_array_equal(np.asarray(scene.image)[scene.mask],
                                      np.asarray(composite.convert("RGB"))[scene.mask])


@needs_font
def test_distractor_is_another_class_and_not_in_the_mask() -> None:
    gen = SceneGenerator(5, 128, distractor_prob=1.0, occlusion_prob=0.0)
    plain = SceneGenerator(5, 128, distractor_prob=0.0, occlusion_prob=0.0)
    for i in range(6):
        scene = gen.sample("val", i)
        assert scene.distractor is not None and scene.distractor_bbox is not None
        assert scene.distractor not in CLASSES[scene.class_name]
        np.testing.assert_array_equal(
            scene.mask, np.asarray(scene.object_layer.getchannel("A")) > 127)
        # the distractor is part of the background the object was pasted on
        x0, y0, x1, y1 = scene.distractor_bbox
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        assert plain.sample("val", i).label == scene.label


@needs_font
def test_balanced_classes_and_object_sizes() -> None:
    gen = SceneGenerator(0, 160, occlusion_prob=0.0)
    n = len(CLASS_NAMES) * 10
    labels = [gen.label_of("train", i) for i in range(n)]
    assert np.bincount(labels).tolist() == [10] * len(CLASS_NAMES)
    assert labels[: len(CLASS_NAMES)] != list(range(len(CLASS_NAMES)))  # shuffled per block
    scenes = [gen.sample("train", i) for i in range(96)]
    assert all(s.label == gen.label_of("train", i) for i, s in enumerate(scenes))
    assert all(CLASS_NAMES[s.label] == s.class_name for s in scenes)
    scales = np.array([s.scale for s in scenes])
    assert 0.2 <= scales.min() < 0.3 and 0.7 < scales.max() <= 0.8
    assert np.histogram(scales, bins=3, range=(0.2, 0.8))[0].min() >= 15  # spread, not bunched
    # the visible object's extent follows the requested scale (rotation changes it a little)
    for s in scenes:
        ys, xs = np.nonzero(s.mask)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert 0.75 * s.scale <= extent / 160 <= 1.3 * s.scale


@needs_font
def test_bad_arguments_are_user_errors() -> None:
    gen = SceneGenerator(0, 64)
    with pytest.raises(SimamVizError, match="unknown split"):
        gen.sample("training", 0)
    with pytest.raises(SimamVizError, match="index"):
        gen.sample("train", -1)
    with pytest.raises(SimamVizError, match="seed"):
        SceneGenerator(-1, 64)
    with pytest.raises(SimamVizError, match="distractor_prob"):
        SceneGenerator(0, 64, distractor_prob=1.5)


@needs_font
def test_generate_dataset_is_an_image_folder(tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    counts = {"train": 24, "test": 12}
    out = generate_dataset(tmp_path / "ds", seed=0, counts=counts, size=64, progress=False)
    folder = ImageFolder(str(out / "train"))
    assert len(folder) == 24 and folder.classes == sorted(CLASS_NAMES)
    assert ImageFolder(str(out / "test")).classes == folder.classes
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["size"] == 64 and meta["counts"] == counts
    assert meta["version"] >= 2 and meta["options"]["distractor_prob"] == 0.4
    dog = next(c for c in meta["classes"] if c["name"] == "dog")
    assert dog["glyphs"] == [f"U+{ord(c):04X}" for c in CLASSES["dog"]]
    for path, label in folder.samples[:6]:
        rel = Path(path).relative_to(out)
        image = Image.open(path)
        assert image.mode == "RGB" and image.size == (64, 64)
        mask_image = Image.open(out / "masks" / rel)
        assert mask_image.mode == "1"
        scene = SceneGenerator(0, 64).sample("train", int(rel.stem))
        assert folder.classes[label] == scene.class_name
        np.testing.assert_array_equal(np.asarray(image), np.asarray(scene.image))
        np.testing.assert_array_equal(np.asarray(mask_image), scene.mask)


@needs_font
def test_generate_dataset_bytes_do_not_depend_on_workers(tmp_path) -> None:
    counts = {"train": 24, "val": 12}
    one = generate_dataset(tmp_path / "one", seed=3, counts=counts, size=48, progress=False)
    two = generate_dataset(tmp_path / "two", seed=3, counts=counts, size=48, workers=2,
                           progress=False)
    a, b = _files(one), _files(two)
    assert len(a) == 2 * 36 and a == b
    assert (one / "meta.json").read_bytes() == (two / "meta.json").read_bytes()
    with pytest.raises(SimamVizError, match="at least"):
        generate_dataset(tmp_path / "tiny", counts={"train": 5}, size=48, progress=False)


@needs_font
def test_gallery_examples_are_small_pngs(tmp_path) -> None:
    paths = gallery_examples(tmp_path / "gallery", n=3, seed=0)
    assert len(paths) == 3 + 3
    names = [p.name for p in paths]
    assert any(n.startswith("photo_chelsea") for n in names)
    assert len({n.split("_")[1] for n in names if n.startswith("scene_")}) == 3  # 3 classes
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size < 100_000, p
        with Image.open(p) as im:
            assert im.format == "PNG" and max(im.size) <= 224
