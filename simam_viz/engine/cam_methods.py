"""CAM methods: pytorch-grad-cam's own classes, fed from one recorded pass.

pytorch-grad-cam gives every method one small override (``get_cam_weights`` or
``get_cam_image``) on ``BaseCAM``. Normally each CAM object hooks the model and runs its own
forward and backward; here the analysis records all activations and gradients once, and each
method's override is applied to those arrays, followed by the library's own ReLU, scaling and
resizing. The maps are the library's maps, computed without re-running the model. ScoreCAM and
AblationCAM need extra forward passes by nature; they run them on the model they are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

__all__ = ["METHODS", "CamMethod", "compute_cam"]


@dataclass(frozen=True)
class CamMethod:
    """A CAM method offered by the product: its library class and whether it is slow."""

    name: str
    title: str
    cls: type[BaseCAM]
    slow: bool = False


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", "Grad-CAM", GradCAM),
        CamMethod("gradcam++", "Grad-CAM++", GradCAMPlusPlus),
        CamMethod("xgradcam", "XGrad-CAM", XGradCAM),
        CamMethod("hirescam", "HiResCAM", HiResCAM),
        CamMethod("layercam", "LayerCAM", LayerCAM),
        CamMethod("gradcamelementwise", "Grad-CAM element-wise", GradCAMElementWise),
        CamMethod("eigencam", "EigenCAM", EigenCAM),
        CamMethod("eigengradcam", "EigenGrad-CAM", EigenGradCAM),
        CamMethod("scorecam", "Score-CAM (slow)", ScoreCAM, slow=True),
        CamMethod("ablationcam", "Ablation-CAM (slow)", AblationCAM, slow=True),
    )
}

_NULL_MODEL = nn.Linear(1, 1)  # BaseCAM wants a model with parameters; it is never run


def _cam_object(method: CamMethod, model: nn.Module | None) -> BaseCAM:
    """A library CAM object with no target layers, hence no hooks on any model."""
    if method.cls is AblationCAM:
        # a fresh ablation layer per call: the library's default instance is shared by all
        return AblationCAM(model, [], ablation_layer=AblationLayer())
    return method.cls(model if model is not None else _NULL_MODEL, [])


def _undo_ablation(cam_object: BaseCAM, model: nn.Module | None,
                   target_layer: nn.Module | None, hooks: set[int]) -> None:
    """Put a shared model back after AblationCAM failed mid-way (a CUDA OOM in a batch).

    The library swaps ``target_layer`` for its ablation layer and hooks it, and undoes both
    only when it finishes; an exception in between would leave the model altered for good.
    """
    if isinstance(cam_object, AblationCAM) and model is not None and target_layer is not None:
        replace_layer_recursive(model, cam_object.ablation_layer, target_layer)
    if target_layer is not None:
        for handle_id in set(target_layer._forward_hooks) - hooks:
            del target_layer._forward_hooks[handle_id]


def compute_cam(
    method: CamMethod,
    activations: np.ndarray,
    gradients: np.ndarray | None,
    *,
    input_tensor: torch.Tensor,
    target: int,
    model: nn.Module | None = None,
    target_layer: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scaled, raw)`` maps at the input's resolution for batch item 0.

    ``scaled`` equals what ``method.cls(model, [target_layer])(input_tensor, targets)`` returns
    (min-max scaled to [0, 1], then resized, then the library's final aggregation); ``raw`` is
    the same map after the library's ReLU, resized but not min-max scaled, so maps of several
    models can share one colour scale. Slow methods need ``model`` and ``target_layer``.
    """
    cam_object = _cam_object(method, model if method.slow else None)
    targets = [ClassifierOutputTarget(target)]
    size = (input_tensor.shape[-1], input_tensor.shape[-2])  # cv2 wants (width, height)
    hooks = set(target_layer._forward_hooks) if target_layer is not None else set()
    try:
        with torch.no_grad():
            cam = cam_object.get_cam_image(
                input_tensor, target_layer, targets, activations, gradients, eigen_smooth=False
            )
    except BaseException:
        _undo_ablation(cam_object, model, target_layer, hooks)
        raise
    cam = np.maximum(cam, 0)
    scaled = scale_cam_image(cam, size)
    if type(cam_object).aggregate_multi_layers is BaseCAM.aggregate_multi_layers:
        # the library's aggregation of ONE layer: concatenate, ReLU, mean over that axis
        # (of length 1: the values themselves), scale again; the same values without the
        # concatenation and the mean, which cost more than the rest (128 maps per upload)
        scaled = scale_cam_image(np.maximum(scaled, 0))
    else:
        scaled = cam_object.aggregate_multi_layers([scaled[:, None, :]])
    raw = cv2.resize(np.float32(cam[0]), size)
    return scaled[0].astype(np.float32), np.maximum(raw, 0).astype(np.float32)
