"""Matplotlib figures as pure functions of arrays: the paper's Figures 1 and 6, channels, depth.

Nothing here knows about models, Streamlit or torch: inputs are numpy arrays (HxWx3 uint8
images, HxW float maps in [0, 1], per-channel vectors and maps), outputs are matplotlib
``Figure`` objects, PNG bytes and their JSON manifests. That keeps every figure testable with
hand-made arrays and reusable by the web app, the batch CLI and notebooks alike. The pictures
drawn into the panels (overlays, mosaics) come from :mod:`simam_viz.rendering.pictures`; the
interactive plotly versions live in the ``*_charts`` modules, so an export never loads plotly.

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
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from simam_viz.errors import SimamVizError
from simam_viz.rendering.jsonsafe import to_json_safe
from simam_viz.rendering.pictures import (
    Colour,
    check_alpha,
    check_count,
    check_image,
    check_map,
    overlay,
    resolve_colormap,
)

__all__ = [
    "CBAR",
    "LABEL",
    "PANEL",
    "TOP",
    "channel_bars_figure",
    "channel_figure",
    "check_dpi",
    "depth_strip",
    "figure1",
    "figure6",
    "figure_to_png",
    "png_size",
    "save_png",
    "write_manifest",
]

PANEL = 2.2  # inches per panel side
LABEL = 0.45  # inches of text under each panel row
TOP = 0.3  # inches above the first row for column titles
CBAR = 0.6  # inches for the colour-bar column
_INSET = 0.02  # fraction of a panel left blank on each side, so neighbours don't touch
_PIXEL_TOLERANCE = 1e-8  # matplotlib's own tolerance before truncating to whole pixels
_VERSIONED = ("pillow", "torch", "torchvision", "grad-cam", "simam-viz")
DPI_RANGE = (30, 1200)
"""Resolutions every export accepts: below 30 dpi a panel's text cannot be read, and at
1200 dpi Figure 6 for five images is already 183 megapixels (700 MB of RGBA to render)."""


# --- validation: every message is one line, so the app can show it as is ------------------


def check_dpi(dpi: Any, name: str = "dpi") -> float:
    """``dpi`` as a float within :data:`DPI_RANGE`, or a one-line error naming ``name``.

    The one resolution check of the package: the CLI's ``--dpi`` flags (``name="--dpi"``),
    ``png_size``, ``figure_to_png`` and ``save_png`` all use it, so a resolution the CLI
    accepts is one every export accepts. Raises :class:`~simam_viz.errors.SimamVizError`
    (a ``ValueError``), which the CLI reports as a usage error.
    """
    lo, hi = DPI_RANGE
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        raise SimamVizError(f"{name} must be a number between {lo} and {hi}, "
                            f"got {dpi!r}") from None
    if not lo <= value <= hi:  # also false for NaN
        raise SimamVizError(f"{name} must be between {lo} and {hi}, got {dpi}")
    return value


def _rows(name: str, values: Sequence[Any], n: int) -> Sequence[Any]:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} rows, expected {n} (one per image)")
    return values


def _count_images(images: Sequence[np.ndarray]) -> int:
    if len(images) == 0:
        raise ValueError("need at least one image")
    return len(images)


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
        return [check_map(c, f"cams[{i}]") for c in cams], 1.0
    if len(raw) != models:
        raise ValueError(f"raw_cams row {i} has {len(raw)} maps, expected {models}")
    maps = [check_map(r, f"raw_cams[{i}]") for r in raw]
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
    check_alpha(alpha)
    cmap = resolve_colormap(colormap)
    fig = _new_figure(n, m + 1, colorbar=shared_scale)
    for i, image in enumerate(images):
        image = check_image(image)
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


# --- Figure 6: inside the attention -------------------------------------------------------


def figure6(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str]],
    *,
    captions: Sequence[str] | None = None,
    scales: Sequence[tuple[float, float] | None] | None = None,
    scale_colormap: Colour = "viridis",
    scale_label: str = "attention weight",
) -> Figure:
    """The paper's Figure 6, one row per model: the panels the screen shows, laid out.

    ``rows[i]`` holds row i's panels as pictures (HxWx3 uint8, e.g. from
    :func:`simam_viz.rendering.panels.figure6_panel`, so a composite shows the pixels of the
    screen), ``titles[i]`` one title per panel. Rows may differ in length and titles, since
    each attention kind has its own panels (SE: before and after; CBAM adds its spatial gate;
    SimAM its channel mean and Grad-CAM on it), so every row has its titles above it.
    ``captions[i]`` goes under row i's first panel. ``scales[i]``, the (low, high) of weights
    drawn in row i on their own min-max scale in ``scale_colormap``, adds a colour bar beside
    that row: sigmoid weights sit in a narrow band, and the picture alone cannot say which.
    Size: rows = len(rows), cols = the longest row, plus ``CBAR`` when a row has a scale
    (module docstring).
    """
    n = len(rows)
    if n == 0:
        raise ValueError("figure6 needs at least one row of panels")
    for name, values in (("titles", titles), ("captions", captions), ("scales", scales)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} rows, expected {n} (one per row of "
                             "panels)")
    for i, row in enumerate(rows):
        if len(row) == 0 or len(titles[i]) != len(row):
            raise ValueError(f"row {i} needs at least one panel and one title per panel, got "
                             f"{len(row)} panels and {len(titles[i])} titles")
    cmap = resolve_colormap(scale_colormap)
    bars = scales is not None and any(scale is not None for scale in scales)
    cols = max(len(row) for row in rows)
    fig = _new_figure(n, cols, colorbar=bars)
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            label = captions[i] if captions is not None and j == 0 else ""
            _panel(fig, i, j, check_image(picture), title=titles[i][j], label=label)
        scale = scales[i] if scales is not None else None
        if scale is not None:
            low, high = (float(v) for v in scale)
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ValueError(f"scales[{i}] must be finite (low, high), got {scale}")
            # a constant map still gets a bar (at its value) instead of a singular norm
            norm = Normalize(low, high if high > low else low + 1e-6)
            _row_colorbar(fig, i, cols, ScalarMappable(norm=norm, cmap=cmap), scale_label)
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
    gate_label: str = "SE excitation",
    block: str = "",
    colormap: Colour = "viridis",
    sort: bool = True,
) -> Figure:
    """Which channels SimAM weights most, and how its weights spread over all channels.

    Top row: the ``top_k`` channels with the largest mean weight (ties: lower index first),
    each as its h x w weight map titled with channel index and mean, all on one colour scale
    (colour bar) so they compare. Bottom row: SimAM's per-channel means as bars (sorted high
    to low, or by channel index with ``sort=False``; the top-k in red) and, when given, another
    model's channel gate (``se_excitation``, titled ``gate_label``) beside it. Its channels
    belong to another network, so its vector is sorted by its own values rather than SimAM's
    order. Size: rows = 2,
    cols = max(min(top_k, C), 2), plus ``CBAR`` (module docstring).
    """
    maps = check_map(channel_maps, "channel_maps", ndim=3)
    means = check_map(simam_means, "simam_means", ndim=1)
    if means.shape != (maps.shape[0],):
        raise ValueError(f"need C x h x w maps and C means, got {maps.shape} and {means.shape}")
    top_k = check_count(top_k, "top_k")
    se = None if se_excitation is None else check_map(se_excitation, "se_excitation", ndim=1)
    order = _top_channels(means, top_k)
    cols = max(order.size, 2)
    fig = _new_figure(2, cols, colorbar=True)
    scale = ScalarMappable(Normalize(float(maps[order].min()), float(maps[order].max())),
                           resolve_colormap(colormap))
    for j, c in enumerate(order):
        _panel(fig, 0, j, maps[c], title=f"ch {int(c)}  mean {means[c]:.3f}", cmap=scale.cmap,
               norm=scale.norm)
    _row_colorbar(fig, 0, cols, scale, "SimAM weight")
    suffix = f" {block}" if block else ""
    charts = [("SimAM channel means" + suffix, means, "tab:blue", order)]
    if se is not None:
        charts.append((gate_label + suffix, se, "tab:orange", None))
    for slot, (title, values, colour, highlight) in enumerate(charts):
        _weight_chart(fig, slot, len(charts), values, title=title, colour=colour, sort=sort,
                      highlight=highlight)
    return fig


def channel_bars_figure(values: np.ndarray, title: str) -> Figure:
    """A channel gate's weights (SE, ECA, CBAM) as one bar per channel, sorted high to low.

    Size: two panels wide, one panel (plus label and title space) high; the weight axis runs
    from 0 to 1 like every sigmoid gate's, so gates of different models compare.
    """
    values = check_map(values, "values", ndim=1)
    width, height = 2 * PANEL, PANEL + LABEL + TOP
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.5 / width, LABEL / height, (width - 0.7) / width,
                       (PANEL - 0.35) / height))
    ax.bar(np.arange(values.size), np.sort(values)[::-1], width=1.0, color="tab:orange")
    ax.set_xlim(-0.5, values.size - 0.5)
    ax.set_ylim(0.0, max(1.0, float(values.max())))
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("channel, sorted by weight", fontsize=7)
    ax.tick_params(labelsize=6)
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
    image = check_image(image)
    blocks = list(cams_by_block)
    if not blocks:
        raise ValueError("depth_strip needs at least one block")
    per_row = check_count(per_row, "per_row")
    check_alpha(alpha)
    cmap = resolve_colormap(colormap)
    cols = min(per_row, len(blocks))
    fig = _new_figure(-(-len(blocks) // cols), cols)
    for idx, block in enumerate(blocks):
        _panel(fig, idx // cols, idx % cols,
               overlay(image, cams_by_block[block], colormap=cmap, alpha=alpha), title=block)
    return fig


# --- export ---------------------------------------------------------------------------------


def png_size(fig: Figure, *, dpi: float = 300) -> tuple[int, int]:
    """(width, height) in pixels of ``figure_to_png(fig, dpi=dpi)``, without rendering.

    matplotlib truncates ``inches * dpi`` to whole pixels, rounding up only within 1e-8 of
    the next integer (floating-point noise), so e.g. 8.8 in at 72 dpi gives 633, not 634.
    """
    width, height = fig.get_size_inches()
    dots = check_dpi(dpi)
    return int(width * dots + _PIXEL_TOLERANCE), int(height * dots + _PIXEL_TOLERANCE)


def figure_to_png(fig: Figure, *, dpi: float = 300) -> bytes:
    """PNG bytes of ``fig`` at ``dpi``: the full fixed-size canvas (no tight bounding box,
    which would make the pixel size depend on the text drawn).

    Different figures may be rendered from different threads at once; one figure must not
    be rendered by two threads at once (saving sets its dpi for the duration).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=check_dpi(dpi))
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
    reproduced. Values the caller gives for those keys win; every value goes through
    :func:`~simam_viz.rendering.jsonsafe.to_json_safe` (NaN as null, numpy and paths as
    plain JSON), so the file is strict JSON. ``created`` honours
    ``$SOURCE_DATE_EPOCH`` (the reproducible-builds convention), so two runs of a batch, for
    example with 1 and with 2 torchrun processes, can be compared byte for byte.
    Returns ``path``.
    """
    manifest = dict(data)
    manifest.setdefault("created", _created())
    manifest["versions"] = {**_library_versions(), **dict(manifest.get("versions") or {})}
    text = json.dumps(to_json_safe(manifest), indent=2, sort_keys=True, allow_nan=False) + "\n"
    path = Path(path)
    _write_atomic(path, text.encode("utf-8"))
    return path
