"""One SimAM neuron explained: its energy (Eqn 5), its weight (Eqn 6) and the exact Eqn (2).

SimAM gives every neuron ``t`` of a channel the weight ``sigmoid(1 / e*)``, where ``e*`` is the
minimum of the energy of Eqn (2): how well a line ``w x + b`` separates ``t`` (label +1) from the
channel's other ``M - 1`` neurons (label -1), plus ``lambda w^2``. The paper minimises Eqn (2) in
closed form (Eqns 3-4) with the mean and variance of the *other* neurons, then swaps those for
the statistics of the *whole* channel so one mean and one variance serve all ``M`` neurons
(Eqn 5, "all pixels in a single channel follow the same distribution"). This module shows both
numbers for one neuron, so the approximation is visible instead of hidden:

* ``energy`` / ``importance`` / ``weight``: Eqn (5) and (6) exactly as :class:`SimAM` computes
  them (mean over all ``M`` neurons, variance normalised by ``n = M - 1`` as in the authors'
  code, not by ``M`` as Eqn (5)'s text says); ``module_weight`` is what the module produced.
* ``energy_exact`` with its minimiser ``w``, ``b``: the true minimum of Eqn (2) over
  ``(w, b)`` with the other ``M - 1`` neurons, solved from the normal equations in float64.
* ``paper_w``, ``paper_b``: Eqns (3)-(4) as printed. The printed sign of Eqn (3) is wrong: the
  minimiser is ``w = +2 (t - mu_t) / ((t - mu_t)^2 + 2 sigma_t^2 + 2 lambda)`` (a neuron above
  the others' mean must map to +1, so ``w`` has the sign of ``t - mu_t``). The printed pair maps
  ``t`` towards -1 and the others towards +1; ``energy_at_paper`` shows how far from minimal that
  is. Eqn (5)'s value is unaffected (``e*`` depends on ``w`` only through ``w^2``).

The work is split so the app can reuse it: :func:`record_simam` runs the model once and returns
the SimAM module's input and weights for a block; :func:`explain_from_arrays` is a pure function
of those arrays (clicking another neuron needs no new forward pass); :func:`explain_neuron` is
the two together. :func:`energy_curve`, :func:`weight_curve` and :func:`separating_line` are
vectorised formulas the app can evaluate when only a lambda slider moves.

Note for callers holding an :class:`~simam_viz.engine.analysis.Analysis`: it keeps SimAM's 3-D
weights
(``attention(block)``) but not the SimAM input, and ``t`` cannot be recovered from a weight (the
weight depends on ``(t - mean)^2`` only), so a neuron's ``t`` needs :func:`record_simam`. The
``before`` tap of ``simam_viz.networks.taps`` (the output of ``conv2[0]``) is exactly the SimAM
input.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from simam_viz.engine.analysis import analysis_state, model_lock, prepare_input
from simam_viz.errors import AnalysisError
from simam_viz.networks.attention import SimAM
from simam_viz.networks.models import BLOCKS, DEFAULT_BLOCK, attention_module, model_info

__all__ = [
    "SimAMRecord",
    "energy_curve",
    "eq2_energy",
    "explain_from_arrays",
    "explain_neuron",
    "record_simam",
    "separating_line",
    "solve_eq2",
    "weight_curve",
]

LOG = logging.getLogger(__name__)

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class SimAMRecord:
    """What one block's SimAM module saw and produced for one image (batch item 0).

    ``values`` is the module's input and ``weights`` the output of its ``sigmoid`` child, both
    C x h x w float64 (an exact upcast of what the model computed), ``lam`` the lambda in use.
    """

    block: str
    values: np.ndarray
    weights: np.ndarray
    lam: float


# --- pure formulas -----------------------------------------------------------------------------


def energy_curve(t: ArrayLike, mean: float, variance: float, lam: float) -> np.ndarray:
    """Eqn (5): ``e* = 4 (var + lam) / ((t - mean)^2 + 2 var + 2 lam)``, vectorised over ``t``.

    ``mean`` and ``variance`` are the channel's statistics as SimAM computes them (variance
    normalised by ``M - 1``); pass the other neurons' statistics to get Eqn (2)'s exact minimum.
    """
    t = np.asarray(t, dtype=np.float64)
    return 4 * (variance + lam) / ((t - mean) ** 2 + 2 * variance + 2 * lam)


def weight_curve(t: ArrayLike, mean: float, variance: float, lam: float) -> np.ndarray:
    """SimAM's weight ``sigmoid(1 / e*)`` for neuron values ``t`` (Eqn 6), vectorised.

    Uses the module's own expression ``1/e* = (t - mean)^2 / (4 (var + lam)) + 1/2`` so the
    curve is the module's, not a re-derivation; ``1/e* >= 1/2`` keeps ``exp`` from overflowing.
    """
    t = np.asarray(t, dtype=np.float64)
    importance = (t - mean) ** 2 / (4 * (variance + lam)) + 0.5
    return 1.0 / (1.0 + np.exp(-importance))


def separating_line(
    t: ArrayLike, mean_others: float, variance_others: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """The minimiser ``(w, b)`` of Eqn (2) in closed form, with the sign that minimises.

    ``w = 2 (t - mu) / ((t - mu)^2 + 2 sigma^2 + 2 lam)`` and ``b = -(t + mu) w / 2`` with
    ``mu``, ``sigma^2`` over the other neurons (sigma^2 normalised by their count, M - 1). Eqn
    (3) prints ``w`` with a minus sign, which maximises the fit error instead; the line always
    crosses zero half-way between ``t`` and ``mu``, at ``x = (t + mu) / 2``.
    """
    t = np.asarray(t, dtype=np.float64)
    w = 2 * (t - mean_others) / ((t - mean_others) ** 2 + 2 * variance_others + 2 * lam)
    b = -0.5 * (t + mean_others) * w
    return w, b


def eq2_energy(w: float, b: float, t: float, others: np.ndarray, lam: float) -> float:
    """Eqn (2) at ``(w, b)``, for checking any candidate pair (e.g. the printed Eqns 3-4).

    ``mean_i (-1 - (w x_i + b))^2 + (1 - (w t + b))^2 + lam w^2``, ``x_i`` the other neurons.
    """
    others = np.asarray(others, dtype=np.float64)
    fit_others = np.mean((-1.0 - (w * others + b)) ** 2)
    return float(fit_others + (1.0 - (w * t + b)) ** 2 + lam * w**2)


def solve_eq2(t: float, others: np.ndarray, lam: float) -> tuple[float, float, float]:
    """The exact minimum of Eqn (2): ``(w, b, energy)`` by linear least squares in float64.

    Eqn (2) is a quadratic in ``(w, b)``: it is ``||A p - y||^2`` with one row
    ``[x_i, 1] / sqrt(M-1) -> -1 / sqrt(M-1)`` per other neuron, ``[t, 1] -> 1`` and
    ``[sqrt(lam), 0] -> 0``. Solving it with ``lstsq`` (not through Eqns 3-4) makes it an
    independent check of the closed form. Values are centred on the others' mean first, which
    leaves ``w`` unchanged and shifts ``b`` by ``w * centre``, so large offsets cost no accuracy.
    """
    others = np.asarray(others, dtype=np.float64).ravel()
    count = others.size
    if count < 1:
        raise AnalysisError("Eqn (2) needs at least one other neuron in the channel")
    centre = float(others.mean())
    xs, tc = others - centre, float(t) - centre
    scale = 1.0 / math.sqrt(count)
    a = np.empty((count + 2, 2))
    a[:count, 0], a[:count, 1] = scale * xs, scale
    a[count] = (tc, 1.0)
    a[count + 1] = (math.sqrt(lam), 0.0)
    y = np.concatenate([np.full(count, -scale), [1.0, 0.0]])
    (w, b_centred), *_ = np.linalg.lstsq(a, y, rcond=None)
    energy = eq2_energy(float(w), float(b_centred), tc, xs, lam)
    return float(w), float(b_centred - w * centre), energy


# --- validation --------------------------------------------------------------------------------


def _index(name: str, value: object, size: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise AnalysisError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not 0 <= int(value) < size:
        raise AnalysisError(f"{name} {value} out of range: {where} has {size} (0-{size - 1})")
    return int(value)


def _check_lambda(lam: object, what: str = "lambda") -> float:
    if isinstance(lam, bool) or not isinstance(lam, Real) or not (
        math.isfinite(float(lam)) and float(lam) > 0
    ):
        raise AnalysisError(f"{what} must be a positive number, got {lam!r}")
    return float(lam)


def _simam_at(model: nn.Module, block: object) -> SimAM:
    """The SimAM module of ``block``, or an AnalysisError saying why there is none."""
    if not isinstance(block, str) or block not in BLOCKS:
        raise AnalysisError(f"unknown block {block!r}; expected one of layer1.0 ... layer4.2")
    try:
        module = attention_module(model, block)
    except AttributeError as exc:
        raise AnalysisError(f"the model has no bottleneck {block}") from exc
    if not isinstance(module, SimAM):
        kind = type(module).__name__ if module is not None else "no attention module"
        raise AnalysisError(f"explaining a neuron needs a SimAM model; {block} has {kind}")
    return module


# --- arrays -> explanation ---------------------------------------------------------------------


def explain_from_arrays(
    values: np.ndarray,
    *,
    channel: int,
    y: int,
    x: int,
    lam: float,
    weights: np.ndarray | None = None,
    block: str | None = None,
) -> dict[str, Any]:
    """Explain neuron ``(channel, y, x)`` from a block's SimAM input (C x h x w); no model needed.

    ``weights`` (the module's recorded output, same shape) only fills ``module_weight``. All
    arithmetic is float64 on the given values. Keys: see :func:`explain_neuron`.
    """
    arr = np.asarray(values)
    if arr.ndim != 3 or arr.size == 0:
        raise AnalysisError(f"values must be a C x h x w array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AnalysisError("values must be finite")
    lam = _check_lambda(lam)
    n_ch, height, width = arr.shape
    where = block or "the array"
    channel = _index("channel", channel, n_ch, f"{where} (channels)")
    y = _index("y", y, height, f"{where} (rows)")
    x = _index("x", x, width, f"{where} (columns)")
    m = height * width
    if m < 2:
        raise AnalysisError(f"{where} has a 1x1 grid: SimAM's variance needs at least 2 neurons")
    ch = arr[channel].astype(np.float64)
    t = float(ch[y, x])

    # Eqns (5)-(6) as the module computes them: whole-channel mean, variance over n = M - 1.
    mean = float(ch.mean())
    variance = float(((ch - mean) ** 2).sum() / (m - 1))
    energy = float(energy_curve(t, mean, variance, lam))
    importance = (t - mean) ** 2 / (4 * (variance + lam)) + 0.5
    weight = float(weight_curve(t, mean, variance, lam))
    channel_weights = weight_curve(ch, mean, variance, lam)

    # Eqn (2) exactly: the target against the M - 1 others, minimised over (w, b).
    others = np.delete(ch.ravel(), y * width + x)
    mean_others, variance_others = float(others.mean()), float(others.var())
    w_opt, b_opt, energy_exact = solve_eq2(t, others, lam)
    closed_w, closed_b = (float(v) for v in separating_line(t, mean_others, variance_others, lam))
    paper_w = -closed_w  # Eqn (3) as printed: the opposite sign
    paper_b = -0.5 * (t + mean_others) * paper_w  # Eqn (4) with the printed w
    # Zero crossing and sides from the closed form: when t sits at the others' mean the
    # least-squares w is rounding noise (~1e-18) and -b/w a meaningless number, while the
    # closed form's w is exactly 0 (no crossing: NaN, nothing separated).
    threshold = 0.5 * (t + mean_others) if closed_w != 0 else float("nan")
    side_t = np.sign(closed_w * t + closed_b)
    separated = float(np.mean(np.sign(closed_w * others + closed_b) != side_t)) if side_t else 0.0

    module_weight = None
    if weights is not None:
        wts = np.asarray(weights)
        if wts.shape != arr.shape:
            raise AnalysisError(f"weights shape {wts.shape} differs from values {arr.shape}")
        module_weight = float(wts[channel, y, x])
    return {
        "block": block,
        "channel": channel,
        "y": y,
        "x": x,
        "grid": (height, width),
        "channels": n_ch,
        "M": m,
        "t": t,
        "mean": mean,
        "variance": variance,
        "variance_normaliser": m - 1,
        "lambda": lam,
        "energy": energy,
        "importance": float(importance),
        "weight": weight,
        "module_weight": module_weight,
        "weight_rank": int(1 + np.count_nonzero(channel_weights > weight)),
        "mean_others": mean_others,
        "variance_others": variance_others,
        "energy_exact": energy_exact,
        "w": w_opt,
        "b": b_opt,
        "closed_w": closed_w,
        "closed_b": closed_b,
        "energy_closed": float(energy_curve(t, mean_others, variance_others, lam)),
        "paper_w": paper_w,
        "paper_b": paper_b,
        "energy_at_paper": eq2_energy(paper_w, paper_b, t, others, lam),
        "approximation_gap": energy - energy_exact,
        "threshold": float(threshold),
        "separated": separated,
        "values": ch,
        "weights": channel_weights,
    }


# --- model -> arrays ---------------------------------------------------------------------------


def record_simam(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    block: str = DEFAULT_BLOCK,
    simam_lambda: float | None = None,
) -> SimAMRecord:
    """One forward pass recording the SimAM input and weights of ``block`` (no backward).

    Runs under the model's lock in eval mode without gradients. ``simam_lambda`` replaces the
    lambda of every SimAM module for this pass only, as :func:`~simam_viz.engine.analysis.analyze`
    does, so the block's input (and ``t``) changes with it and the weights stay comparable
    with ``analyze(..., simam_lambda=...)``; for lambda's effect on fixed inputs use
    :func:`explain_from_arrays` or :func:`weight_curve`. Training flags, ``requires_grad``,
    lambdas and hooks are restored even when the pass fails: the model is shared between the
    app's sessions.
    """
    module = _simam_at(model, block)
    if simam_lambda is not None:
        simam_lambda = _check_lambda(simam_lambda)
    try:
        info = model_info(model)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    device = next(model.parameters()).device
    inp, _ = prepare_input(image, info, device)
    seen: dict[str, torch.Tensor] = {}

    def keep_input(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["values"] = args[0].detach().clone()

    def keep_weights(mod: nn.Module, args: object, output: torch.Tensor) -> None:
        seen["weights"] = output.detach().clone()

    start = time.perf_counter()
    with model_lock(model), analysis_state(model, simam_lambda), torch.no_grad():
        handles = []
        try:
            handles.append(module.register_forward_pre_hook(keep_input))
            handles.append(module.sigmoid.register_forward_hook(keep_weights))
            model(inp)
        finally:
            for handle in handles:
                handle.remove()
        lam = module.e_lambda
    values = seen["values"][0].to(torch.float64).cpu().numpy()
    weights = seen["weights"][0].to(torch.float64).cpu().numpy()
    LOG.debug("recorded SimAM at %s (%s, lambda %g) in %.3f s", block,
              "x".join(map(str, values.shape)), lam, time.perf_counter() - start)
    return SimAMRecord(block=block, values=values, weights=weights, lam=lam)


def explain_neuron(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    block: str = DEFAULT_BLOCK,
    channel: int = 0,
    y: int = 0,
    x: int = 0,
    simam_lambda: float | None = None,
) -> dict[str, Any]:
    """Why SimAM gave neuron ``(channel, y, x)`` of ``block`` its weight, from one forward pass.

    Returns a dict; floats are Python floats computed in float64 from the module's input:

    * ``block``, ``channel``, ``y``, ``x``, ``grid`` (h, w), ``channels`` (C), ``M`` (h*w);
    * ``t``: the neuron's value (SimAM's input there); ``mean``, ``variance``: the channel's
      statistics as the module computes them (``variance_normaliser`` = M - 1); ``lambda``;
    * ``energy``: Eqn (5)'s e*; ``importance`` = 1/e*; ``weight`` = sigmoid(1/e*) (Eqn 6);
      ``module_weight``: the weight the module produced there (equal to ``weight`` to ~1e-7,
      float32 rounding); ``weight_rank``: 1 for the channel's highest weight;
    * ``energy_exact``, ``w``, ``b``: Eqn (2)'s true minimum and minimiser with the M - 1
      other neurons (``mean_others``, ``variance_others``); ``closed_w``, ``closed_b``,
      ``energy_closed``: the closed form with the sign that minimises (equal to ``w``, ``b``,
      ``energy_exact``); ``paper_w``, ``paper_b``: Eqns (3)-(4) as printed (opposite sign) and
      ``energy_at_paper``, Eqn (2) at that printed pair;
    * ``approximation_gap`` = ``energy - energy_exact``: the cost of Eqn (5)'s "same
      distribution" shortcut (whole-channel statistics instead of the others');
    * ``threshold``: where the line ``w x + b`` crosses zero ((t + mean_others) / 2);
      ``separated``: fraction of the other neurons it puts on the opposite side from ``t``;
    * ``values``, ``weights``: the channel's neuron values and formula weights (h x w float64).

    Raises :class:`AnalysisError` (one line) for an unknown block, a model without SimAM, an
    index that is not an integer or is out of range, or a non-positive lambda.
    """
    _simam_at(model, block)
    channels = _channels_in(model, block)
    if channels is not None:  # fail before the forward pass where the shape already tells
        _index("channel", channel, channels, f"{block} (channels)")
    for name, value in (("y", y), ("x", x)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise AnalysisError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    rec = record_simam(model, image, block=block, simam_lambda=simam_lambda)
    return explain_from_arrays(rec.values, channel=channel, y=y, x=x, lam=rec.lam,
                               weights=rec.weights, block=block)


def _channels_in(model: nn.Module, block: str) -> int | None:
    """Channels entering ``block``'s SimAM (``conv2[0].out_channels``), if the layout says so."""
    conv = model.get_submodule(block).conv2
    first = conv[0] if isinstance(conv, nn.Sequential) else conv
    return getattr(first, "out_channels", None)
