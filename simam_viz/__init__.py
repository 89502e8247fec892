"""SimAM-Viz: see what SimAM (and SE, ECA, CBAM) attention does inside a ResNet-50.

The package holds everything but the user interfaces: attention modules, model builders,
checkpoint loading, image loading, the analysis engine and figures. ``app/`` (Streamlit) and
``simam_viz.cli`` are thin shells over it.
"""

from typing import TYPE_CHECKING, Any

from simam_viz.attention import CBAM, ECA, SE, SimAM
from simam_viz.checkpoints import identify_checkpoint, load_model, save_checkpoint
from simam_viz.errors import CheckpointError, FetchError, ImageError, SimamVizError
from simam_viz.models import ARCHS, BLOCKS, ModelInfo, build_model, model_info
from simam_viz.preprocess import Preprocessing, imagenet_classes

__version__ = "0.1.0"

if TYPE_CHECKING:
    from simam_viz.analysis import Analysis, AnalysisError, analyze

# The analysis engine pulls in pytorch-grad-cam (and through it scikit-learn, ~1.3 s): it is
# imported on first use of these names, so `import simam_viz` and the CLI stay quick.
_LAZY = {"analyze": "simam_viz.analysis", "Analysis": "simam_viz.analysis",
         "AnalysisError": "simam_viz.analysis"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'simam_viz' has no attribute {name!r}")


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
    "ModelInfo",
    "Preprocessing",
    "SimAM",
    "SimamVizError",
    "__version__",
    "analyze",
    "build_model",
    "identify_checkpoint",
    "imagenet_classes",
    "load_model",
    "model_info",
    "save_checkpoint",
]
