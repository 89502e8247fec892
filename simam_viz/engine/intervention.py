"""Interventions: run a model again with its attention weights replaced by counterfactuals.

CAM tools show where a model looks; an intervention says what an attention module contributes
to a decision. Every module here multiplies its input by weights from a sigmoid child
(:mod:`simam_viz.networks.kinds`), so the counterfactual is exact and cheap: forward hooks on
those children record the weights the module computes *now* (on the features it receives in
this pass, upstream interventions included), and a forward hook on the module returns
``input * transform(weights)`` in place of its output. The module's own arithmetic is never
copied, so the same code serves SE, ECA, CBAM and SimAM; CBAM's weights are its channel gate
times its spatial gate, the product it applies.

Modes (what stays of the weights ``w`` of each changed module, per image):

``identity``      every weight 1: the module removed;
``constant``      every weight the mean of ``w``: the overall gain kept, all selectivity gone;
``channel_mean``  each channel's weights their mean over positions (what SE could have done);
``spatial_mean``  each position's weights their mean over channels (what a spatial gate could);
``exact``         SimAM only: Eqn (2)'s exact minimum per neuron, the mean and variance taken
                  over the *other* M - 1 neurons of its channel instead of Eqn (5)'s shortcut
                  over all M.

:func:`intervene` holds the engine's per-model lock and restores the model (modes, hooks,
lambda, ``requires_grad``) before it lets go, as :func:`~simam_viz.engine.analysis.analyze`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn
from torchvision.models import resnet as tv_resnet

from simam_viz.engine.analysis import (
    analysis_state,
    model_lock,
    prepare_input,
    resolve_target,
)
from simam_viz.engine.cam_methods import METHODS, compute_cam
from simam_viz.errors import AnalysisError
from simam_viz.networks.kinds import kind_of_module
from simam_viz.networks.models import (
    BLOCKS,
    DEFAULT_BLOCK,
    STAGE_BLOCKS,
    attention_module,
    model_info,
)
from simam_viz.networks.taps import Recorder, Tap, weight_gates

__all__ = [
    "MODES",
    "Intervention",
    "attention_blocks",
    "exact_simam_weights",
    "intervene",
    "intervened",
    "intervention_effects",
    "replace_weights",
]

LOG = logging.getLogger(__name__)

MODES: dict[str, str] = {
    "identity": "attention removed (every weight 1)",
    "constant": "every weight the module's mean weight (gain kept, selectivity removed)",
    "channel_mean": "each channel's weights averaged over positions (channel part only)",
    "spatial_mean": "each position's weights averaged over channels (spatial part only)",
    "exact": "Eqn (2)'s exact minimum: mean and variance over the other M - 1 neurons",
}
"""Every intervention mode with what it keeps of the weights, in the order views offer them."""


@dataclass
class Intervention:
    """What changing the attention of ``blocks`` did to one image's decision and Grad-CAM.

    Probabilities are the softmax probability of ``target``; ``kl`` is KL(p_ref || p) in nats
    over all classes; ``cam_ref`` and ``cam`` are Grad-CAM of ``target`` at ``cam_block``
    (input resolution, min-max scaled to [0, 1]); ``cam_spearman`` is their rank correlation
    (0 when the changed map is flat, NaN when the reference map is). ``per_block`` (with
    ``per_block=True``) gives ``{"prob", "kl", "top1"}`` for each block changed alone.
    """

    model_name: str
    arch: str
    mode: str
    blocks: tuple[str, ...]
    target: int
    target_name: str
    prob_ref: float
    prob: float
    top1_ref: int
    top1: int
    kl: float
    cam_ref: np.ndarray
    cam: np.ndarray
    cam_spearman: float
    cam_block: str
    simam_lambda: float | None
    image: np.ndarray
    per_block: dict[str, dict[str, float | int]] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def prob_change(self) -> float:
        """``prob - prob_ref``: what the changed attention did to the target's probability."""
        return self.prob - self.prob_ref

    @property
    def flipped(self) -> bool:
        """Whether the top-1 class changed."""
        return self.top1 != self.top1_ref

    def summary(self) -> dict[str, object]:
        """Every scalar (and the per-block table) as plain Python, for JSON exports."""
        return {
            "model": self.model_name, "arch": self.arch, "mode": self.mode,
            "mode_text": MODES[self.mode], "blocks": list(self.blocks),
            "target": self.target, "target_name": self.target_name,
            "prob_ref": self.prob_ref, "prob": self.prob, "prob_change": self.prob_change,
            "top1_ref": self.top1_ref, "top1": self.top1, "flipped": self.flipped,
            "kl": self.kl, "cam_block": self.cam_block, "cam_spearman": self.cam_spearman,
            "simam_lambda": self.simam_lambda, "per_block": self.per_block,
        }


# --- the counterfactual weights ----------------------------------------------------------------


def exact_simam_weights(x: torch.Tensor, lam: float) -> torch.Tensor:
    """SimAM's weights from Eqn (2)'s exact minimum (paper Eqns 3-4, leave-one-out statistics).

    For neuron ``t`` of a channel with ``M`` neurons, ``mu_t`` and ``sigma_t^2`` are the mean
    and variance (divided by ``M - 1``) of the other ``M - 1`` neurons, and the weight is
    ``sigmoid((t - mu_t)^2 / (4 (sigma_t^2 + lam)) + 0.5)``: the inverse of the minimal energy
    ``4 (sigma^2 + lam) / ((t - mu)^2 + 2 sigma^2 + 2 lam)``, as Eqn (6) uses it. Computed in
    float64 from per-channel sums with the channel mean removed first, so no precision is lost
    to cancellation; returned in ``x``'s dtype.
    """
    m = x.shape[-1] * x.shape[-2]
    if m < 3:
        raise AnalysisError(f"the exact minimum needs at least 3 neurons per channel, got {m}")
    xd = x.detach().to(torch.float64)
    xd = xd - xd.mean(dim=(2, 3), keepdim=True)
    others_sum = xd.sum(dim=(2, 3), keepdim=True) - xd
    others_sq = (xd * xd).sum(dim=(2, 3), keepdim=True) - xd * xd
    mu = others_sum / (m - 1)
    var = ((others_sq - others_sum * mu) / (m - 1)).clamp_min(0.0)
    inv_energy = (xd - mu).pow(2) / (4 * (var + lam)) + 0.5
    return torch.sigmoid(inv_energy).to(x.dtype)


def _as_broadcast(shape: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A gate's output reshaped to broadcast against the module's input (B, C, H, W)."""
    b = like.shape[0]
    if shape == "channel":
        return value.reshape(b, -1, 1, 1)
    if shape == "spatial":
        return value.reshape(b, 1, *like.shape[-2:])
    return value


def replace_weights(mode: str, weights: torch.Tensor, x: torch.Tensor, lam: float | None = None
                    ) -> torch.Tensor:
    """The counterfactual weights of ``mode`` for a module's (B, C, H, W) weights on ``x``.

    ``weights`` is what the module multiplies ``x`` by, expanded to ``x``'s shape. A pure
    function of tensors: the hooks call it, and tests can call it on arrays of their own.
    """
    if mode == "identity":
        return torch.ones_like(weights)
    if mode == "constant":
        return weights.mean(dim=(1, 2, 3), keepdim=True).expand_as(weights)
    if mode == "channel_mean":
        return weights.mean(dim=(2, 3), keepdim=True).expand_as(weights)
    if mode == "spatial_mean":
        return weights.mean(dim=1, keepdim=True).expand_as(weights)
    if mode == "exact":
        if lam is None:
            raise AnalysisError("the exact mode needs SimAM's lambda")
        return exact_simam_weights(x, lam)
    raise AnalysisError(f"unknown intervention mode {mode!r}; expected one of {', '.join(MODES)}")


@contextmanager
def intervened(model: nn.Module, blocks: Sequence[str], mode: str) -> Iterator[None]:
    """Within the block, the attention modules of ``blocks`` apply ``mode``'s weights.

    Hooks only: nothing of the model is edited, and every hook is removed on exit (also on an
    error). The caller holds the model's lock. Gradients flow through the new weights as they
    would through the module's own.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for block in blocks:
            module = attention_module(model, block)
            if module is None:
                raise AnalysisError(f"{block} has no attention module to change")
            handles += _hook_module(module, mode)
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook_module(module: nn.Module, mode: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that record the module's weights and replace its output by ``x * new weights``."""
    seen: dict[str, torch.Tensor] = {}

    def keep(shape: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(mod: nn.Module, args: object, output: torch.Tensor) -> None:
            seen[shape] = output
        return hook

    def replace(mod: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
                ) -> torch.Tensor:
        x = args[0]
        weights = torch.ones_like(x)
        for shape, value in seen.items():
            weights = weights * _as_broadcast(shape, value, x)
        seen.clear()
        return x * replace_weights(mode, weights, x, getattr(mod, "e_lambda", None))

    handles = [gate.register_forward_hook(keep(shape))
               for shape, gate in weight_gates(module).items()]
    handles.append(module.register_forward_hook(replace))
    return handles


# --- the API -----------------------------------------------------------------------------------


def attention_blocks(model: nn.Module) -> tuple[str, ...]:
    """The bottlenecks of ``model`` that hold an attention module, in network order."""
    return tuple(b for b in BLOCKS if attention_module(model, b) is not None)


def _validate(model: nn.Module, mode: str, blocks: Sequence[str] | None, cam_block: str,
              simam_lambda: float | None) -> tuple[str, ...]:
    """Every argument checked before any work: one-line errors, nothing run."""
    if mode not in MODES:
        raise AnalysisError(f"unknown intervention mode {mode!r}; expected one of "
                            f"{', '.join(MODES)}")
    if cam_block not in BLOCKS:
        raise AnalysisError(f"unknown block {cam_block!r}; expected {BLOCKS[0]} ... {BLOCKS[-1]}")
    if simam_lambda is not None and not (
            isinstance(simam_lambda, int | float) and math.isfinite(simam_lambda)
            and simam_lambda > 0):
        raise AnalysisError(f"lambda must be a positive number, got {simam_lambda!r}")
    available = attention_blocks(model)
    if not available:
        raise AnalysisError("this model has no attention module to change")
    if blocks is None:
        chosen = available
    else:
        if isinstance(blocks, str):
            blocks = (blocks,)
        chosen = tuple(dict.fromkeys(blocks))
        if not chosen:
            raise AnalysisError("no block given to change")
        for block in chosen:
            if block not in BLOCKS:
                raise AnalysisError(
                    f"unknown block {block!r}; expected {BLOCKS[0]} ... {BLOCKS[-1]}")
            if block not in available:
                raise AnalysisError(f"{block} has no attention module to change")
    for block in chosen:
        kind = kind_of_module(attention_module(model, block))
        if mode not in kind.interventions:
            raise AnalysisError(f"mode {mode!r} does not apply to {kind.label}; it takes "
                                f"{', '.join(kind.interventions)}")
    return chosen


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.detach()[0].double(), dim=0)


def _kl(p_ref: torch.Tensor, p: torch.Tensor) -> float:
    """KL(p_ref || p) in nats; classes with p_ref = 0 add nothing."""
    log_ref = torch.log(p_ref.clamp_min(1e-300))
    log_p = torch.log(p.clamp_min(1e-300))
    return float(torch.sum(torch.where(p_ref > 0, p_ref * (log_ref - log_p), 0.0)).clamp_min(0))


def _gradcam_pass(model: nn.Module, x: torch.Tensor, cam_block: str, target: int | None
                  ) -> tuple[torch.Tensor, int, np.ndarray]:
    """One forward and backward: probabilities, the target, Grad-CAM at ``cam_block``."""
    tap = Tap(cam_block, "output", model.get_submodule(cam_block))
    with Recorder([tap]) as rec:
        x_in = x.clone().requires_grad_(True)
        logits = model(x_in)
        chosen = int(logits[0].argmax()) if target is None else target
        logits[0, chosen].backward()
    act = rec.activations[(cam_block, "output")].float().cpu().numpy()
    grad = rec.gradients.get((cam_block, "output"))
    grad_np = np.zeros_like(act) if grad is None else grad.float().cpu().numpy()
    cam, _ = compute_cam(METHODS["gradcam"], act, grad_np, input_tensor=x, target=chosen)
    return _probabilities(logits), chosen, cam


def _spearman(reference: np.ndarray, changed: np.ndarray) -> float:
    """Rank correlation of two maps under the trust checks' flat-map rule."""
    if np.ptp(reference) == 0:
        return math.nan
    if np.ptp(changed) == 0:
        return 0.0
    return float(spearmanr(reference.ravel(), changed.ravel()).statistic)


def intervene(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    mode: str,
    target: int | str | None = None,
    blocks: Sequence[str] | None = None,
    per_block: bool = False,
    simam_lambda: float | None = None,
    cam_block: str = DEFAULT_BLOCK,
) -> Intervention:
    """Run ``model`` as it is and with the attention of ``blocks`` changed by ``mode``.

    ``blocks=None`` changes every attention block at once; ``target=None`` follows the
    reference run's top-1 class. ``per_block=True`` also runs each block of ``blocks``
    changed alone (forward passes only). ``simam_lambda`` sets SimAM's lambda for both runs.
    Raises :class:`~simam_viz.errors.AnalysisError` (one line) for a bad argument, before
    any work.
    """
    info = model_info(model)
    chosen = _validate(model, mode, blocks, cam_block, simam_lambda)
    wanted = resolve_target(target, info.class_names)
    device = next(model.parameters()).device
    x, picture = prepare_input(image, info, device)
    timings: dict[str, float] = {}
    with model_lock(model), analysis_state(model, simam_lambda), torch.enable_grad():
        start = time.perf_counter()
        with _keeping_inputs(model, per_block) as inputs:
            p_ref, chosen_target, cam_ref = _gradcam_pass(model, x, cam_block, wanted)
        with intervened(model, chosen, mode):
            p, _, cam = _gradcam_pass(model, x, cam_block, chosen_target)
        timings["passes"] = time.perf_counter() - start
        table = None
        if per_block:
            start = time.perf_counter()
            table = _effects(model, x, mode, {b: (b,) for b in chosen}, p_ref, chosen_target,
                             inputs)
            timings["per_block"] = time.perf_counter() - start
        lam = _simam_lambda(model) if info.kind.has_lambda else None
    result = Intervention(
        model_name=info.name or info.title, arch=info.arch, mode=mode, blocks=chosen,
        target=chosen_target, target_name=info.class_names[chosen_target],
        prob_ref=float(p_ref[chosen_target]), prob=float(p[chosen_target]),
        top1_ref=int(p_ref.argmax()), top1=int(p.argmax()), kl=_kl(p_ref, p),
        cam_ref=cam_ref, cam=cam, cam_spearman=_spearman(cam_ref, cam), cam_block=cam_block,
        simam_lambda=simam_lambda if simam_lambda is not None else lam, image=picture,
        per_block=table, timings=timings,
    )
    LOG.debug("intervened %s: %s on %d blocks, target %d, p %.3f -> %.3f", result.model_name,
              mode, len(chosen), chosen_target, result.prob_ref, result.prob)
    return result


def _effects(model: nn.Module, x: torch.Tensor, mode: str,
             block_sets: Mapping[str, Sequence[str]], p_ref: torch.Tensor, target: int,
             inputs: Mapping[str, torch.Tensor] | None) -> dict[str, dict[str, float | int]]:
    """Forward passes only: for each named set of blocks changed together, the target's
    probability, KL(p_ref || p) and the top-1 class. The caller holds the lock and state.

    Everything upstream of a set's first changed block is the reference run's, so where the
    reference pass kept each bottleneck's input (:func:`_keeping_inputs`) each pass starts at
    the input its first changed block had instead of at the image: 16 blocks alone cost about
    half of 16 whole passes. The numbers are the same modules on the same tensors, so the same.
    """
    table: dict[str, dict[str, float | int]] = {}
    with torch.no_grad():
        for name, blocks in block_sets.items():
            with intervened(model, blocks, mode):
                if inputs is None:
                    logits = model(x)
                else:
                    first = min(blocks, key=BLOCKS.index)
                    logits = _forward_from(model, first, inputs[first])
                p = _probabilities(logits)
            table[name] = {"prob": float(p[target]), "kl": _kl(p_ref, p), "top1": int(p.argmax())}
    return table


def _can_start_at_a_block(model: nn.Module) -> bool:
    """Whether a pass may start at a bottleneck: the forward is torchvision's ResNet one, the
    block layout is [3, 4, 6, 3], and no hook on the model or its stages would be skipped."""
    forward = getattr(type(model), "_forward_impl", None)
    stages = [getattr(model, f"layer{i + 1}", None) for i in range(len(STAGE_BLOCKS))]
    return (isinstance(model, tv_resnet.ResNet)
            and type(model).forward is tv_resnet.ResNet.forward
            and forward is tv_resnet.ResNet._forward_impl
            and all(isinstance(stage, nn.Sequential) and len(stage) == n
                    for stage, n in zip(stages, STAGE_BLOCKS, strict=True))
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (model, *stages)))


@contextmanager
def _keeping_inputs(model: nn.Module, wanted: bool = True
                    ) -> Iterator[dict[str, torch.Tensor] | None]:
    """Within the block, the model's passes keep each bottleneck's input (detached), so the
    reference pass the caller runs anyway also serves :func:`_effects`; yields None (and
    hooks nothing) when not ``wanted`` or when a pass may not start at a block."""
    if not wanted or not _can_start_at_a_block(model):
        yield None
        return
    inputs: dict[str, torch.Tensor] = {}

    def keep(block: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[block] = args[0].detach()  # no block writes its input in place
        return hook

    handles = [model.get_submodule(b).register_forward_pre_hook(keep(b)) for b in BLOCKS]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def _forward_from(model: nn.Module, first: str, h: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ResNet._forward_impl`` from bottleneck ``first``'s input ``h`` on."""
    for block in BLOCKS[BLOCKS.index(first):]:
        h = model.get_submodule(block)(h)
    return model.fc(torch.flatten(model.avgpool(h), 1))


def intervention_effects(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    mode: str,
    block_sets: Mapping[str, Sequence[str]],
    target: int | str | None = None,
    simam_lambda: float | None = None,
) -> dict[str, dict[str, float | int]]:
    """What ``mode`` does to the decision for each named set of blocks, forward passes only.

    For studies over many images (no Grad-CAM): ``{"layer1": ("layer1.0", ...), "all": ...}``
    gives ``{name: {"prob", "kl", "top1"}}`` plus ``"reference": {"prob", "kl": 0, "top1"}``
    for the unchanged model. ``target=None`` follows the reference run's top-1 class.
    """
    info = model_info(model)
    if not block_sets:
        raise AnalysisError("no block set given to change")
    checked = {name: _validate(model, mode, blocks, DEFAULT_BLOCK, simam_lambda)
               for name, blocks in block_sets.items()}
    wanted = resolve_target(target, info.class_names)
    x, _ = prepare_input(image, info, next(model.parameters()).device)
    with model_lock(model), analysis_state(model, simam_lambda), torch.no_grad():
        with _keeping_inputs(model) as inputs:
            p_ref = _probabilities(model(x))
        chosen = int(p_ref.argmax()) if wanted is None else wanted
        table = {"reference": {"prob": float(p_ref[chosen]), "kl": 0.0,
                               "top1": int(p_ref.argmax()), "target": chosen}}
        table.update(_effects(model, x, mode, checked, p_ref, chosen, inputs))
    return table


def _simam_lambda(model: nn.Module) -> float | None:
    """The lambda the SimAM modules use now (inside :func:`analysis_state`)."""
    for module in model.modules():
        lam = getattr(module, "e_lambda", None)
        if lam is not None:
            return float(lam)
    return None
