"""Figures as pure functions of arrays: overlays, the paper's Figures 1 and 6, channels, depth.

Nothing here knows about models, Streamlit or torch: inputs are numpy arrays (HxWx3 uint8
images, HxW float maps in [0, 1], per-channel vectors and maps), outputs are arrays,
matplotlib ``Figure`` objects or PNG bytes. That keeps every figure testable with hand-made
arrays and reusable by the web app, the batch CLI and notebooks alike.

Figures are built as ``matplotlib.figure.Figure`` on their own Agg canvas, never through
pyplot: pyplot keeps a global list of "current" figures that several sessions of the web app
would share, whereas a ``Figure`` that only one thread touches can be rendered safely.

Sizes are deterministic so exported pixel dimensions can be predicted (and asserted). Every
figure is a grid of ``rows`` x ``cols`` panels, each ``PANEL`` inches square with ``LABEL``
inches of text under it, ``TOP`` inches above the first row for column titles, and a
``CBAR``-inch column on the right where the figure has colour bars::

    width_in  = cols * PANEL + (CBAR if colour bars else 0)
    height_in = rows * (PANEL + LABEL) + TOP
    pixels    = int(inches * dpi + 1e-8)   # matplotlib truncates (see ``png_size``)

At the default 300 dpi that is exact: e.g. Figure 1 for one image and three models is
``4 * 2.2 * 300 = 2640`` x ``(2.65 + 0.3) * 300 = 885`` pixels. The grids are:

==================  ===================  =========================  ============
figure              rows                 cols                       colour bars
==================  ===================  =========================  ============
``figure1``         images               1 + models                 shared_scale
``figure6``         images               4                          yes
``channel_figure``  2                    max(min(top_k, C), 2)      yes
``depth_strip``     ceil(B / per_row)    min(B, per_row)            no
==================  ===================  =========================  ============
"""

from __future__ import annotations

import io
import json
import os
import platform
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CBAR",
    "FIGURE6_TITLES",
    "LABEL",
    "PANEL",
    "TOP",
    "channel_figure",
    "depth_strip",
    "figure1",
    "figure6",
    "figure_to_png",
    "jpeg_bytes",
    "mosaic",
    "overlay",
    "panel_png",
    "png_size",
    "save_png",
    "write_manifest",
]

PANEL = 2.2  # inches per panel side
LABEL = 0.45  # inches of text under each panel row
TOP = 0.3  # inches above the first row for column titles
CBAR = 0.6  # inches for the colour-bar column
FIGURE6_TITLES = (
    "Grad-CAM before SimAM",
    "Grad-CAM after SimAM",
    "Attention (channel mean)",
    "Grad-CAM on attention",
)
_INSET = 0.02  # fraction of a panel left blank on each side, so neighbours don't touch
_PIXEL_TOLERANCE = 1e-8  # matplotlib's own tolerance before truncating to whole pixels
_VERSIONED = ("pillow", "torch", "torchvision", "grad-cam", "simam-viz")

Colour = str | Colormap


# --- validation: every message is one line, so the app can show it as is ------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty HxWx3 uint8 array, got {image.shape} "
                         f"{image.dtype}")
    return image


def _check_map(values: Any, name: str = "map", ndim: int = 2) -> np.ndarray:
    """A finite float32 array of ``ndim`` dimensions (NaN would silently draw as 'bad')."""
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array") from None
    if arr.ndim != ndim or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return arr


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number within [0, 1], got {alpha!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"alpha must be within [0, 1], got {alpha!r}")
    return value


def _colormap(colormap: Colour) -> Colormap:
    """Look a colour map up by name; matplotlib's KeyError lists every name on one huge line."""
    if isinstance(colormap, Colormap):
        return colormap
    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}") from None


def _rows(name: str, values: Sequence[Any], n: int) -> Sequence[Any]:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} rows, expected {n} (one per image)")
    return values


def _count_images(images: Sequence[np.ndarray]) -> int:
    if len(images) == 0:
        raise ValueError("need at least one image")
    return len(images)


# --- arrays -------------------------------------------------------------------------------


def _resize_map(cam: Any, height: int, width: int, name: str = "map") -> np.ndarray:
    """Bilinear resize of a float map (attention at feature resolution, CAMs of another size).

    PIL's float ("F") mode keeps the values un-quantised, unlike resizing a uint8 rendering.
    """
    cam = _check_map(cam, name)
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
    image = _check_image(image)
    weight = _check_alpha(alpha)
    cmap = _colormap(colormap)
    cam = np.clip(_resize_map(cam, image.shape[0], image.shape[1], "cam"), 0.0, 1.0)
    heat = cmap(cam)[..., :3] * 255.0
    blended = (1.0 - weight) * image.astype(np.float64) + weight * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


# --- layout: one fixed grid for every figure ----------------------------------------------


def _new_figure(rows: int, cols: int, *, colorbar: bool = False) -> Figure:
    """A figure sized by the module formula, on its own Agg canvas (no pyplot state)."""
    width = cols * PANEL + (CBAR if colorbar else 0.0)
    fig = Figure(figsize=(width, rows * (PANEL + LABEL) + TOP))
    FigureCanvasAgg(fig)
    return fig


def _axes_at(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """Axes placed in inches (matplotlib wants figure fractions)."""
    fig_w, fig_h = fig.get_size_inches()
    return fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))


def _row_bottom(fig: Figure, row: int) -> float:
    """Inches from the figure's bottom edge to the bottom of grid row ``row``'s picture."""
    return float(fig.get_size_inches()[1]) - TOP - (row + 1) * (PANEL + LABEL) + LABEL


def _panel(
    fig: Figure, row: int, col: int, picture: np.ndarray, *, title: str = "", label: str = "",
    **imshow: Any,
) -> AxesImage:
    """Draw one picture in grid cell (row, col): title above, label below, no ticks."""
    side = PANEL * (1.0 - 2.0 * _INSET)
    ax = _axes_at(fig, (col + _INSET) * PANEL, _row_bottom(fig, row), side, side)
    ax.set_xticks([])
    ax.set_yticks([])
    shown = ax.imshow(picture, **imshow)
    if title:
        ax.set_title(title, fontsize=8, pad=3)
    if label:
        ax.set_xlabel(label, fontsize=7, labelpad=3)
    return shown


def _row_colorbar(fig: Figure, row: int, cols: int, mappable: ScalarMappable, label: str) -> None:
    """A colour bar in the right-hand column, beside the row it describes.

    One bar per row (not one per figure) because each row has its own scale.
    """
    cax = _axes_at(fig, cols * PANEL + 0.05, _row_bottom(fig, row) + 0.1 * PANEL, 0.11,
                   0.76 * PANEL)
    bar = fig.colorbar(mappable, cax=cax, ticks=MaxNLocator(5),
                       format=FormatStrFormatter("%.2g"))  # short labels fit the column
    bar.set_label(label, fontsize=6, labelpad=2)
    bar.ax.tick_params(labelsize=6, length=2, pad=1)


# --- Figure 1: models side by side ----------------------------------------------------------


def _row_labels(row: str | Sequence[str], models: int, i: int) -> tuple[str, list[str]]:
    """(label under the input, labels under each model) from one row of ``labels``."""
    if isinstance(row, str):
        return row, [""] * models
    row = list(row)
    if len(row) == models:
        return "", row
    if len(row) == models + 1:
        return row[0], row[1:]
    raise ValueError(f"labels row {i} needs a string, {models} or {models + 1} labels, "
                     f"got {len(row)}")


def _row_maps(
    cams: Sequence[np.ndarray], raw: Sequence[np.ndarray] | None, models: int, i: int
) -> tuple[list[np.ndarray], float]:
    """The maps to draw for one row and the raw value that maps to 1 (1.0 unless shared).

    Shared scale: every raw map of the row is divided by the row's largest raw value, so a
    model whose evidence is half as strong is drawn half as intense instead of being
    stretched to full range by its own min-max scaling.
    """
    if len(cams) != models:
        raise ValueError(f"cams row {i} has {len(cams)} maps, expected {models} (one per model)")
    if raw is None:
        return [_check_map(c, f"cams[{i}]") for c in cams], 1.0
    if len(raw) != models:
        raise ValueError(f"raw_cams row {i} has {len(raw)} maps, expected {models}")
    maps = [_check_map(r, f"raw_cams[{i}]") for r in raw]
    top = max(float(m.max()) for m in maps)
    top = top if top > 0 else 1.0  # all-zero row: nothing to show, avoid 0/0
    return [m / top for m in maps], top


def figure1(
    images: Sequence[np.ndarray],
    labels: Sequence[str | Sequence[str]],
    cams: Sequence[Sequence[np.ndarray]],
    model_names: Sequence[str],
    *,
    shared_scale: bool = False,
    raw_cams: Sequence[Sequence[np.ndarray]] | None = None,
    colormap: Colour = "jet",
    alpha: float = 0.5,
) -> Figure:
    """The paper's Figure 1: rows = images, columns = input + one CAM overlay per model.

    ``labels[i]`` is either one string (the class label, shown under the input as in the
    paper), one label per model (e.g. each model's prediction, under its column), or both
    (``1 + models`` strings: input first). ``cams[i][j]`` is model j's map in [0, 1].

    With ``shared_scale`` the maps drawn are ``raw_cams`` divided by their row's maximum, so
    the models of a row compare on one scale, and a colour bar per row gives that scale in
    raw units; ``cams`` then only has to have the right shape. Size: rows = images,
    cols = 1 + models, plus ``CBAR`` with ``shared_scale`` (module docstring).
    """
    n, m = _count_images(images), len(model_names)
    if m == 0:
        raise ValueError("figure1 needs at least one model")
    _rows("labels", labels, n)
    _rows("cams", cams, n)
    if shared_scale:
        if raw_cams is None:
            raise ValueError("shared_scale needs raw_cams (maps before min-max scaling)")
        _rows("raw_cams", raw_cams, n)
    _check_alpha(alpha)
    cmap = _colormap(colormap)
    fig = _new_figure(n, m + 1, colorbar=shared_scale)
    for i, image in enumerate(images):
        image = _check_image(image)
        under_input, under_models = _row_labels(labels[i], m, i)
        maps, top = _row_maps(cams[i], raw_cams[i] if shared_scale else None, m, i)
        _panel(fig, i, 0, image, title="Input" if i == 0 else "", label=under_input)
        for j, cam in enumerate(maps):
            _panel(fig, i, j + 1, overlay(image, cam, colormap=cmap, alpha=alpha),
                   title=model_names[j] if i == 0 else "", label=under_models[j])
        if shared_scale:
            scale = ScalarMappable(norm=Normalize(0.0, top), cmap=cmap)
            _row_colorbar(fig, i, m + 1, scale, "raw CAM (row scale)")
    return fig


# --- Figure 6: inside SimAM ---------------------------------------------------------------


def figure6(
    images: Sequence[np.ndarray],
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
    attention: Sequence[np.ndarray],
    attention_cam: Sequence[np.ndarray],
    *,
    titles: Sequence[str] = FIGURE6_TITLES,
    captions: Sequence[str] | None = None,
    colormap: Colour = "jet",
    alpha: float = 0.5,
    attention_colormap: Colour = "viridis",
) -> Figure:
    """The paper's Figure 6: one row of four panels per image.

    Grad-CAM on the features before SimAM, after SimAM, the channel-averaged attention
    weights, and Grad-CAM on those weights. The attention map (h x w, feature resolution) is
    upsampled bilinearly and drawn on its own min-max colour scale with a colour bar per row:
    SimAM's weights are sigmoids that sit in a narrow band, which an absolute [0, 1] scale
    would flatten. ``titles`` head the four columns; ``captions[i]`` goes under image i's
    first panel. Size: rows = images, cols = 4, plus ``CBAR`` (module docstring).
    """
    n = _count_images(images)
    for name, values in (("before", before), ("after", after), ("attention", attention),
                         ("attention_cam", attention_cam)):
        _rows(name, values, n)
    if captions is not None:
        _rows("captions", captions, n)
    if len(titles) != 4:
        raise ValueError(f"titles needs 4 column titles, got {len(titles)}")
    _check_alpha(alpha)
    cmap, att_cmap = _colormap(colormap), _colormap(attention_colormap)
    fig = _new_figure(n, 4, colorbar=True)
    for i, image in enumerate(images):
        image = _check_image(image)
        weights = _check_map(attention[i], f"attention[{i}]")
        pictures = [
            overlay(image, before[i], colormap=cmap, alpha=alpha),
            overlay(image, after[i], colormap=cmap, alpha=alpha),
            _resize_map(weights, image.shape[0], image.shape[1]),
            overlay(image, attention_cam[i], colormap=cmap, alpha=alpha),
        ]
        labels = [captions[i] if captions is not None else "", "", "", ""]
        # the scale is the weights' own range, not the (narrower) range of their upsampling
        scale = {"cmap": att_cmap, "norm": Normalize(float(weights.min()), float(weights.max()))}
        for j, picture in enumerate(pictures):
            style = scale if j == 2 else {}
            shown = _panel(fig, i, j, picture, title=titles[j] if i == 0 else "",
                           label=labels[j], **style)
            if j == 2:
                _row_colorbar(fig, i, 4, shown, "SimAM weight")
    return fig


# --- channels ------------------------------------------------------------------------------


def _top_channels(means: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest means, largest first; ties go to the lower index."""
    return np.argsort(-means, kind="stable")[: min(k, means.size)]


def _weight_chart(
    fig: Figure, slot: int, slots: int, values: np.ndarray, *, title: str, colour: str,
    sort: bool, highlight: np.ndarray | None = None,
) -> None:
    """One bar chart of per-channel weights in the bottom row, in slot ``slot`` of ``slots``.

    ``highlight`` (channel indices) is drawn in red so the top-k maps above can be found.
    """
    cols_width = (fig.get_size_inches()[0] - CBAR) / slots
    ax = _axes_at(fig, slot * cols_width + 0.5, LABEL, cols_width - 0.7, PANEL - 0.35)
    colours = np.full(values.size, colour, dtype=object)
    if highlight is not None:
        colours[highlight] = "tab:red"
    order = np.argsort(-values, kind="stable") if sort else np.arange(values.size)
    ax.bar(np.arange(values.size), values[order], width=1.0, color=list(colours[order]))
    ax.set_xlim(-0.5, values.size - 0.5)
    ax.set_ylim(0.0, max(1.0, float(values.max())))
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("channel, sorted by weight" if sort else "channel index", fontsize=7)
    ax.tick_params(labelsize=6)


def channel_figure(
    channel_maps: np.ndarray,
    simam_means: np.ndarray,
    *,
    top_k: int = 8,
    se_excitation: np.ndarray | None = None,
    block: str = "",
    colormap: Colour = "viridis",
    sort: bool = True,
) -> Figure:
    """Which channels SimAM weights most, and how its weights spread over all channels.

    Top row: the ``top_k`` channels with the largest mean weight (ties: lower index first),
    each as its h x w weight map titled with channel index and mean, all on one colour scale
    (colour bar) so they compare. Bottom row: SimAM's per-channel means as bars (sorted high
    to low, or by channel index with ``sort=False``; the top-k in red) and, when given, SE's
    excitation vector beside it. SE's channels belong to another network, so its vector is
    sorted by its own values rather than SimAM's order. Size: rows = 2,
    cols = max(min(top_k, C), 2), plus ``CBAR`` (module docstring).
    """
    maps = _check_map(channel_maps, "channel_maps", ndim=3)
    means = _check_map(simam_means, "simam_means", ndim=1)
    if means.shape != (maps.shape[0],):
        raise ValueError(f"need C x h x w maps and C means, got {maps.shape} and {means.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    se = None if se_excitation is None else _check_map(se_excitation, "se_excitation", ndim=1)
    order = _top_channels(means, int(top_k))
    cols = max(order.size, 2)
    fig = _new_figure(2, cols, colorbar=True)
    scale = ScalarMappable(Normalize(float(maps[order].min()), float(maps[order].max())),
                           _colormap(colormap))
    for j, c in enumerate(order):
        _panel(fig, 0, j, maps[c], title=f"ch {int(c)}  mean {means[c]:.3f}", cmap=scale.cmap,
               norm=scale.norm)
    _row_colorbar(fig, 0, cols, scale, "SimAM weight")
    suffix = f" {block}" if block else ""
    charts = [("SimAM channel means" + suffix, means, "tab:blue", order)]
    if se is not None:
        charts.append(("SE excitation" + suffix, se, "tab:orange", None))
    for slot, (title, values, colour, highlight) in enumerate(charts):
        _weight_chart(fig, slot, len(charts), values, title=title, colour=colour, sort=sort,
                      highlight=highlight)
    return fig


# --- depth ---------------------------------------------------------------------------------


def depth_strip(
    image: np.ndarray,
    cams_by_block: Mapping[str, np.ndarray],
    *,
    colormap: Colour = "jet",
    alpha: float = 0.5,
    per_row: int = 8,
) -> Figure:
    """One overlay per block, titled by block, in the mapping's order (layer1.0 ... layer4.2).

    ``per_row`` panels a row keeps ResNet-50's 16 blocks readable (two rows of eight).
    Size: rows = ceil(blocks / per_row), cols = min(blocks, per_row) (module docstring).
    """
    image = _check_image(image)
    blocks = list(cams_by_block)
    if not blocks:
        raise ValueError("depth_strip needs at least one block")
    if isinstance(per_row, bool) or not isinstance(per_row, int | np.integer) or per_row < 1:
        raise ValueError(f"per_row must be a positive integer, got {per_row!r}")
    _check_alpha(alpha)
    cmap = _colormap(colormap)
    cols = min(int(per_row), len(blocks))
    fig = _new_figure(-(-len(blocks) // cols), cols)
    for idx, block in enumerate(blocks):
        _panel(fig, idx // cols, idx % cols,
               overlay(image, cams_by_block[block], colormap=cmap, alpha=alpha), title=block)
    return fig


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
    if isinstance(per_row, bool) or not isinstance(per_row, int) or per_row < 1:
        raise ValueError(f"per_row must be a positive integer, got {per_row!r}")
    arrays = [_check_image(p) for p in panels]
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


def jpeg_bytes(array: np.ndarray, *, quality: int = 90) -> bytes:
    """An HxWx3 uint8 picture as JPEG bytes, for on-screen display where lossless is not needed.

    A 224-pixel overlay is about a third of its PNG size and decodes faster; exports stay PNG.
    """
    buf = io.BytesIO()
    Image.fromarray(_check_image(array)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- export ---------------------------------------------------------------------------------


def _check_dpi(dpi: float) -> float:
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        raise ValueError(f"dpi must be a positive number, got {dpi!r}") from None
    if not 0 < value <= 2400:  # beyond that a 4 x 5 panel figure exceeds 600 megapixels
        raise ValueError(f"dpi must be within (0, 2400], got {dpi!r}")
    return value


def png_size(fig: Figure, *, dpi: float = 300) -> tuple[int, int]:
    """(width, height) in pixels of ``figure_to_png(fig, dpi=dpi)``, without rendering.

    matplotlib truncates ``inches * dpi`` to whole pixels, rounding up only within 1e-8 of
    the next integer (floating-point noise), so e.g. 8.8 in at 72 dpi gives 633, not 634.
    """
    width, height = fig.get_size_inches()
    dots = _check_dpi(dpi)
    return int(width * dots + _PIXEL_TOLERANCE), int(height * dots + _PIXEL_TOLERANCE)


def figure_to_png(fig: Figure, *, dpi: float = 300) -> bytes:
    """PNG bytes of ``fig`` at ``dpi``: the full fixed-size canvas (no tight bounding box,
    which would make the pixel size depend on the text drawn).

    Different figures may be rendered from different threads at once; one figure must not
    be rendered by two threads at once (saving sets its dpi for the duration).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_check_dpi(dpi))
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a unique temporary file and rename, so readers never see half a file and two
    writers of the same path do not corrupt each other."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")  # open(): umask applies,
    try:  # unlike mkstemp's 0600, so exports stay readable as ordinary files
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_png(fig: Figure, path: str | Path, *, dpi: float = 300) -> Path:
    """Write ``fig`` as PNG at ``path`` (atomically) and close it.

    A ``Figure`` made here has no pyplot manager to close; "closing" clears it, dropping its
    artists and image arrays, so a batch export doesn't hold every figure's memory. The
    figure is cleared even when writing fails. Returns ``path``.
    """
    path = Path(path)
    try:
        _write_atomic(path, figure_to_png(fig, dpi=dpi))
    finally:
        fig.clear()
    return path


def panel_png(array: np.ndarray, *, compress_level: int = 6) -> bytes:
    """One panel at its native resolution as PNG bytes (no matplotlib, no resampling).

    Accepts an HxWx3 uint8 picture (e.g. an ``overlay``), an HxW uint8 grey image, or an HxW
    float map in [0, 1] (clipped, scaled to 0..255 and rounded). ``compress_level`` is zlib's
    (0-9; Pillow's default 6): the pixels are the same at every level, and on-screen PNGs use
    1 (a 161-pixel input: 1.4 ms instead of 4 ms to encode, 15 % more bytes).
    """
    arr = np.asarray(array)
    if arr.ndim == 2 and arr.dtype != np.uint8:
        arr = np.round(np.clip(_check_map(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.ndim != 2:
        arr = _check_image(arr)
    if arr.size == 0:
        raise ValueError("panel_png needs a non-empty array")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    """JSON for what callers tend to put in manifests: numpy scalars/arrays, paths, dates."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)  # paths, enums, anything else: readable rather than an error


def _library_versions() -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
    }
    for package in _VERSIONED:  # read from metadata: importing torch here would be slow
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    except (ValueError, OverflowError, OSError):
        when = datetime.now(UTC)  # a malformed value must not fail an export
    return when.isoformat(timespec="seconds")


def write_manifest(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as sorted, indented JSON at ``path`` (beside an export), atomically.

    The caller supplies what the figure shows (image sha256, models, checkpoint sha256,
    block, target, method, lambda, ...); this adds ``created`` (UTC, ISO 8601) and
    ``versions`` (python, numpy, matplotlib, pillow, torch, ...) so a figure can be
    reproduced. Values the caller gives for those keys win. ``created`` honours
    ``$SOURCE_DATE_EPOCH`` (the reproducible-builds convention), so two runs of a batch, for
    example with 1 and with 2 torchrun processes, can be compared byte for byte.
    Returns ``path``.
    """
    manifest = dict(data)
    manifest.setdefault("created", _created())
    manifest["versions"] = {**_library_versions(), **dict(manifest.get("versions") or {})}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_jsonable) + "\n"
    path = Path(path)
    _write_atomic(path, text.encode("utf-8"))
    return path
