"""SimAM-Viz: see what SimAM (and SE, ECA, CBAM) attention does inside a ResNet-50.

The package holds everything but the user interfaces: attention modules, model builders,
checkpoint loading, image loading, the analysis engine and figures. ``app/`` (Streamlit) and
``simam_viz.cli`` are thin shells over it.
"""

from simam_viz.attention import CBAM, ECA, SE, SimAM
from simam_viz.checkpoints import identify_checkpoint, load_model, save_checkpoint
from simam_viz.errors import CheckpointError, FetchError, ImageError, SimamVizError
from simam_viz.models import ARCHS, BLOCKS, ModelInfo, build_model, model_info
from simam_viz.preprocess import Preprocessing, imagenet_classes

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
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
    "build_model",
    "identify_checkpoint",
    "imagenet_classes",
    "load_model",
    "model_info",
    "save_checkpoint",
]
