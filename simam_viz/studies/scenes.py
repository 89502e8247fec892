"""Synthetic scenes with one labelled object and its exact mask, deterministic by seed.

Offline machines cannot get ImageNet, so the demo models learn from scenes built here: an
emoji object (Noto Color Emoji, OFL, rendered by Pillow at its only bitmap size, 109) pasted with
random scale (20-80% of the side), rotation, flip, colour jitter and partial occlusion onto
random crops of scikit-image's bundled photographs or procedural textures, sometimes with a
smaller distractor object of another class. The mask is the pasted glyph's alpha minus the
occluded part, which is what localization metrics (pointing game, energy in mask) need.

Every sample is a pure function of ``(seed, split, index)``, so a sample can be regenerated
alone (tests, evaluation subsets) and a dataset is reproducible byte for byte. The font is only
needed here, at generation time; the app never renders emoji.

The pixels of version 2 (``GENERATOR_VERSION``) are frozen: the demo checkpoints were trained
on them and their tests regenerate fresh scenes, so any change to what ``sample`` draws (new
glyphs, other ranges, another order of random draws) must bump the version.
"""

from __future__ import annotations

import io
import json
import logging
import os
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from simam_viz.errors import SimamVizError
from simam_viz.rendering.jsonsafe import to_json_safe

__all__ = ["CLASSES", "CLASS_NAMES", "FONT_PATH", "GENERATOR_VERSION", "PHOTOS", "Scene",
           "SceneGenerator", "gallery_examples", "generate_dataset"]

LOG = logging.getLogger(__name__)

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size of the font's CBDT bitmaps that FreeType will load
GENERATOR_VERSION = 2
SPLITS = {"train": 0, "val": 1, "test": 2, "gallery": 3}
GALLERY_PHOTOS = ("chelsea", "coffee", "astronaut")

# class -> glyphs. Several glyphs per class where Unicode has them, so a model has to learn the
# concept and not one drawing. The order is part of the generator: append-only, bump the version.
CLASSES: dict[str, tuple[str, ...]] = {
    "dog": ("\U0001f415", "\U0001f436", "\U0001f429"),  # dog, dog face, poodle
    "cat": ("\U0001f408", "\U0001f431"),  # cat, cat face
    "car": ("\U0001f697", "\U0001f699", "\U0001f695"),  # automobile, RV, taxi
    "bicycle": ("\U0001f6b2",),
    "apple": ("\U0001f34e", "\U0001f34f"),  # red, green
    "banana": ("\U0001f34c",),
    "bird": ("\U0001f426", "\U0001f424"),  # bird, baby chick
    "fish": ("\U0001f41f", "\U0001f420"),  # fish, tropical fish
    "tree": ("\U0001f333", "\U0001f332"),  # deciduous, evergreen
    "house": ("\U0001f3e0", "\U0001f3e1"),  # house, house with garden
    "guitar": ("\U0001f3b8",),
    "ball": ("\u26bd", "\U0001f3c0"),  # soccer ball, basketball
}
CLASS_NAMES = tuple(CLASSES)
# Photographs that scikit-image ships inside its wheel (skimage/data/*.png|jpg): loading them
# never touches the network or needs pooch, unlike e.g. ``skimage.data.cat``'s larger siblings.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "page")


@dataclass
class Scene:
    """One generated sample, with what a test or an evaluation needs to check the mask.

    ``background`` is the picture before the labelled object was pasted (distractor included),
    ``object_layer`` the object alone on a transparent full-size canvas, so that
    ``background + object_layer (+ occluder) == image`` and ``mask <= object_layer.alpha > 127``.
    """

    image: Image.Image
    mask: np.ndarray  # HxW bool: visible pixels of the labelled object
    label: int
    class_name: str
    glyph: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 of the pasted object (exclusive end)
    background: Image.Image
    object_layer: Image.Image  # full-size RGBA of the object alone, as pasted
    occluded: bool
    scale: float  # the object's longest side before rotation, as a share of the image side
    distractor: str | None = None  # glyph of the other-class object, if any (not in the mask)
    distractor_bbox: tuple[int, int, int, int] | None = None


def _resolve_font(font_path: str | Path | None) -> str:
    return str(FONT_PATH if font_path is None else font_path)


@lru_cache(maxsize=4)
def _font(path: str) -> ImageFont.FreeTypeFont:
    """Load the emoji font once per process, or fail with the one-line install hint."""
    hint = "install it with: apt-get install fonts-noto-color-emoji"
    if not Path(path).is_file():
        raise SimamVizError(f"emoji font not found at {path}; {hint}")
    try:
        return ImageFont.truetype(path, FONT_SIZE)
    except OSError as exc:  # not a font, or a font without 109 px bitmaps
        raise SimamVizError(f"cannot load the emoji font {path} ({exc}); {hint}") from None


@lru_cache(maxsize=128)
def _glyph(char: str, font_path: str) -> Image.Image:
    """The glyph as a tightly cropped RGBA image, rendered once per process and reused.

    Rendering through FreeType costs more than the rest of a scene at small sizes; every
    transform later starts from this cached copy. 160 px leaves room around the 136x128 bitmap.
    """
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=_font(font_path), embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise SimamVizError(f"the emoji font has no glyph for U+{ord(char):04X}")
    return canvas.crop(box)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled photographs as RGB uint8, loaded once per process."""
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


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel coordinates, shared by every texture of one size (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    """Procedural backgrounds: noise, gradients, stripes, checkerboards, blobs.

    The arithmetic is done in place but in the same order as version 2, so the pixels (which
    depend on float rounding before the uint8 cast) are unchanged.
    """
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = _grid(size)
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
    t3 = t[..., None]
    arr = c1[None, None] * (1 - t3)
    arr += c2[None, None] * t3
    arr += rng.normal(0, rng.uniform(0, 20), arr.shape)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


def _jitter(im: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhancer(im).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    return im


def _place(glyph: Image.Image, rng: np.random.Generator, side: int, size: int,
           jitter: float) -> tuple[Image.Image, tuple[int, int]]:
    """Scale (longest side = ``side``), rotate, flip and colour-jitter a glyph; pick a spot.

    Pillow premultiplies alpha when resampling RGBA, so edges do not pick up the transparent
    black around the glyph. A rotated object larger than the image is shrunk to fit, so the
    whole object is always inside the picture and the mask is never cut by the border.
    """
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
    """Deterministic scenes: ``sample(split, index)`` depends only on the seed and arguments.

    Each sample gets its own ``numpy.random.default_rng([seed, split, index])`` stream, so
    samples can be made in any order, in parallel, or one at a time, with identical results.
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 224,
        *,
        font_path: str | Path | None = None,
        distractor_prob: float = 0.4,
        occlusion_prob: float = 0.3,
        photo_prob: float = 0.5,
    ) -> None:
        if int(seed) < 0:
            raise SimamVizError(f"seed must be >= 0, got {seed}")
        if int(size) < 32:
            raise SimamVizError(f"size must be >= 32 pixels, got {size}")
        for name, p in (("distractor_prob", distractor_prob), ("occlusion_prob", occlusion_prob),
                        ("photo_prob", photo_prob)):
            if not 0.0 <= p <= 1.0:
                raise SimamVizError(f"{name} must be within [0, 1], got {p}")
        self.seed, self.size = int(seed), int(size)
        self.font_path = _resolve_font(font_path)
        self.distractor_prob = float(distractor_prob)
        self.occlusion_prob = float(occlusion_prob)
        self.photo_prob = float(photo_prob)
        _font(self.font_path)  # fail early, with the install hint

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def options(self) -> dict[str, Any]:
        """The knobs besides seed and size, as recorded in ``meta.json``."""
        return {"distractor_prob": self.distractor_prob, "occlusion_prob": self.occlusion_prob,
                "photo_prob": self.photo_prob}

    def label_of(self, split: str, index: int) -> int:
        """Balanced labels: every block of ``len(classes)`` indices holds each class once.

        A seeded permutation per block (rather than ``index % n``) keeps neighbouring files
        from always being the same class sequence, yet any prefix of a multiple of the class
        count is exactly balanced.
        """
        self._check(split, index)
        block, pos = divmod(int(index), len(CLASS_NAMES))
        rng = np.random.default_rng([self.seed, SPLITS[split], block, 7919])
        return int(rng.permutation(len(CLASS_NAMES))[pos])

    @staticmethod
    def _check(split: str, index: int) -> None:
        if split not in SPLITS:
            raise SimamVizError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if int(index) < 0:
            raise SimamVizError(f"index must be >= 0, got {index}")

    def sample(self, split: str, index: int) -> Scene:
        """Build scene ``index`` of ``split``. The draw order below is the version-2 format."""
        label = self.label_of(split, index)
        rng = np.random.default_rng([self.seed, SPLITS[split], int(index)])
        size = self.size
        name = CLASS_NAMES[label]
        glyph = CLASSES[name][int(rng.integers(len(CLASSES[name])))]
        canvas = (_photo_crop(rng, size) if rng.random() < self.photo_prob
                  else _texture(rng, size)).convert("RGBA")
        side = int(rng.uniform(0.2, 0.8) * size)
        distractor, distractor_bbox = None, None
        if rng.random() < self.distractor_prob:
            # one distractor, clearly smaller than the object, so the label stays unambiguous;
            # pasted first, so the labelled object may cover it but never the other way round
            other = CLASS_NAMES[(label + int(rng.integers(1, len(CLASS_NAMES))))
                                % len(CLASS_NAMES)]
            distractor = CLASSES[other][int(rng.integers(len(CLASSES[other])))]
            small = max(8, int(side * rng.uniform(0.3, 0.55)))
            obj, (dx, dy) = _place(_glyph(distractor, self.font_path), rng, small, size, 0.3)
            canvas.alpha_composite(obj, (dx, dy))
            distractor_bbox = (dx, dy, dx + obj.width, dy + obj.height)
        background = canvas.convert("RGB")
        obj, (x, y) = _place(_glyph(glyph, self.font_path), rng, side, size, 0.3)
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        layer.alpha_composite(obj, (x, y))
        canvas.alpha_composite(layer)
        mask = np.asarray(layer.getchannel("A")) > 127  # alpha > 0.5
        occluded = bool(rng.random() < self.occlusion_prob)
        if occluded:
            # an opaque textured patch over 20-50% of each side of the object's box
            ow = max(2, int(obj.width * rng.uniform(0.2, 0.5)))
            oh = max(2, int(obj.height * rng.uniform(0.2, 0.5)))
            ox = x + int(rng.integers(0, obj.width - ow + 1))
            oy = y + int(rng.integers(0, obj.height - oh + 1))
            patch = _texture(rng, max(ow, oh)).crop((0, 0, ow, oh))
            canvas.paste(patch, (ox, oy))
            mask[oy : oy + oh, ox : ox + ow] = False
        return Scene(canvas.convert("RGB"), mask, label, name, glyph,
                     (x, y, x + obj.width, y + obj.height), background, layer, occluded,
                     side / size, distractor, distractor_bbox)

    def meta(self, counts: dict[str, int]) -> dict[str, Any]:
        """What ``meta.json`` records: enough to regenerate the dataset and to cite the glyphs."""
        return {
            "generator": "simam_viz.studies.scenes",
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "size": self.size,
            "counts": counts,
            "options": self.options(),
            "classes": [
                {"name": n, "glyphs": [f"U+{ord(c):04X}" for c in CLASSES[n]],
                 "glyph_names": [unicodedata.name(c, "") for c in CLASSES[n]]}
                for n in CLASS_NAMES
            ],
            "font": "Noto Color Emoji (SIL Open Font License 1.1)",
            "backgrounds": "scikit-image sample photographs + procedural textures",
            "layout": "{split}/{class}/{index:06d}.png; masks/{split}/{class}/{index:06d}.png",
        }


def _png_bytes(im: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _write_one(gen: SceneGenerator, out_dir: Path, split: str, index: int) -> None:
    scene = gen.sample(split, index)
    rel = Path(split) / scene.class_name / f"{index:06d}.png"
    # zlib level 1: about 2.3x faster to encode than Pillow's default 6 for ~6% larger files;
    # encoding is otherwise the slowest step of generation
    (out_dir / rel).write_bytes(_png_bytes(scene.image, compress_level=1))
    (out_dir / "masks" / rel).write_bytes(_png_bytes(Image.fromarray(scene.mask).convert("1")))


_WORKER_GEN: SceneGenerator | None = None


def _init_worker(gen: SceneGenerator) -> None:
    global _WORKER_GEN
    _WORKER_GEN = gen


def _write_chunk(args: tuple[Path, str, list[int]]) -> int:
    out_dir, split, indices = args
    assert _WORKER_GEN is not None
    for index in indices:
        _write_one(_WORKER_GEN, out_dir, split, index)
    return len(indices)


def _chunks(counts: dict[str, int], out: Path, size: int) -> Iterable[tuple[Path, str, list[int]]]:
    for split, n in counts.items():
        for start in range(0, n, size):
            yield out, split, list(range(start, min(n, start + size)))


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    size: int = 224,
    workers: int = 1,
    progress: bool = False,
    font_path: str | Path | None = None,
    distractor_prob: float = 0.4,
    occlusion_prob: float = 0.3,
    photo_prob: float = 0.5,
) -> Path:
    """Write an ImageFolder tree (``split/class/NNNNNN.png``), 1-bit masks and ``meta.json``.

    Every split with images gets a folder for every class (so ``ImageFolder`` maps labels the
    same way in each split), hence a split needs 0 or at least ``len(CLASSES)`` images. The
    files are the same whatever ``workers`` is; ``meta.json`` is written last, so its presence
    means the tree is complete.
    """
    from tqdm import tqdm

    counts = dict(counts) if counts is not None else {"train": 2400, "val": 360, "test": 600}
    for split, n in counts.items():
        SceneGenerator._check(split, 0)
        if n < 0 or 0 < n < len(CLASS_NAMES):
            raise SimamVizError(f"{split}: need 0 or at least {len(CLASS_NAMES)} images "
                                f"(one per class), got {n}")
    gen = SceneGenerator(seed, size, font_path=font_path, distractor_prob=distractor_prob,
                         occlusion_prob=occlusion_prob, photo_prob=photo_prob)
    out = Path(out_dir)
    for split, n in counts.items():
        for name in CLASS_NAMES if n else ():
            (out / split / name).mkdir(parents=True, exist_ok=True)
            (out / "masks" / split / name).mkdir(parents=True, exist_ok=True)
    total = sum(counts.values())
    workers = max(1, min(int(workers), os.cpu_count() or 1, total or 1))
    chunk = max(1, min(64, total // (workers * 8) or 1))
    bar = tqdm(total=total, unit="img", disable=not progress, desc="scenes")
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(gen,)) as pool:
            for done in pool.map(_write_chunk, _chunks(counts, out, chunk)):
                bar.update(done)
    else:
        for split, n in counts.items():
            for index in range(n):
                _write_one(gen, out, split, index)
                bar.update()
    bar.close()
    meta = to_json_safe(gen.meta(counts))
    (out / "meta.json").write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    LOG.info("wrote %d scenes to %s", sum(counts.values()), out)
    return out


def _png_within(im: Image.Image, max_bytes: int) -> bytes:
    """Best-compressed PNG of ``im``, shrunk in 10% steps until it fits ``max_bytes``.

    Noisy textures barely compress, so a 224 px scene can exceed a gallery budget; shrinking
    keeps true colours (a palette would add dithering the models never saw).
    """
    while True:
        data = _png_bytes(im, optimize=True)
        if len(data) <= max_bytes or min(im.size) <= 32:
            return data
        im = im.resize((max(32, round(im.width * 0.9)), max(32, round(im.height * 0.9))),
                       Image.Resampling.LANCZOS)


def gallery_examples(out_dir: str | Path, n: int = 4, *, seed: int = 0, size: int = 224,
                     max_bytes: int = 100_000) -> list[Path]:
    """A few scenes plus a few scikit-image photographs, small PNGs for the app's gallery.

    Scenes come from the ``gallery`` split, never used for training, and the first ``n`` of
    it are ``n`` different classes (for ``n <= len(CLASSES)``). Photographs are resized to
    ``size`` on their longest side; each file stays under ``max_bytes``.
    """
    import skimage.data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = SceneGenerator(seed, size)
    paths = []
    for i in range(n):
        scene = gen.sample("gallery", i)
        path = out / f"scene_{scene.class_name}_{i}.png"
        path.write_bytes(_png_within(scene.image, max_bytes))
        paths.append(path)
    for name in GALLERY_PHOTOS:
        im = Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3])
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        path = out / f"photo_{name}.png"
        path.write_bytes(_png_within(im, max_bytes))
        paths.append(path)
    return paths
