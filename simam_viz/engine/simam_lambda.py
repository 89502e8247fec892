"""Lambda, measured: SimAM's decision and weights against its one hyper-parameter.

SimAM's weight of a neuron is ``sigmoid((t - mu)^2 / (4 (sigma^2 + lambda)) + 0.5)``. Where a
channel's variance is small against lambda, every weight of that channel is close to
``sigmoid(0.5) ~ 0.62``: the module scales the channel and selects nothing. The share of such
channels per block, ``lambda / (sigma^2 + lambda) > 0.5`` (equivalently ``sigma^2 < lambda``),
says where a network's SimAM modules are switched off by lambda on this image. The paper uses
1e-4 on CIFAR and 0.1 on ImageNet; :func:`lambda_sweep` shows what the values in between and
beyond do to the target's probability and the weights' range.

Every pass is one forward without gradients under the model's lock, in
:func:`~simam_viz.engine.analysis.analysis_state` (lambda set for the pass, restored after).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from simam_viz.engine.analysis import analysis_state, model_lock, prepare_input, resolve_target
from simam_viz.errors import AnalysisError
from simam_viz.networks.attention import SimAM
from simam_viz.networks.models import BLOCKS, attention_module, model_info

__all__ = [
    "DEFAULT_LAMBDAS",
    "LambdaRegime",
    "LambdaSweep",
    "lambda_regime",
    "lambda_sweep",
]

LOG = logging.getLogger(__name__)

DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 1, 11))
"""1e-4 (the paper's CIFAR value) to 10 in half decades; 0.1 (ImageNet) is among them."""


@dataclass(frozen=True)
class LambdaRegime:
    """Per SimAM block, the share of channels where lambda outweighs the channel's variance.

    ``share[block]`` is the fraction of channels with ``lambda / (sigma^2 + lambda) > 0.5``,
    ``sigma^2`` the channel's variance over its ``M`` positions divided by ``M - 1`` (what the
    module computes); in those channels every weight lies within
    ``[sigmoid(0.5), sigmoid(0.5 + M / 4))`` of a flat ~0.62 only by the neuron's own distance.
    """

    lam: float
    share: dict[str, float]

    @property
    def mean_share(self) -> float:
        """The share over all blocks, each block weighted alike."""
        return float(np.mean(list(self.share.values()))) if self.share else math.nan


@dataclass(frozen=True)
class LambdaSweep:
    """The target's probability, the weights' range and the regime at each lambda."""

    model_name: str
    target: int
    target_name: str
    model_lambda: float
    lambdas: np.ndarray
    prob: np.ndarray
    low: np.ndarray
    high: np.ndarray
    regimes: tuple[LambdaRegime, ...]

    def summary(self) -> dict[str, object]:
        """Plain Python for JSON exports."""
        return {
            "model": self.model_name, "target": self.target, "target_name": self.target_name,
            "model_lambda": self.model_lambda, "lambdas": self.lambdas.tolist(),
            "prob": self.prob.tolist(), "weight_low": self.low.tolist(),
            "weight_high": self.high.tolist(),
            "flat_channel_share": [r.share for r in self.regimes],
        }


def _simam_blocks(model: nn.Module) -> list[tuple[str, SimAM]]:
    found = [(b, attention_module(model, b)) for b in BLOCKS]
    simams = [(b, m) for b, m in found if isinstance(m, SimAM)]
    if not simams:
        raise AnalysisError("lambda belongs to SimAM; this model has no SimAM module")
    return simams


def _check(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.floating) or not (
            math.isfinite(lam) and lam > 0):
        raise AnalysisError(f"lambda must be a positive number, got {lam!r}")
    return float(lam)


def _pass(model: nn.Module, x: torch.Tensor, simams: list[tuple[str, SimAM]]
          ) -> tuple[torch.Tensor, float, float, dict[str, float]]:
    """One forward: probabilities, the weights' min and max, the flat-channel share per block."""
    low, high = math.inf, -math.inf
    share: dict[str, float] = {}
    handles = []

    def regime(block: str):
        def hook(module: SimAM, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0].detach().double()
            m = inp.shape[2] * inp.shape[3]
            var = inp.var(dim=(2, 3), correction=1) if m > 1 else torch.zeros(inp.shape[:2])
            lam = module.e_lambda
            share[block] = float((lam / (var[0] + lam) > 0.5).double().mean())
        return hook

    def weights(module: nn.Module, args: object, output: torch.Tensor) -> None:
        nonlocal low, high
        low = min(low, float(output.min()))
        high = max(high, float(output.max()))

    try:
        for block, module in simams:
            handles.append(module.register_forward_pre_hook(regime(block)))
            handles.append(module.sigmoid.register_forward_hook(weights))
        with torch.no_grad():
            probs = torch.softmax(model(x)[0].double(), dim=0)
    finally:
        for handle in handles:
            handle.remove()
    return probs, low, high, share


def lambda_sweep(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    lambdas: Sequence[float] | None = None,
    target: int | str | None = None,
) -> LambdaSweep:
    """The target's probability and the weights' range with every SimAM block at each lambda.

    ``target=None`` follows the top-1 class at the model's own lambda. ``lambdas`` defaults to
    :data:`DEFAULT_LAMBDAS` (1e-4 to 10, log-spaced). One forward pass per lambda.
    """
    simams = _simam_blocks(model)
    values = [_check(v) for v in (DEFAULT_LAMBDAS if lambdas is None else lambdas)]
    if not values:
        raise AnalysisError("no lambda given to sweep")
    info = model_info(model)
    wanted = resolve_target(target, info.class_names)
    device = next(model.parameters()).device
    x, _ = prepare_input(image, info, device)
    start = time.perf_counter()
    with model_lock(model):
        own = simams[0][1].e_lambda
        with analysis_state(model, None):
            reference, *_ = _pass(model, x, simams)
        chosen = int(reference.argmax()) if wanted is None else wanted
        rows = []
        for lam in values:
            with analysis_state(model, lam):
                probs, low, high, share = _pass(model, x, simams)
            rows.append((float(probs[chosen]), low, high, LambdaRegime(lam, share)))
    LOG.debug("lambda sweep of %s: %d values in %.2f s", info.name or info.title, len(values),
              time.perf_counter() - start)
    return LambdaSweep(
        model_name=info.name or info.title, target=chosen,
        target_name=info.class_names[chosen], model_lambda=float(own),
        lambdas=np.asarray(values), prob=np.asarray([r[0] for r in rows]),
        low=np.asarray([r[1] for r in rows]), high=np.asarray([r[2] for r in rows]),
        regimes=tuple(r[3] for r in rows),
    )


def lambda_regime(
    model: nn.Module, image: Image.Image | torch.Tensor, *, simam_lambda: float | None = None
) -> LambdaRegime:
    """Per SimAM block, the share of channels lambda flattens, at ``simam_lambda`` (None: the
    model's own), from one forward pass."""
    simams = _simam_blocks(model)
    if simam_lambda is not None:
        simam_lambda = _check(simam_lambda)
    info = model_info(model)
    x, _ = prepare_input(image, info, next(model.parameters()).device)
    with model_lock(model), analysis_state(model, simam_lambda):
        _, _, _, share = _pass(model, x, simams)
        lam = simams[0][1].e_lambda
    return LambdaRegime(float(lam), share)
