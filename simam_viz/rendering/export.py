"""Exports for one image and several models: analysis results -> PNG files + manifests.

Used by the batch CLI and by the app's "download everything" zip. Each PNG gets a JSON
manifest beside it that says exactly what it shows (image sha256, models and checkpoint
sha256, block, target, method, lambda, library versions), so a figure can be reproduced.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from simam_viz.engine.analysis import Analysis, analyze
from simam_viz.networks.models import BLOCKS, DEFAULT_BLOCK
from simam_viz.rendering import figures

__all__ = ["FIGURES", "ExportRequest", "analyze_all", "render", "write_exports"]

LOG = logging.getLogger(__name__)

FIGURES = ("1", "6", "channels", "depth")


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
    """One analysis per model (one pass each); all 16 blocks when a depth strip is wanted."""
    blocks: Any = "all" if "depth" in request.figures else (request.block,)
    return [
        analyze(m, image, target=request.target, blocks=blocks, method=request.method,
                simam_lambda=request.simam_lambda)
        for m in models
    ]


def _label(result: Analysis) -> str:
    top = result.predictions[0]
    return f"{top.name} {top.probability:.0%}"


def render(results: Sequence[Analysis], request: ExportRequest) -> dict[str, Figure]:
    """Figures by file suffix (``figure1``, ``figure6_<model>``, ...) for one image."""
    block = request.block
    image = results[0].image
    out: dict[str, Figure] = {}
    style = {"colormap": request.colormap, "alpha": request.alpha}
    if "1" in request.figures:
        out["figure1"] = figures.figure1(
            [image], [[_label(r) for r in results]], [[r.cam(block, "output") for r in results]],
            [r.model_name for r in results], shared_scale=request.shared_scale,
            raw_cams=[[r.raw_cam(block, "output") for r in results]], **style,
        )
    se = next((r for r in results if r.attention_kind == "se"), None)
    for r in results:
        name = slug(r.model_name)
        if r.attention_kind == "simam" and "6" in request.figures:
            _, mean_map = r.attention(block)
            out[f"figure6_{name}"] = figures.figure6(
                [image], [r.cam(block, "before")], [r.cam(block, "after")], [mean_map],
                [r.cam(block, "attention")], captions=[f"{r.target_name} ({block})"], **style,
            )
        if r.attention_kind == "simam" and "channels" in request.figures:
            weights, _ = r.attention(block)
            excitation = se.channel_weights(block) if se is not None else None
            if excitation is not None and excitation.shape != r.channel_weights(block).shape:
                excitation = None
            out[f"channels_{name}"] = figures.channel_figure(
                weights, r.channel_weights(block), se_excitation=excitation, block=block
            )
        if "depth" in request.figures:
            cams = {b: r.cam(b, "output") for b in BLOCKS}
            out[f"depth_{name}"] = figures.depth_strip(image, cams, **style)
    return out


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
    """Write every requested figure (PNG + manifest) and optionally the raw arrays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = manifest(results, models, request, image_sha256, stem)
    written = []
    for suffix, fig in render(results, request).items():
        png = figures.save_png(fig, out_dir / f"{stem}_{suffix}.png", dpi=request.dpi)
        figures.write_manifest(png.with_suffix(".json"), {**meta, "figure": suffix})
        written.append(png)
    if npz:
        for r in results:
            path = out_dir / f"{stem}_{slug(r.model_name)}.npz"
            arrays = {k.replace("/", "__"): v for k, v in r.arrays().items()}
            np.savez_compressed(path, **arrays)
            written.append(path)
    LOG.info("wrote %d files for %s to %s", len(written), stem, out_dir)
    return written
