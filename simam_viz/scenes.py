"""Synthetic scenes with one labelled object and its exact mask, deterministic by seed.

Offline machines cannot get ImageNet, so the demo models learn from scenes built here: an
emoji object (Noto Color Emoji, OFL, rendered by Pillow at its only bitmap size, 109) pasted with
random scale (20-80% of the side), rotation, flip, colour jitter and partial occlusion onto
random crops of scikit-image's bundled photographs or procedural textures, sometimes with
smaller distractor objects of other classes. The mask is the pasted glyph's alpha minus the
occluded part, which is what localization metrics (pointing game, energy in mask) need.

Every sample is a pure function of ``(seed, split, index)``, so a sample can be regenerated
alone (tests, evaluation subsets) and a dataset is reproducible byte for byte. The font is only
needed here, at generation time; the app never renders emoji.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from simam_viz.errors import SimamVizError

__all__ = ["CLASSES", "FONT_PATH", "Scene", "SceneGenerator", "gallery_examples",
           "generate_dataset"]

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
GENERATOR_VERSION = 2
SPLITS = {"train": 0, "val": 1, "test": 2, "gallery": 3}

CLASSES: dict[str, tuple[str, ...]] = {
    "dog": ("\U0001f415", "\U0001f436", "\U0001f429"),
    "cat": ("\U0001f408", "\U0001f431"),
    "car": ("\U0001f697", "\U0001f699", "\U0001f695"),
    "bicycle": ("\U0001f6b2",),
    "apple": ("\U0001f34e", "\U0001f34f"),
    "banana": ("\U0001f34c",),
    "bird": ("\U0001f426", "\U0001f424"),
    "fish": ("\U0001f41f", "\U0001f420"),
    "tree": ("\U0001f333", "\U0001f332"),
    "house": ("\U0001f3e0", "\U0001f3e1"),
    "guitar": ("\U0001f3b8",),
    "ball": ("\u26bd", "\U0001f3c0"),
}
CLASS_NAMES = tuple(CLASSES)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "page")


@dataclass
class Scene:
    """One generated sample. ``background`` is the picture before the object was pasted."""

    image: Image.Image
    mask: np.ndarray  # HxW bool: visible pixels of the labelled object
    label: int
    class_name: str
    glyph: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 of the pasted object
    background: Image.Image
    object_layer: Image.Image  # full-size RGBA of the object alone, as pasted
    occluded: bool
    scale: float  # the object's longest side before rotation, as a share of the image side


@lru_cache(maxsize=1)
def _font(path: str) -> ImageFont.FreeTypeFont:
    if not Path(path).is_file():
        raise SimamVizError(
            f"emoji font not found at {path}: apt-get install fonts-noto-color-emoji"
        )
    return ImageFont.truetype(path, 109)


@lru_cache(maxsize=64)
def _glyph(char: str, font_path: str) -> Image.Image:
    """The glyph as a tightly cropped RGBA image (rendered once per process)."""
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=_font(font_path), embedded_color=True)
    return canvas.crop(canvas.getbbox())


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled photographs as RGB uint8 (no network access)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float64) / max(arr.max(), 1) * 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(arr[..., :3]))
    return tuple(out)


def _photo_crop(rng: np.random.Generator, size: int) -> Image.Image:
    photo = _photos()[int(rng.integers(len(PHOTOS)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size),
                                                                     Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(crop, rng, 0.35)


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    """Procedural backgrounds: noise, gradients, stripes, checkerboards, blobs."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = int(rng.integers(5))
    if kind == 0:
        t = rng.random((size, size))
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) % 1.0
    elif kind == 2:
        freq, angle = rng.uniform(3, 20), rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == 3:
        cells = int(rng.integers(2, 12))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(float)
    else:
        t = np.zeros((size, size))
        for _ in range(int(rng.integers(3, 10))):
            cx, cy, r = rng.random(), rng.random(), rng.uniform(0.05, 0.3)
            t += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        t = t / max(t.max(), 1e-6)
    arr = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    arr = arr + rng.normal(0, rng.uniform(0, 20), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jitter(im: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhancer(im).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    return im


def _place(glyph: Image.Image, rng: np.random.Generator, side: int, size: int,
           jitter: float) -> tuple[Image.Image, tuple[int, int]]:
    """Scale (longest side = ``side``), rotate, flip and colour-jitter a glyph; pick a spot."""
    scale = side / max(glyph.size)
    obj = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                       Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC,
                     expand=True)
    if obj.width > size or obj.height > size:
        obj.thumbnail((size, size), Image.Resampling.BICUBIC)
    rgb, alpha = obj.convert("RGB"), obj.getchannel("A")
    obj = _jitter(rgb, rng, jitter)
    obj.putalpha(alpha)
    x = int(rng.integers(0, size - obj.width + 1))
    y = int(rng.integers(0, size - obj.height + 1))
    return obj, (x, y)


class SceneGenerator:
    """Deterministic scenes: ``sample(split, index)`` depends only on the seed and arguments."""

    def __init__(
        self,
        seed: int = 0,
        size: int = 160,
        *,
        font_path: str | Path = FONT_PATH,
        distractor_prob: float = 0.4,
        occlusion_prob: float = 0.3,
        photo_prob: float = 0.5,
    ) -> None:
        self.seed, self.size = int(seed), int(size)
        self.font_path = str(font_path)
        self.distractor_prob = distractor_prob
        self.occlusion_prob = occlusion_prob
        self.photo_prob = photo_prob
        _font(self.font_path)  # fail early, with the install hint

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def label_of(self, split: str, index: int) -> int:
        """Balanced labels: every block of ``len(classes)`` indices holds each class once."""
        block, pos = divmod(index, len(CLASS_NAMES))
        rng = np.random.default_rng([self.seed, SPLITS[split], block, 7919])
        return int(rng.permutation(len(CLASS_NAMES))[pos])

    def sample(self, split: str, index: int) -> Scene:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        rng = np.random.default_rng([self.seed, SPLITS[split], int(index)])
        size = self.size
        label = self.label_of(split, index)
        name = CLASS_NAMES[label]
        glyph = CLASSES[name][int(rng.integers(len(CLASSES[name])))]
        canvas = (_photo_crop(rng, size) if rng.random() < self.photo_prob
                  else _texture(rng, size)).convert("RGBA")
        side = int(rng.uniform(0.2, 0.8) * size)
        if rng.random() < self.distractor_prob:
            # one distractor, clearly smaller than the object, so the label stays unambiguous
            other = CLASS_NAMES[(label + int(rng.integers(1, len(CLASS_NAMES))))
                                % len(CLASS_NAMES)]
            char = CLASSES[other][int(rng.integers(len(CLASSES[other])))]
            small = max(8, int(side * rng.uniform(0.3, 0.55)))
            obj, pos = _place(_glyph(char, self.font_path), rng, small, size, 0.3)
            canvas.alpha_composite(obj, pos)
        background = canvas.convert("RGB")
        obj, (x, y) = _place(_glyph(glyph, self.font_path), rng, side, size, 0.3)
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        layer.alpha_composite(obj, (x, y))
        canvas.alpha_composite(layer)
        mask = np.asarray(layer.getchannel("A")) > 127
        occluded = bool(rng.random() < self.occlusion_prob)
        if occluded:
            ow = max(2, int(obj.width * rng.uniform(0.2, 0.5)))
            oh = max(2, int(obj.height * rng.uniform(0.2, 0.5)))
            ox = x + int(rng.integers(0, obj.width - ow + 1))
            oy = y + int(rng.integers(0, obj.height - oh + 1))
            patch = _texture(rng, max(ow, oh)).crop((0, 0, ow, oh))
            canvas.paste(patch, (ox, oy))
            mask[oy : oy + oh, ox : ox + ow] = False
        return Scene(canvas.convert("RGB"), mask, label, name, glyph,
                     (x, y, x + obj.width, y + obj.height), background, layer, occluded,
                     side / size)

    def meta(self, counts: dict[str, int]) -> dict:
        return {
            "generator": "simam_viz.scenes",
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "size": self.size,
            "counts": counts,
            "classes": [
                {"name": n, "glyphs": [f"U+{ord(c):04X}" for c in CLASSES[n]]}
                for n in CLASS_NAMES
            ],
            "font": "Noto Color Emoji (SIL Open Font License 1.1)",
            "backgrounds": "scikit-image sample photographs + procedural textures",
        }


def _png_bytes(im: Image.Image, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _write_one(args: tuple[SceneGenerator, Path, str, int]) -> int:
    gen, out_dir, split, index = args
    scene = gen.sample(split, index)
    image_path = out_dir / split / scene.class_name / f"{index:06d}.png"
    mask_path = out_dir / "masks" / split / scene.class_name / f"{index:06d}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    image_path.write_bytes(_png_bytes(scene.image))
    mask_path.write_bytes(_png_bytes(Image.fromarray(scene.mask).convert("1")))
    return zlib.crc32(image_path.read_bytes())


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    size: int = 160,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write an ImageFolder tree (``split/class/NNNNNN.png``), masks and ``meta.json``."""
    from tqdm import tqdm

    counts = counts or {"train": 2400, "val": 360, "test": 600}
    out = Path(out_dir)
    gen = SceneGenerator(seed, size)
    jobs = [(gen, out, split, i) for split, n in counts.items() for i in range(n)]
    bar = tqdm(total=len(jobs), unit="img", disable=not progress, desc="scenes")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=32):
                bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar.update()
    bar.close()
    (out / "meta.json").write_text(json.dumps(gen.meta(counts), indent=2) + "\n")
    return out


def gallery_examples(out_dir: str | Path, *, seed: int = 0, n_scenes: int = 4,
                     size: int = 224) -> list[Path]:
    """A few scenes plus a few scikit-image photographs, small PNGs for the app's gallery."""
    import skimage.data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = SceneGenerator(seed, size)
    paths = []
    for i in range(n_scenes):
        scene = gen.sample("gallery", i)
        path = out / f"scene_{scene.class_name}_{i}.png"
        path.write_bytes(_png_bytes(scene.image, optimize=True))
        paths.append(path)
    for name in ("chelsea", "coffee", "astronaut"):
        im = Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3])
        im.thumbnail((size * 2, size * 2))
        path = out / f"photo_{name}.jpg"
        im.save(path, "JPEG", quality=85)
        paths.append(path)
    return paths
