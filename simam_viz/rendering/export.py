"""Exports for one image and several models: analysis results -> PNG files + manifests.

Used by the batch CLI and by the app's "download everything" zip. Each PNG gets a JSON
manifest beside it that says exactly what it shows (image sha256, models and checkpoint
sha256, block, target, method, lambda, library versions), so a figure can be reproduced.
Figure 1 and Figure 6 panels are drawn by :mod:`simam_viz.rendering.panels`, the same code
the app draws them with; which figures a model gets follows from its attention kind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from simam_viz.engine.analysis import Analysis, analyze
from simam_viz.networks.models import BLOCKS, DEFAULT_BLOCK
from simam_viz.rendering import figures, panels
from simam_viz.rendering.shape_figures import shapes_figure, shapes_report

__all__ = ["FIGURES", "ExportRequest", "analyze_all", "figure6_figure", "render",
           "write_exports"]

LOG = logging.getLogger(__name__)

FIGURES = ("1", "6", "channels", "depth", "shapes")


@dataclass(frozen=True)
class ExportRequest:
    """What to draw: which figures, for which block, class and CAM method."""

    figures: tuple[str, ...] = FIGURES
    block: str = DEFAULT_BLOCK
    target: int | str | None = None
    method: str = "gradcam"
    simam_lambda: float | None = None
    dpi: int = 300
    colormap: str = "jet"
    alpha: float = 0.5
    shared_scale: bool = False


def slug(text: str) -> str:
    """A file-name-safe version of a model or image name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "item"


def analyze_all(
    models: Sequence[nn.Module], image: Any, request: ExportRequest
) -> list[Analysis]:
    """One analysis per model (one pass each): the request's block and Figure 1's (the last
    block), or all 16 blocks when a depth strip is wanted."""
    wanted = (request.block, panels.FIGURE1_BLOCK) if "1" in request.figures else (request.block,)
    blocks: Any = "all" if "depth" in request.figures else tuple(dict.fromkeys(wanted))
    return [
        analyze(m, image, target=request.target, blocks=blocks, method=request.method,
                simam_lambda=request.simam_lambda)
        for m in models
    ]


def _label(result: Analysis) -> str:
    top = result.predictions[0]
    return f"{top.name} {top.probability:.0%}"


def figure6_figure(results: Sequence[Analysis], block: str, *, colormap: str = "jet",
                   alpha: float = 0.5) -> Figure:
    """Figure 6 at ``block``: one row per model with attention, its kind's panels.

    The panels are :func:`~simam_viz.rendering.panels.figure6_panel`'s pictures, the ones the
    app shows; a row with a weights map gets a colour bar in the weights' own units.
    """
    blend = {"colormap": colormap, "alpha": alpha}
    rows, titles, captions, scales = [], [], [], []
    for r in results:
        shown = panels.figure6_panels(r.kind)
        if not shown:
            continue
        rows.append([panels.figure6_panel(r, block, p, blend) for p in shown])
        titles.append([p.title for p in shown])
        captions.append(f"{r.model_name}: {r.target_name} ({block})")
        values = panels.weights_map(r.attention_weights(block))
        scales.append(None if values is None else (float(values.min()), float(values.max())))
    if not rows:
        raise ValueError("Figure 6 needs a model with an attention module")
    return figures.figure6(rows, titles, captions=captions, scales=scales,
                           scale_colormap=panels.WEIGHTS_COLORMAP)


def render(results: Sequence[Analysis], request: ExportRequest) -> dict[str, Figure]:
    """Figures by file suffix (``figure1``, ``figure6_<model>``, ...) for one image.

    Figure 1 is at the last block, as on screen; Figure 6, channels and the attention shapes
    at ``request.block``, for each model whose attention has them.
    """
    block = request.block
    image = results[0].image
    out: dict[str, Figure] = {}
    style = {"colormap": request.colormap, "alpha": request.alpha}
    if "1" in request.figures:
        where = (panels.FIGURE1_BLOCK, panels.FIGURE1_WHERE)
        out["figure1"] = figures.figure1(
            [image], [[_label(r) for r in results]], [[r.cam(*where) for r in results]],
            [r.model_name for r in results], shared_scale=request.shared_scale,
            raw_cams=[[r.raw_cam(*where) for r in results]], **style,
        )
    for r in results:
        name = slug(r.model_name)
        if "6" in request.figures and r.kind.has_attention:
            out[f"figure6_{name}"] = figure6_figure([r], block, **style)
        if "channels" in request.figures and r.has_channel_weights(block):
            out[f"channels_{name}"] = _channel_figure(r, block)
        if "depth" in request.figures:
            cams = {b: r.cam(b, "output") for b in BLOCKS}
            out[f"depth_{name}"] = figures.depth_strip(image, cams, **style)
    if "shapes" in request.figures:
        shapes = _shapes_figure(results, block)
        if shapes is not None:
            out[f"shapes_{block}"] = shapes
    return out


def _channel_figure(r: Analysis, block: str) -> Figure:
    """3-D weights: their top channels as maps over their channel means; a channel gate:
    its weights as bars."""
    weights = r.attention_weights(block)
    if "full" in weights:
        return figures.channel_figure(weights["full"], r.channel_weights(block), block=block)
    return figures.channel_bars_figure(
        r.channel_weights(block), f"{r.model_name}: {r.kind.label} channel gate {block}")


def _shape_models(results: Sequence[Analysis],
                  block: str) -> list[tuple[str, Mapping[str, np.ndarray]]]:
    """(model name, weights by shape) of each model with attention weights at ``block``."""
    return [(r.model_name, r.attention_weights(block)) for r in results
            if r.attention_weights(block)]


def _shapes_figure(results: Sequence[Analysis], block: str) -> Figure | None:
    """The attention-shapes composite (the paper's Figure 2 on this image), if any model has
    weights."""
    models = _shape_models(results, block)
    return shapes_figure(models, block=block) if models else None


def _shapes_report(results: Sequence[Analysis], block: str) -> dict[str, Any]:
    """The numbers behind the shapes composite, for its JSON."""
    return shapes_report(_shape_models(results, block), block=block)


def manifest(
    results: Sequence[Analysis], models: Sequence[nn.Module], request: ExportRequest,
    image_sha256: str, image_name: str,
) -> dict[str, Any]:
    """What an export shows, for the JSON beside it."""
    return {
        "image": image_name,
        "image_sha256": image_sha256,
        "request": asdict(request),
        "models": [
            {
                "name": r.model_name,
                "arch": r.arch,
                "attention": r.kind.label,
                "checkpoint_sha256": m.simam_viz.sha256,
                "layout": m.simam_viz.layout,
                "target": r.target,
                "target_name": r.target_name,
                "lambda": r.simam_lambda,
                "top5": [(p.index, p.name, round(p.probability, 6)) for p in r.predictions],
            }
            for r, m in zip(results, models, strict=True)
        ],
        "block": request.block,
        "method": request.method,
    }


def write_exports(
    results: Sequence[Analysis], models: Sequence[nn.Module], request: ExportRequest,
    out_dir: Path, stem: str, image_sha256: str, *, npz: bool = False,
) -> list[Path]:
    """Write every requested figure (PNG + manifest) and optionally the raw arrays.

    The attention-shapes figure's JSON also holds its numbers (``shapes``): the variance
    split and weight ranges the picture shows.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = manifest(results, models, request, image_sha256, stem)
    written = []
    for suffix, fig in render(results, request).items():
        png = figures.save_png(fig, out_dir / f"{stem}_{suffix}.png", dpi=request.dpi)
        extra = ({"shapes": _shapes_report(results, request.block)}
                 if suffix.startswith("shapes_") else {})
        figures.write_manifest(png.with_suffix(".json"), {**meta, "figure": suffix, **extra})
        written.append(png)
    if npz:
        for r in results:
            path = out_dir / f"{stem}_{slug(r.model_name)}.npz"
            arrays = {k.replace("/", "__"): v for k, v in r.arrays().items()}
            np.savez_compressed(path, **arrays)
            written.append(path)
    LOG.info("wrote %d files for %s to %s", len(written), stem, out_dir)
    return written
