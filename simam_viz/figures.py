"""Figures as pure functions of arrays: overlays, the paper's Figures 1 and 6, channels, depth.

Nothing here knows about models, Streamlit or torch: inputs are numpy arrays (HxWx3 uint8
images, HxW float maps in [0, 1]), outputs are arrays, matplotlib ``Figure`` objects or PNG
bytes. Figures are built with the object-oriented API on an Agg canvas, never pyplot's global
state, so several sessions of the web app can render at once.

Sizes are deterministic: every panel is ``PANEL`` inches square plus ``LABEL`` inches of text
below, so a figure of R rows and C columns exported at ``dpi`` is
``round(C * PANEL * dpi)`` x ``round((R * (PANEL + LABEL) + TOP) * dpi)`` pixels (colour bars take a
fixed extra ``CBAR`` inches of width where present).
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "CBAR",
    "LABEL",
    "PANEL",
    "TOP",
    "channel_figure",
    "depth_strip",
    "figure1",
    "figure6",
    "figure_to_png",
    "overlay",
    "panel_png",
    "save_png",
    "write_manifest",
]

PANEL = 2.2  # inches per panel side
LABEL = 0.45  # inches of text under each panel row
TOP = 0.3  # inches above the first row for column titles
CBAR = 0.6  # inches for a colour bar column


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    return image


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map (lower-resolution attention maps, CAMs of another size)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"map must be 2-D (HxW), got shape {cam.shape}")
    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(cam, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay(
    image: np.ndarray, cam: np.ndarray, *, colormap: str = "jet", alpha: float = 0.5
) -> np.ndarray:
    """Blend ``(1 - alpha) * image + alpha * colormap(cam)``; cam clipped to [0, 1]."""
    image = _check_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    cam = np.clip(_resize_map(cam, image.shape[0], image.shape[1]), 0.0, 1.0)
    heat = matplotlib.colormaps[colormap](cam)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _figure(rows: int, cols: int, *, colorbar: bool = False) -> Figure:
    width = cols * PANEL + (CBAR if colorbar else 0.0)
    fig = Figure(figsize=(width, rows * (PANEL + LABEL) + TOP))
    FigureCanvasAgg(fig)
    return fig


def _panel_axes(fig: Figure, rows: int, cols: int, row: int, col: int, colorbar: bool):
    """Axes for one panel on the fixed grid (inches converted to figure fractions)."""
    width, height = fig.get_size_inches()
    left = col * PANEL / width
    bottom = 1.0 - (TOP + (row + 1) * (PANEL + LABEL) - LABEL) / height
    ax = fig.add_axes((left + 0.02 * PANEL / width, bottom, 0.96 * PANEL / width,
                       0.96 * PANEL / height))
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _show(ax, picture: np.ndarray, title: str = "", label: str = "", **kwargs):
    img = ax.imshow(picture, **kwargs)
    if title:
        ax.set_title(title, fontsize=8, pad=3)
    if label:
        ax.set_xlabel(label, fontsize=7, labelpad=3)
    return img


def _colorbar(fig: Figure, mappable, label: str) -> None:
    width, _ = fig.get_size_inches()
    cax = fig.add_axes((1.0 - 0.9 * CBAR / width, 0.15, 0.15 * CBAR / width, 0.7))
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _rows(name: str, values: Sequence[Any], n: int) -> Sequence[Any]:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} rows, expected {n} (one per image)")
    return values


def figure1(
    images: Sequence[np.ndarray],
    labels: Sequence[Sequence[str]],
    cams: Sequence[Sequence[np.ndarray]],
    model_names: Sequence[str],
    *,
    shared_scale: bool = False,
    raw_cams: Sequence[Sequence[np.ndarray]] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> Figure:
    """The paper's Figure 1: rows = images, columns = input + one Grad-CAM per model.

    ``labels[i][j]`` is model j's label for image i (shown under its panel). With
    ``shared_scale``, each row's raw maps are divided by the row's largest raw value so the
    models compare on one scale (a colour bar shows it); otherwise each map is min-max scaled.
    """
    n, m = len(images), len(model_names)
    _rows("labels", labels, n)
    _rows("cams", cams, n)
    if shared_scale:
        if raw_cams is None:
            raise ValueError("shared_scale needs raw_cams (maps before min-max scaling)")
        _rows("raw_cams", raw_cams, n)
    fig = _figure(n, m + 1, colorbar=shared_scale)
    for i, image in enumerate(images):
        image = _check_image(image)
        if len(cams[i]) != m or len(labels[i]) != m:
            raise ValueError(f"row {i} needs one map and one label per model ({m})")
        maps = list(cams[i])
        if shared_scale:
            top = max(float(np.max(r)) for r in raw_cams[i]) or 1.0  # type: ignore[index]
            maps = [np.asarray(r, np.float32) / top for r in raw_cams[i]]  # type: ignore[index]
        ax = _panel_axes(fig, n, m + 1, i, 0, shared_scale)
        _show(ax, image, "Input" if i == 0 else "")
        for j, cam in enumerate(maps):
            ax = _panel_axes(fig, n, m + 1, i, j + 1, shared_scale)
            _show(ax, overlay(image, cam, colormap=colormap, alpha=alpha),
                  model_names[j] if i == 0 else "", labels[i][j])
    if shared_scale:
        scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormap)
        _colorbar(fig, scale, "Grad-CAM (shared scale per row)")
    return fig


def figure6(
    images: Sequence[np.ndarray],
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
    attention: Sequence[np.ndarray],
    attention_cam: Sequence[np.ndarray],
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    attention_colormap: str = "viridis",
    captions: Sequence[str] | None = None,
) -> Figure:
    """The paper's Figure 6: per image, Grad-CAM before SimAM, after SimAM, the
    channel-averaged attention weights (own colour scale, colour bar) and Grad-CAM on them."""
    n = len(images)
    for name, values in (("before", before), ("after", after), ("attention", attention),
                         ("attention_cam", attention_cam)):
        _rows(name, values, n)
    titles = ("Grad-CAM before SimAM", "Grad-CAM after SimAM", "Attention (channel mean)",
              "Grad-CAM on attention")
    fig = _figure(n, 4, colorbar=True)
    mappable = None
    for i, image in enumerate(images):
        image = _check_image(image)
        caption = captions[i] if captions else ""
        for j, cam in enumerate((before[i], after[i])):
            ax = _panel_axes(fig, n, 4, i, j, True)
            _show(ax, overlay(image, cam, colormap=colormap, alpha=alpha),
                  titles[j] if i == 0 else "", caption if j == 0 else "")
        att = _resize_map(attention[i], image.shape[0], image.shape[1])
        ax = _panel_axes(fig, n, 4, i, 2, True)
        mappable = _show(ax, att, titles[2] if i == 0 else "",
                         f"range {float(np.min(attention[i])):.3f}-"
                         f"{float(np.max(attention[i])):.3f}", cmap=attention_colormap)
        ax = _panel_axes(fig, n, 4, i, 3, True)
        _show(ax, overlay(image, attention_cam[i], colormap=colormap, alpha=alpha),
              titles[3] if i == 0 else "")
    if mappable is not None:
        _colorbar(fig, mappable, "SimAM weight (last row)")
    return fig


def channel_figure(
    channel_maps: np.ndarray,
    simam_means: np.ndarray,
    *,
    top_k: int = 8,
    se_excitation: np.ndarray | None = None,
    block: str = "",
    colormap: str = "viridis",
) -> Figure:
    """Top-k SimAM channels (by mean weight) as maps, and the per-channel weight chart(s).

    Row 1: the ``top_k`` channel weight maps, titled by channel and mean. Row 2: SimAM's
    channel means sorted high to low, and SE's excitation vector sorted the same way beside
    it when given (both are per-channel weights in (0, 1) for the same block).
    """
    maps = np.asarray(channel_maps, dtype=np.float32)
    means = np.asarray(simam_means, dtype=np.float32)
    if maps.ndim != 3 or means.shape != (maps.shape[0],):
        raise ValueError(f"need C x h x w maps and C means, got {maps.shape} and {means.shape}")
    k = max(1, min(top_k, maps.shape[0]))
    order = np.argsort(-means, kind="stable")[:k]
    cols = max(k, 2)
    fig = _figure(2, cols)
    vmin, vmax = float(maps[order].min()), float(maps[order].max())
    for j, c in enumerate(order):
        ax = _panel_axes(fig, 2, cols, 0, j, False)
        _show(ax, maps[c], f"ch {int(c)}", f"mean {means[c]:.3f}", cmap=colormap,
              vmin=vmin, vmax=vmax)
    width, height = fig.get_size_inches()
    charts = 2 if se_excitation is not None else 1
    for idx in range(charts):
        left = (0.08 + idx * 0.5) if charts == 2 else 0.08
        ax = fig.add_axes((left, 0.08, (0.4 if charts == 2 else 0.88), 0.32))
        if idx == 0:
            ax.bar(np.arange(means.size), np.sort(means)[::-1], width=1.0, color="tab:blue")
            ax.set_title(f"SimAM channel means {block}".strip(), fontsize=8)
        else:
            se = np.asarray(se_excitation, dtype=np.float32).ravel()
            ax.bar(np.arange(se.size), np.sort(se)[::-1], width=1.0, color="tab:orange")
            ax.set_title(f"SE excitation {block}".strip(), fontsize=8)
        ax.set_xlabel("channel (sorted)", fontsize=7)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    return fig


def depth_strip(
    image: np.ndarray,
    cams_by_block: Mapping[str, np.ndarray],
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    per_row: int = 8,
) -> Figure:
    """One panel per block in the given order (layer1.0 ... layer4.2), ``per_row`` a row."""
    image = _check_image(image)
    blocks = list(cams_by_block)
    if not blocks:
        raise ValueError("depth_strip needs at least one block")
    cols = min(per_row, len(blocks))
    rows = -(-len(blocks) // cols)
    fig = _figure(rows, cols)
    for idx, block in enumerate(blocks):
        ax = _panel_axes(fig, rows, cols, idx // cols, idx % cols, False)
        _show(ax, overlay(image, cams_by_block[block], colormap=colormap, alpha=alpha), block)
    return fig


def figure_to_png(fig: Figure, *, dpi: int = 300) -> bytes:
    """PNG bytes of a figure at ``dpi`` (fixed size: no tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, *, dpi: int = 300) -> Path:
    """Write a figure as PNG (atomically: temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(figure_to_png(fig, dpi=dpi))
    tmp.replace(path)
    return path


def panel_png(array: np.ndarray) -> bytes:
    """A single panel (HxWx3 uint8, or HxW float in [0, 1]) as PNG at native resolution."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Sorted, indented JSON beside an export, with creation time and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    manifest = dict(data)
    manifest.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    versions = dict(manifest.get("versions", {}))
    versions.update({
        "python": platform.python_version(),
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
    })
    for package in ("torch", "torchvision", "grad-cam", "simam-viz"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    manifest["versions"] = versions
    path = Path(path)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")
    return path
