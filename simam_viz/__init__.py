"""SimAM-Viz: see what SimAM (and SE, ECA, CBAM) attention does inside a ResNet-50.

The package holds everything but the user interfaces: attention modules, model builders,
checkpoint loading, image loading, the analysis engine and figures. ``app/`` (Streamlit) and
``simam_viz.cli`` are thin shells over it.

The public API is importable from here::

    from simam_viz import analyze, build_model, load_model

Every name is imported on first use (PEP 562): torch takes seconds to import and the analysis
engine pulls in pytorch-grad-cam, so ``import simam_viz``, ``simam-viz --version`` and the
app server's health endpoint stay instant.

Modules live in subpackages by role, in the order data flows through them: ``networks``
(attention kinds, models, taps), ``weights`` (checkpoints, registry, catalog, fetch),
``engine`` (the analysis pass, CAM methods, neuron, trust), ``rendering`` (pictures,
figures, charts, exports), ``serving`` (admission and caches) and ``studies`` (scenes,
training, evaluation); errors, logs, resources, images, devices and the CLI sit at the top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

if TYPE_CHECKING:
    from simam_viz.engine.analysis import Analysis, analyze
    from simam_viz.engine.attention_shapes import weight_variance
    from simam_viz.engine.intervention import Intervention, intervene
    from simam_viz.engine.neuron import explain_neuron
    from simam_viz.engine.trust import faithfulness, sanity_check
    from simam_viz.errors import (
        AnalysisError,
        CheckpointError,
        FetchError,
        ImageError,
        SimamVizError,
    )
    from simam_viz.networks.attention import CBAM, ECA, SE, SimAM
    from simam_viz.networks.models import ARCHS, BLOCKS, ModelInfo, build_model, model_info
    from simam_viz.networks.preprocess import Preprocessing, imagenet_classes
    from simam_viz.weights.checkpoints import identify_checkpoint, load_model, save_checkpoint

_LAZY: dict[str, str] = {
    "analyze": "simam_viz.engine.analysis",
    "Analysis": "simam_viz.engine.analysis",
    "AnalysisError": "simam_viz.errors",
    "CheckpointError": "simam_viz.errors",
    "FetchError": "simam_viz.errors",
    "ImageError": "simam_viz.errors",
    "SimamVizError": "simam_viz.errors",
    "SimAM": "simam_viz.networks.attention",
    "SE": "simam_viz.networks.attention",
    "ECA": "simam_viz.networks.attention",
    "CBAM": "simam_viz.networks.attention",
    "identify_checkpoint": "simam_viz.weights.checkpoints",
    "load_model": "simam_viz.weights.checkpoints",
    "save_checkpoint": "simam_viz.weights.checkpoints",
    "ARCHS": "simam_viz.networks.models",
    "BLOCKS": "simam_viz.networks.models",
    "ModelInfo": "simam_viz.networks.models",
    "build_model": "simam_viz.networks.models",
    "model_info": "simam_viz.networks.models",
    "Preprocessing": "simam_viz.networks.preprocess",
    "imagenet_classes": "simam_viz.networks.preprocess",
    "faithfulness": "simam_viz.engine.trust",
    "sanity_check": "simam_viz.engine.trust",
    "explain_neuron": "simam_viz.engine.neuron",
    "weight_variance": "simam_viz.engine.attention_shapes",
    "intervene": "simam_viz.engine.intervention",
    "Intervention": "simam_viz.engine.intervention",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:  # `import simam_viz; simam_viz.rendering.figures` worked when __init__ imported eagerly
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'simam_viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ARCHS",
    "Analysis",
    "AnalysisError",
    "BLOCKS",
    "CBAM",
    "ECA",
    "SE",
    "CheckpointError",
    "FetchError",
    "ImageError",
    "Intervention",
    "ModelInfo",
    "Preprocessing",
    "SimAM",
    "SimamVizError",
    "__version__",
    "analyze",
    "build_model",
    "explain_neuron",
    "faithfulness",
    "identify_checkpoint",
    "imagenet_classes",
    "intervene",
    "load_model",
    "model_info",
    "sanity_check",
    "save_checkpoint",
    "weight_variance",
]
