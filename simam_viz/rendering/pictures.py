"""Pictures as pure functions of arrays: overlays, mosaics, tiles, PNG/JPEG bytes.

This is the rendering layer's bottom floor. Everything here takes numpy arrays (HxWx3 uint8
images, HxW float maps in [0, 1], stacks of maps) and gives back arrays or encoded bytes,
through numpy and Pillow only: no matplotlib ``Figure``, no plotly. The screen (the app's
``st.image``), the plotly charts (:mod:`~simam_viz.rendering.charts` tiles maps here) and the
matplotlib exports (:mod:`~simam_viz.rendering.figures` draws these pictures into its panels)
all start from the same pixels, so an exported panel and the one on screen cannot differ.

matplotlib is imported for its colour maps alone (``matplotlib.colormaps``), which loads
neither ``matplotlib.figure`` nor pyplot.

The ``check_*`` validators are shared by every rendering module: each rejects bad input with
a one-line ``ValueError`` that the app and the CLI can show as is.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from simam_viz.engine.trust import SanityStep

__all__ = [
    "Colour",
    "check_alpha",
    "check_count",
    "check_image",
    "check_map",
    "jpeg_bytes",
    "mosaic",
    "overlay",
    "panel_png",
    "resize_map",
    "resolve_colormap",
    "sanity_strip",
    "tile_channels",
]

Colour = str | Colormap


# --- validation: every message is one line, so the app can show it as is ------------------


def check_image(image: Any) -> np.ndarray:
    """``image`` as a non-empty HxWx3 uint8 array, or a one-line ValueError."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty HxWx3 uint8 array, got {image.shape} "
                         f"{image.dtype}")
    return image


def check_map(
    values: Any, name: str = "map", ndim: int | None = 2, dtype: type = np.float32
) -> np.ndarray:
    """A finite, non-empty array of ``dtype`` (with ``ndim`` dimensions unless None).

    NaN is refused rather than passed on: matplotlib would silently draw it as 'bad' and
    plotly as a gap, hiding exactly the value a figure is about.
    """
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array") from None
    if (ndim is not None and arr.ndim != ndim) or arr.size == 0:
        dims = f"{ndim}-D " if ndim is not None else ""
        raise ValueError(f"{name} must be a non-empty {dims}array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return arr


def check_alpha(alpha: Any) -> float:
    """A blend weight within [0, 1]."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number within [0, 1], got {alpha!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"alpha must be within [0, 1], got {alpha!r}")
    return value


def check_count(value: Any, name: str) -> int:
    """A positive integer (``top_k``, ``per_row``...); bools are refused, numpy ints taken."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def resolve_colormap(colormap: Colour) -> Colormap:
    """Look a colour map up by name; matplotlib's KeyError lists every name on one huge line."""
    if isinstance(colormap, Colormap):
        return colormap
    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}") from None


# --- maps and overlays ----------------------------------------------------------------------


def resize_map(cam: Any, height: int, width: int, name: str = "map") -> np.ndarray:
    """Bilinear resize of a float map (attention at feature resolution, CAMs of another size).

    PIL's float ("F") mode keeps the values un-quantised, unlike resizing a uint8 rendering.
    """
    cam = check_map(cam, name)
    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(cam, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay(
    image: np.ndarray, cam: np.ndarray, *, colormap: Colour = "jet", alpha: float = 0.5
) -> np.ndarray:
    """``round((1 - alpha) * image + alpha * 255 * colormap(cam)[..., :3])`` as HxWx3 uint8.

    ``cam`` is clipped to [0, 1] (values outside have no colour) and resized bilinearly to
    the image when the shapes differ, so maps at feature resolution can be passed directly.
    The blend is computed in float64 so it matches an independent numpy computation exactly.
    """
    image = check_image(image)
    weight = check_alpha(alpha)
    cmap = resolve_colormap(colormap)
    cam = np.clip(resize_map(cam, image.shape[0], image.shape[1], "cam"), 0.0, 1.0)
    heat = cmap(cam)[..., :3] * 255.0
    blended = (1.0 - weight) * image.astype(np.float64) + weight * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def tile_channels(maps: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` maps (k x h x w) tiled ``cols`` a row with a one-cell NaN gap between tiles.

    Returns the tiled values and, at the same places, the index (0..k-1) of the map each cell
    came from (-1 in the gaps), so a chart can say which channel is under the cursor.
    """
    k, h, w = maps.shape
    rows = -(-k // cols)
    values = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    which = np.full(values.shape, -1, np.int64)
    for i in range(k):
        top, left = (i // cols) * (h + 1), (i % cols) * (w + 1)
        values[top : top + h, left : left + w] = maps[i]
        which[top : top + h, left : left + w] = i
    return values, which


# --- many pictures as one -------------------------------------------------------------------


def mosaic(
    panels: Sequence[np.ndarray], labels: Sequence[str], *, per_row: int = 8, gap: int = 3
) -> np.ndarray:
    """Same-size HxWx3 uint8 panels in a labelled grid, as one HxWx3 uint8 picture.

    The app's 16-block depth strip is one image, not 16: each image on a web page is a
    request, a decode and a layout of its own, and those, not the maps, dominate a rerun.
    Each panel gets a white label band of ``max(12, W // 9)`` pixels above it.
    """
    if not panels:
        raise ValueError("mosaic needs at least one panel")
    if len(labels) != len(panels):
        raise ValueError(f"mosaic got {len(panels)} panels but {len(labels)} labels")
    per_row = check_count(per_row, "per_row")
    arrays = [check_image(p) for p in panels]
    h, w = arrays[0].shape[:2]
    if any(a.shape[:2] != (h, w) for a in arrays):
        raise ValueError("mosaic needs panels of one size")
    band = max(12, w // 9)
    cols = min(per_row, len(arrays))
    rows = -(-len(arrays) // cols)
    cell_h, cell_w = band + h + gap, w + gap
    canvas = np.full((rows * cell_h - gap, cols * cell_w - gap, 3), 255, np.uint8)
    for i, arr in enumerate(arrays):
        top, left = (i // cols) * cell_h + band, (i % cols) * cell_w
        canvas[top : top + h, left : left + w] = arr
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(9, band - 3))
    for i, label in enumerate(labels):
        top, left = (i // cols) * cell_h, (i % cols) * cell_w
        draw.text((left + 1, top + 1), str(label), fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def sanity_strip(image: np.ndarray, reference: np.ndarray, steps: Sequence[SanityStep], *,
                 colormap: Colour = "jet", alpha: float = 0.5, per_row: int = 10) -> np.ndarray:
    """The trained model's map, then the map after each cascade step, as one picture.

    One mosaic rather than 19 images, as for the depth strip; the Trust view shows it and
    the trust export draws it under its charts. ``steps`` need ``cam`` and ``layer``.
    """
    panels = [overlay(image, reference, colormap=colormap, alpha=alpha)]
    panels += [overlay(image, s.cam, colormap=colormap, alpha=alpha) for s in steps]
    labels = ["trained", *(f"-{s.layer}" for s in steps)]
    return mosaic(panels, labels, per_row=per_row)


# --- encoded bytes --------------------------------------------------------------------------


def jpeg_bytes(array: np.ndarray, *, quality: int = 90) -> bytes:
    """An HxWx3 uint8 picture as JPEG bytes, for on-screen display where lossless is not needed.

    A 224-pixel overlay is about a third of its PNG size and decodes faster; exports stay PNG.
    """
    buf = io.BytesIO()
    Image.fromarray(check_image(array)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def panel_png(array: np.ndarray, *, compress_level: int = 6) -> bytes:
    """One panel at its native resolution as PNG bytes (no matplotlib, no resampling).

    Accepts an HxWx3 uint8 picture (e.g. an ``overlay``), an HxW uint8 grey image, or an HxW
    float map in [0, 1] (clipped, scaled to 0..255 and rounded). ``compress_level`` is zlib's
    (0-9; Pillow's default 6): the pixels are the same at every level, and on-screen PNGs use
    1 (a 161-pixel input: 1.4 ms instead of 4 ms to encode, 15 % more bytes).
    """
    arr = np.asarray(array)
    if arr.ndim == 2 and arr.dtype != np.uint8:
        arr = np.round(np.clip(check_map(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.ndim != 2:
        arr = check_image(arr)
    if arr.size == 0:
        raise ValueError("panel_png needs a non-empty array")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
