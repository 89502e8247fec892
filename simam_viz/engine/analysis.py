"""The analysis engine: every map of the paper's Figures 1 and 6 from one pass per model.

``analyze`` validates everything first (method, blocks, target, input), then, holding the
model's lock, records all requested taps in ONE forward and ONE backward pass, derives every
CAM from those arrays with pytorch-grad-cam's method classes, and restores the model (eval
mode, ``requires_grad`` flags, SimAM lambdas, no hooks) before it lets go. Models are shared
between the app's sessions, which run in threads: the lock makes concurrent calls give exactly
what they would give alone.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from simam_viz.engine.cam_methods import METHODS, compute_cam
from simam_viz.errors import AnalysisError
from simam_viz.networks.attention import SimAM
from simam_viz.networks.kinds import AttentionKind
from simam_viz.networks.models import (
    ARCHS,
    BLOCKS,
    DEFAULT_BLOCK,
    ModelInfo,
    model_info,
    validate_block,
)
from simam_viz.networks.taps import Recorder, taps_for_block

__all__ = [
    "Analysis",
    "AnalysisError",
    "Prediction",
    "analysis_state",
    "analyze",
    "model_lock",
    "prepare_input",
    "resolve_target",
]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One of the top-5 classes: index, name and softmax probability."""

    index: int
    name: str
    probability: float


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """The one lock that guards all use of ``model`` (hooks, lambda, grads are model state)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


@dataclass
class Analysis:
    """Everything one model shows for one image and one target class.

    Maps are numpy float32 at the input's resolution; ``image`` is the crop the model saw.
    """

    model_name: str
    arch: str
    method: str
    target: int
    target_name: str
    simam_lambda: float | None
    blocks: tuple[str, ...]
    image: np.ndarray
    predictions: list[Prediction]
    probabilities: np.ndarray
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    _cams: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    _raw: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    _weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def attention_kind(self) -> str | None:
        """The attention module's kind ("se", "simam", ...; None for plain ResNet-50), from
        the architecture registry."""
        return ARCHS[self.arch].attention

    @property
    def kind(self) -> AttentionKind:
        """What this model's attention is and can show (label, weight shapes, lambda):
        views ask this instead of comparing architecture or kind names."""
        return ARCHS[self.arch].kind

    def wheres(self, block: str) -> tuple[str, ...]:
        """The ``where`` values available for ``block`` (depends on the attention module)."""
        return tuple(w for (b, w) in self._cams if b == block)

    def _key(self, block: str, where: str) -> tuple[str, str]:
        key = (block, where)
        if key not in self._cams:
            if block not in self.blocks:
                raise AnalysisError(f"block {block} was not analysed; analysed: {self.blocks}")
            raise AnalysisError(
                f"no {where!r} map for {block} of {self.arch}; available: {self.wheres(block)}"
            )
        return key

    def cam(self, block: str, where: str = "output") -> np.ndarray:
        """HxW map in [0, 1] (pytorch-grad-cam's scaling) for one tap."""
        return self._cams[self._key(block, where)]

    def raw_cam(self, block: str, where: str = "output") -> np.ndarray:
        """The same map before min-max scaling (for one colour scale across models)."""
        return self._raw[self._key(block, where)]

    def attention_weights(self, block: str) -> dict[str, np.ndarray]:
        """The attention module's own weights at ``block`` in their native shape.

        Keys among ``"channel"`` (C,), ``"spatial"`` (H, W) and ``"full"`` (C, H, W), as the
        module's sigmoid produced them in the analysis pass (recorded, not recomputed): SE and
        ECA give ``channel``, CBAM ``channel`` and ``spatial``, SimAM ``full``, ResNet-50 ``{}``.
        """
        if block not in self.blocks:
            raise AnalysisError(f"block {block} was not analysed; analysed: {self.blocks}")
        return dict(self._weights.get(block, {}))

    def attention(self, block: str) -> tuple[np.ndarray, np.ndarray]:
        """3-D weights (C x h x w) and their channel average (h x w, Figure 6's fourth map)."""
        full = self._weights.get(block, {}).get("full")
        if full is None:
            raise AnalysisError(f"{self.arch} has no 3-D attention weights at {block}")
        return full, full.mean(axis=0)

    def has_channel_weights(self, block: str) -> bool:
        """Whether :meth:`channel_weights` has something to show at ``block``."""
        return bool(self._weights.get(block))

    def channel_weights(self, block: str) -> np.ndarray:
        """Per-channel weights (C,): the channel gate where the module has one (SE, ECA, CBAM),
        else the 3-D weights' mean over positions (SimAM)."""
        weights = self._weights.get(block, {})
        if "channel" in weights:
            return weights["channel"]
        if "full" in weights:
            return weights["full"].mean(axis=(1, 2))
        raise AnalysisError(f"{self.arch} has no channel weights at {block}")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by a flat name, for ``np.savez`` and zip exports."""
        out: dict[str, np.ndarray] = {"image": self.image, "probabilities": self.probabilities}
        for (block, where), cam in self._cams.items():
            out[f"cam/{block}/{where}"] = cam
            out[f"raw_cam/{block}/{where}"] = self._raw[(block, where)]
        for block, weights in self._weights.items():
            for shape, values in weights.items():
                out[f"attention_weights/{block}/{shape}"] = values
            out[f"channel_weights/{block}"] = self.channel_weights(block)
        return out


def resolve_target(target: int | str | None, class_names: Sequence[str]) -> int | None:
    """A class index from an index, a digit string or a class name; errors before any work."""
    if target is None:
        return None
    n = len(class_names)
    if isinstance(target, str):
        text = target.strip()
        if text.lstrip("-").isdigit():
            target = int(text)
        else:
            lowered = [c.lower() for c in class_names]
            if text.lower() not in lowered:
                raise AnalysisError(f"unknown class {text!r}; give an index 0-{n - 1} or a name")
            return lowered.index(text.lower())
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise AnalysisError(f"target must be a class index or name, got {type(target).__name__}")
    if not 0 <= int(target) < n:
        raise AnalysisError(f"target {target} out of range: the model has {n} classes (0-{n - 1})")
    return int(target)


def _resolve_blocks(blocks: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(blocks, str):
        blocks = BLOCKS if blocks == "all" else (blocks,)
    out = tuple(validate_block(b) for b in dict.fromkeys(blocks))
    if not out:
        raise AnalysisError(f"no block given; expected {BLOCKS[0]} ... {BLOCKS[-1]} or 'all'")
    return out


def prepare_input(
    image: Image.Image | torch.Tensor, info: ModelInfo, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """The normalised 1x3xHxW tensor and the HxWx3 uint8 picture it shows."""
    if isinstance(image, Image.Image):
        rgb = image.convert("RGB")
        prep = info.preprocessing
        return prep(rgb).to(device), np.asarray(prep.crop_image(rgb), dtype=np.uint8)
    if not isinstance(image, torch.Tensor):
        raise AnalysisError(f"image must be a PIL image or a tensor, got {type(image).__name__}")
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise AnalysisError(f"tensor input must be 1x3xHxW, got {tuple(image.shape)}")
    if not image.is_floating_point() or not torch.isfinite(image).all():
        raise AnalysisError("tensor input must be finite floating point (ImageNet-normalised)")
    mean = torch.tensor(info.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(info.preprocessing.std).view(3, 1, 1)
    pic = (image[0].detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return image.detach().float().to(device), pic.round().byte().permute(1, 2, 0).numpy()


@contextmanager
def analysis_state(model: nn.Module, simam_lambda: float | None) -> Iterator[None]:
    """Eval mode, no parameter grads, optional lambda; everything restored on exit.

    Each submodule's own training flag is restored, not just the root's: a model in mixed
    modes (``model.train(); model.layer1.eval()``) comes back exactly as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    simams = [m for m, _ in modes if isinstance(m, SimAM)]
    lambdas = [m.e_lambda for m in simams]
    try:
        # a shared model is normally in eval mode with frozen weights already: write only
        # what differs (nn.Module.__setattr__ is slow Python, ~250 modules per model)
        if any(mode for _, mode in modes):
            model.eval()
        for p, flag in flags:
            if flag:
                p.requires_grad_(False)
        if simam_lambda is not None:
            for m in simams:
                m.e_lambda = float(simam_lambda)
        yield
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, lam in zip(simams, lambdas, strict=True):
            m.e_lambda = lam
        for m, mode in modes:
            if m.training != mode:
                m.training = mode


def analyze(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    target: int | str | None = None,
    blocks: Sequence[str] | str = (DEFAULT_BLOCK,),
    method: str = "gradcam",
    simam_lambda: float | None = None,
) -> Analysis:
    """Predictions and every map for ``blocks`` from one forward and one backward pass.

    ``target=None`` explains the top-1 class. ``blocks`` takes bottleneck names or ``"all"``.
    ``simam_lambda`` changes SimAM's lambda for this call only.
    """
    info = model_info(model)
    if method not in METHODS:
        raise AnalysisError(f"unknown CAM method {method!r}; expected one of {', '.join(METHODS)}")
    cam_method = METHODS[method]
    block_names = _resolve_blocks(blocks)
    wanted = resolve_target(target, info.class_names)
    if simam_lambda is not None and not (np.isfinite(simam_lambda) and simam_lambda > 0):
        raise AnalysisError(f"lambda must be a positive number, got {simam_lambda}")
    device = next(model.parameters()).device
    x, picture = prepare_input(image, info, device)
    timings: dict[str, float] = {}
    with model_lock(model), analysis_state(model, simam_lambda), torch.enable_grad():
        start = time.perf_counter()
        with Recorder.for_blocks(model, block_names) as rec:
            x_in = x.clone().requires_grad_(True)
            logits = model(x_in)
            chosen = int(logits[0].argmax()) if wanted is None else wanted
            logits[0, chosen].backward()
        timings["pass"] = time.perf_counter() - start
        probs = torch.softmax(logits.detach()[0].float(), dim=0).cpu().numpy()
        result = _build_result(info, cam_method.name, chosen, simam_lambda, block_names,
                               picture, probs, timings)
        start = time.perf_counter()
        for block in block_names:
            for tap in taps_for_block(model, block):
                key = (block, tap.where)
                act = rec.activations[key].float().cpu().numpy()
                grad = rec.gradients.get(key)
                grad_np = np.zeros_like(act) if grad is None else grad.float().cpu().numpy()
                scaled, raw = compute_cam(
                    cam_method, act, grad_np, input_tensor=x, target=chosen,
                    model=model, target_layer=tap.module,
                )
                result._cams[key], result._raw[key] = scaled, raw
                if raw.max() <= 0:
                    result.notes.append(
                        f"{block}/{tap.where}: the map is empty after ReLU (only negative "
                        "evidence for this class)"
                    )
            _record_weights(result, rec, block)
        timings["cams"] = time.perf_counter() - start
    LOG.debug("analysed %s: %s, target %d, blocks %s, pass %.0f ms, cams %.0f ms",
              result.model_name, cam_method.name, chosen, ",".join(block_names),
              timings["pass"] * 1e3, timings["cams"] * 1e3)
    return result


def _build_result(
    info: ModelInfo, method: str, chosen: int, lam: float | None, blocks: tuple[str, ...],
    picture: np.ndarray, probs: np.ndarray, timings: dict[str, float],
) -> Analysis:
    top = np.argsort(-probs)[:5]
    predictions = [Prediction(int(i), info.class_names[i], float(probs[i])) for i in top]
    has_lambda = info.kind.has_lambda
    if has_lambda:
        lam = lam if lam is not None else info.simam_lambda
    return Analysis(
        model_name=info.name or info.title, arch=info.arch, method=method, target=chosen,
        target_name=info.class_names[chosen], simam_lambda=lam if has_lambda else None,
        blocks=blocks, image=picture, predictions=predictions,
        probabilities=probs.astype(np.float32), timings=timings,
    )


def _record_weights(result: Analysis, rec: Recorder, block: str) -> None:
    """The block's weights from the recorder, each squeezed to its native shape."""
    weights: dict[str, np.ndarray] = {}
    for (b, shape), value in rec.gate_values.items():
        if b != block:
            continue
        array = value[0].float().cpu().numpy()
        if shape == "channel":
            array = array.reshape(-1)
        elif shape == "spatial":
            array = array.reshape(array.shape[-2:])
        weights[shape] = array
    if weights:
        result._weights[block] = weights
