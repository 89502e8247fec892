"""How far to trust a map: faithfulness scores and the model-randomization sanity check.

A saliency map can look plausible and still say little about the model. Two kinds of check
answer that, and this module gives both for exactly the map
:func:`~simam_viz.engine.analysis.analyze`
shows for a (block, where, method) and a target class:

* :func:`faithfulness` perturbs the input where the map points and watches the target's
  softmax probability: pytorch-grad-cam's ROAD, DropInConfidence and IncreaseInConfidence
  (called as the library ships them, ROAD on a map whose ties are broken first), plus the
  deletion and insertion curves of RISE (Petsiuk et al. 2018), which the library lacks and
  which are written here. On request it scores two maps that know nothing of the model (a
  random one and a centred Gaussian) the same way, so each score has a reference point.
* :func:`sanity_check` re-initialises the model's layers from the logits down (Adebayo et al.
  2018, cascading randomization) on a private copy and measures how similar each new map still
  is to the trained model's. A map that barely changes when the weights it should explain are
  destroyed is not explaining them.

:data:`SCORES` and :data:`SANITY_SCORES` say, in one line each, which direction is better, so
the CLI and the app can print them next to the numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from simam_viz.engine.analysis import Analysis, analysis_state, analyze, model_lock, prepare_input
from simam_viz.errors import AnalysisError
from simam_viz.networks.models import BLOCKS, DEFAULT_BLOCK, model_info
from simam_viz.networks.taps import taps_for_block

__all__ = [
    "BASELINES",
    "CENTER_SIGMA",
    "RISE_STEPS",
    "ROAD_PERCENTILES",
    "SANITY_FLAT_RULE",
    "SANITY_LAYERS",
    "SANITY_MODES",
    "SANITY_SCORES",
    "SCORES",
    "SanityStep",
    "compare_maps",
    "faithfulness",
    "sanity_check",
]

logger = logging.getLogger(__name__)

SCORES: dict[str, tuple[str, str]] = {
    "road": (
        "higher is better",
        "ROAD (Rong et al. 2022): target probability kept when the least relevant pixels are "
        "imputed minus that kept when the most relevant are, halved; mean over 20-80%; ties "
        "in the map broken by a seeded, order-keeping jitter first",
    ),
    "drop_in_confidence": (
        "lower is better",
        "how far the target's probability falls when the image is multiplied by the map "
        "(0: no drop)",
    ),
    "increase_in_confidence": (
        "higher is better",
        "1 if multiplying the image by the map raises the target's probability, else 0",
    ),
    "deletion_auc": (
        "lower is better",
        "RISE deletion: area under the target's probability as the most relevant pixels are "
        "replaced by the mean colour first",
    ),
    "insertion_auc": (
        "higher is better",
        "RISE insertion: area under the target's probability as the most relevant pixels are "
        "revealed first on a blurred copy",
    ),
}
"""Each score of :func:`faithfulness`: its better direction and a one-line meaning."""

BASELINES: dict[str, str] = {
    "random": "uniform noise at the block's feature resolution, upsampled bilinearly to the "
              "input (a map of the CAM's coarseness that knows nothing)",
    "center": "a centred Gaussian (sigma a quarter of each side): the prior that objects sit "
              "in the middle, knowing nothing of this image",
}
"""The reference maps of ``faithfulness(..., baselines=True)``, in one line each."""
CENTER_SIGMA = 0.25
"""Sigma of the centred Gaussian baseline as a fraction of the input's height and width."""
_JITTER_KEY, _RANDOM_KEY = 0x6A6974, 0x72616E  # SeedSequence words: independent streams

SANITY_SCORES: dict[str, tuple[str, str]] = {
    "spearman": (
        "lower is better",
        "Spearman rank correlation with the trained model's map (0 if the randomised map is "
        "flat, NaN if the trained one is); a map that explains the weights loses it as they "
        "are randomised",
    ),
    "ssim": (
        "lower is better",
        "structural similarity to the trained model's map (1: identical)",
    ),
    "hog": (
        "lower is better",
        "Pearson correlation of the maps' HOG features (0 if the randomised map is flat, NaN "
        "if the trained one is)",
    ),
}
"""Each similarity of :func:`sanity_check`: lower means the map depends on the weights."""

ROAD_PERCENTILES: tuple[int, ...] = (20, 40, 60, 80)
RISE_STEPS = 20
"""Equal steps of the deletion and insertion curves (21 points, 0 to 1)."""
_RISE_BLUR = (11, 5.0)  # RISE's insertion baseline: Gaussian kernel size and sigma
_BATCH = 21  # perturbed inputs per forward pass

SANITY_LAYERS: tuple[str, ...] = ("fc", *reversed(BLOCKS), "stem")
"""The cascade of :func:`sanity_check`, from the logits down; ``stem`` is conv1 + bn1."""
_PARTS: dict[str, tuple[str, ...]] = {"stem": ("conv1", "bn1")}


def _check_request(model: nn.Module, block: str, where: str) -> None:
    """One-line errors for a bad block or tap before any forward pass is spent."""
    if not isinstance(block, str) or block not in BLOCKS:
        raise AnalysisError(f"unknown block {block!r}; expected one of layer1.0 ... layer4.2")
    wheres = tuple(tap.where for tap in taps_for_block(model, block))
    if where not in wheres:
        raise AnalysisError(
            f"no {where!r} map for {block} of {model_info(model).arch}; available: {wheres}"
        )


def _report(progress: Callable[[float], None] | None, done: float) -> None:
    if progress is not None:
        progress(done)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise AnalysisError(f"seed must be a non-negative integer, got {seed!r}")


def _reference(model: nn.Module, image: Image.Image | torch.Tensor, target: int | str | None,
               block: str, where: str, method: str, seed: int, simam_lambda: float | None,
               ) -> tuple[torch.Tensor, Analysis]:
    """Both checks' common start: the request checked (one-line errors before any pass), the
    input preprocessed once on the model's device, and the analysis whose map is checked."""
    info = model_info(model)
    _check_request(model, block, where)
    _check_seed(seed)
    x, _ = prepare_input(image, info, next(model.parameters()).device)
    return x, analyze(model, x, target=target, blocks=(block,), method=method,
                      simam_lambda=simam_lambda)


def faithfulness(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    target: int | str | None = None,
    block: str = DEFAULT_BLOCK,
    where: str = "output",
    method: str = "gradcam",
    seed: int = 0,
    simam_lambda: float | None = None,
    baselines: bool = False,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Faithfulness scores of the map ``analyze`` gives for (block, where, method) and target.

    ``image`` is a PIL image or a preprocessed 1x3xHxW tensor, as for ``analyze``;
    ``target=None`` scores the map of the top-1 class. All probabilities are the target's
    softmax probability (``ClassifierOutputSoftmaxTarget``), so scores are comparable across
    models. Directions are in :data:`SCORES`. The returned dict holds:

    ``road``
        pytorch-grad-cam's ``ROADCombined(percentiles=[20, 40, 60, 80])``, called on the map
        with its ties broken (below). Its imputer adds random noise, drawn here from a
        private generator seeded by ``seed`` (the caller's global RNG is left as it was), so
        the score is reproducible.
    ``drop_in_confidence``, ``increase_in_confidence``
        the library's ``DropInConfidence`` and ``IncreaseInConfidence`` (input times map).
    ``deletion_auc``, ``insertion_auc`` with ``fractions``, ``deletion_curve``,
    ``insertion_curve``
        RISE: pixels ranked by the map (ties by position), fraction ``f`` of them, rounded to
        whole pixels, in 20 equal steps; deletion sets the top ``f`` to the baseline 0 of the
        normalised input (the mean colour), insertion copies them into a Gaussian-blurred
        input (kernel 11, sigma 5, as RISE). AUC is the trapezoid rule over ``f`` in [0, 1].
    ``probability``
        the target's probability on the unperturbed input.

    plus ``target``, ``target_name``, ``block``, ``where``, ``method`` and ``seed``.

    Ties before ROAD: the library cuts the map at ``np.percentile`` and keeps ``map <
    threshold``, so when more than p % of a map is exactly 0 (common after Grad-CAM's ReLU)
    the threshold is 0 and "most relevant first" at p imputes the whole image, while a dense
    map (Grad-CAM++, LayerCAM) imputes the stated share: sparse and dense maps would not be
    scored alike. As the original ROAD code does, ties are broken first (:func:`_break_ties`):
    the map plus ``eps * u``, ``u`` uniform in [0, 1) from a private generator seeded by
    ``seed``, ``eps`` a quarter of the smallest gap between distinct values, in float64. The
    order of distinct values is kept exactly (the original adds 1e-4 Gaussian noise, which
    can swap close values); only tied pixels are put in a random order.

    ``baselines=True`` adds ``baselines``: ``{"random": {...}, "center": {...}}``, the same
    scores (``road``, ``drop_in_confidence``, ``increase_in_confidence``, ``deletion_auc``,
    ``insertion_auc``, ``deletion_curve``, ``insertion_curve``) for two maps that know
    nothing of the model (:data:`BASELINES`), so a score can be read against what no
    knowledge gives: ``random`` is uniform noise drawn (seed derived from ``seed``) at the
    block's feature resolution, the h x w of its output (a forward hook, one extra pass),
    upsampled bilinearly to the input as a CAM is and min-max scaled, with ``resolution``
    ``[h, w]``; ``center`` is ``exp(-d^2 / 2 sigma^2)`` around the image centre with sigma
    :data:`CENTER_SIGMA` of each side, min-max scaled, with ``sigma``. Each is scored exactly
    like the map: same model state and lambda, ties broken the same way, ROAD's imputer
    reseeded with ``seed`` for each map, so the map's own scores are the same with or
    without baselines. It triples the time. Without it the dict has no ``baselines`` key.

    ``simam_lambda`` sets SimAM's lambda for this call only, as for ``analyze`` (every
    forward pass here uses it). ``progress``, if given, is called with the fraction done (0-1)
    after each stage, so a UI can show a progress bar without knowing the stages. Values are
    Python floats and lists, so the dict serialises to JSON as it is. The model's lock is held
    while it runs and its state is restored as ``analyze`` restores it.
    """
    start = time.perf_counter()
    x, analysis = _reference(model, image, target, block, where, method, seed, simam_lambda)
    cam = analysis.cam(block, where)
    chosen = analysis.target
    maps = 3 if baselines else 1
    with model_lock(model), analysis_state(model, simam_lambda), torch.no_grad():
        probability = float(_probabilities(model, x, chosen)[0])
        scores = _score_map(model, x, cam, chosen, seed, _span(progress, 0, maps))
        extra: dict[str, dict[str, Any]] = {}
        if baselines:
            height, width = _feature_size(model, x, block)
            size = (x.shape[-2], x.shape[-1])
            extra["random"] = {
                **_score_map(model, x, _random_map(size, (height, width), seed), chosen, seed,
                             _span(progress, 1, maps)),
                "resolution": [height, width]}
            extra["center"] = {
                **_score_map(model, x, _center_map(size), chosen, seed, _span(progress, 2, maps)),
                "sigma": CENTER_SIGMA}
    logger.debug("faithfulness of %s/%s took %.2f s", block, where, time.perf_counter() - start)
    fractions = scores.pop("fractions")
    out = {
        "target": chosen,
        "target_name": analysis.target_name,
        "block": block,
        "where": where,
        "method": analysis.method,
        "seed": int(seed),
        "probability": probability,
        **{name: scores[name] for name in SCORES},
        "fractions": fractions,
        "deletion_curve": scores["deletion_curve"],
        "insertion_curve": scores["insertion_curve"],
    }
    if baselines:
        for entry in extra.values():
            del entry["fractions"]
        out["baselines"] = extra
    return out


def _span(progress: Callable[[float], None] | None, index: int, count: int
          ) -> Callable[[float], None] | None:
    """``progress`` for map ``index`` of ``count``: its stages mapped onto its share of 0-1."""
    if progress is None:
        return None
    return lambda done: progress((index + done) / count)


def _score_map(model: nn.Module, x: torch.Tensor, cam: np.ndarray, target: int, seed: int,
               progress: Callable[[float], None] | None) -> dict[str, Any]:
    """Every score of one HxW map (the model's lock, state and ``no_grad`` already set).

    ROAD's imputer is reseeded with ``seed`` here, so every map of one call meets the same
    imputation noise and a map's scores do not depend on which maps were scored before it.
    """
    targets = [ClassifierOutputSoftmaxTarget(target)]
    _report(progress, 0.1)
    with _private_rng(torch.device("cpu"), seed):  # ROAD's imputation noise is drawn on the CPU
        road = ROADCombined(percentiles=list(ROAD_PERCENTILES))(
            x, _break_ties(cam, seed)[None], targets, model)
    _report(progress, 0.5)
    drop = DropInConfidence()(x, cam[None], targets, model)
    increase = IncreaseInConfidence()(x, cam[None], targets, model)
    _report(progress, 0.6)
    fractions, deletion, insertion = _rise_curves(model, x, cam, target)
    _report(progress, 1.0)
    return {
        "road": float(road[0]),
        "drop_in_confidence": float(drop[0]),
        "increase_in_confidence": float(increase[0]),
        "deletion_auc": float(np.trapezoid(deletion, fractions)),
        "insertion_auc": float(np.trapezoid(insertion, fractions)),
        "fractions": fractions.tolist(),
        "deletion_curve": deletion.tolist(),
        "insertion_curve": insertion.tolist(),
    }


def _break_ties(cam: np.ndarray, seed: int) -> np.ndarray:
    """The map in float64 plus ``eps * u``: tied pixels in a random order, distinct values kept
    in theirs.

    ``u`` is uniform in [0, 1) from ``default_rng(SeedSequence([seed, _JITTER_KEY]))`` (the same
    ``u`` for every map of a shape and seed), ``eps`` a quarter of the smallest positive gap
    between distinct values, so ``a < b`` stays ``a + eps u_a < a + gap / 4 < b``. Float64
    leaves room for the jitter even next to 1 (the map is float32, whose gaps are far wider
    than float64's). A flat map has no order to keep: ``eps = 1``, a random ranking.
    """
    values = np.asarray(cam, dtype=np.float64)
    gaps = np.diff(np.unique(values))
    eps = float(gaps.min()) / 4.0 if gaps.size else 1.0
    u = np.random.default_rng(np.random.SeedSequence([int(seed), _JITTER_KEY])).random(
        values.shape)
    return values + eps * u


def _feature_size(model: nn.Module, x: torch.Tensor, block: str) -> tuple[int, int]:
    """The h x w of ``block``'s output for ``x``: the resolution every map of the block has
    before it is upsampled to the input (one forward pass with a hook, removed after it)."""
    found: list[tuple[int, int]] = []
    handle = model.get_submodule(block).register_forward_hook(
        lambda _m, _i, out: found.append((int(out.shape[-2]), int(out.shape[-1]))))
    try:
        model(x)
    finally:
        handle.remove()
    return found[0]


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low if high > low else 1.0)).astype(np.float32)


def _random_map(size: tuple[int, int], native: tuple[int, int], seed: int) -> np.ndarray:
    """The ``random`` baseline: uniform noise at the block's ``native`` h x w, seeded from
    ``seed``, upsampled to ``size`` as the library upsamples a CAM (``cv2.resize``, bilinear)
    and min-max scaled, so it is as coarse as a CAM of the block and knows nothing."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _RANDOM_KEY]))
    noise = rng.random(native, dtype=np.float32)
    return _min_max(cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))


def _center_map(size: tuple[int, int]) -> np.ndarray:
    """The ``center`` baseline: ``exp(-(dy^2 / sy^2 + dx^2 / sx^2) / 2)`` around the image's
    centre pixel position, ``sy``, ``sx`` :data:`CENTER_SIGMA` of the height and width,
    min-max scaled."""
    height, width = size
    dy = (np.arange(height) - (height - 1) / 2.0) / (CENTER_SIGMA * height)
    dx = (np.arange(width) - (width - 1) / 2.0) / (CENTER_SIGMA * width)
    return _min_max(np.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2)))


def _probabilities(model: nn.Module, batch: torch.Tensor, target: int) -> np.ndarray:
    """The target's softmax probability for each input, ``_BATCH`` inputs per forward pass."""
    out = [
        torch.softmax(model(chunk).float(), dim=1)[:, target].cpu()
        for chunk in batch.split(_BATCH)
    ]
    return torch.cat(out).double().numpy()


def _rise_curves(
    model: nn.Module, x: torch.Tensor, cam: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fractions, deletion, insertion)``: 21 probabilities each, every step batched."""
    fractions = np.linspace(0.0, 1.0, RISE_STEPS + 1)
    height, width = cam.shape
    n = cam.size
    order = np.argsort(-cam.ravel(), kind="stable")  # most relevant first, ties by position
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = np.round(fractions * n).astype(np.int64)
    rank_t = torch.from_numpy(rank).to(x.device).view(1, 1, height, width)
    counts_t = torch.from_numpy(counts).to(x.device).view(-1, 1, 1, 1)
    chosen = rank_t < counts_t  # (steps + 1) x 1 x H x W: the top fraction at each step
    kernel, sigma = _RISE_BLUR
    blurred = gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    deletion = torch.where(chosen, torch.zeros_like(x), x)
    insertion = torch.where(chosen, x, blurred)
    probs = _probabilities(model, torch.cat([deletion, insertion]), target)
    return fractions, probs[: len(fractions)], probs[len(fractions) :]


@dataclass(frozen=True, eq=False)
class SanityStep:
    """One step of the sanity check: the part re-initialised, the new map and its similarity.

    ``spearman``, ``ssim`` and ``hog`` compare ``cam`` with the trained model's map (see
    :data:`SANITY_SCORES` and :func:`compare_maps`). In the ``"cascade"`` mode the
    randomisation is cumulative, so step ``k`` has every part of steps ``0..k`` re-initialised;
    in the ``"independent"`` mode step ``k`` has only part ``k`` re-initialised. ``flat``: the
    new map is constant; its ``spearman`` and ``hog`` are then 0 by :func:`compare_maps`'s
    rule ("no agreement with the trained map"), so a mean over steps or images counts it
    instead of leaving it out.
    """

    layer: str
    spearman: float
    ssim: float
    hog: float
    flat: bool
    cam: np.ndarray

    def scores(self) -> dict[str, float | str | bool]:
        """The step without its map (JSON-ready)."""
        return {"layer": self.layer, "spearman": self.spearman, "ssim": self.ssim,
                "hog": self.hog, "flat": self.flat}


SANITY_FLAT_RULE = (
    "a flat map (a constant one, which a randomised model often gives) has no ranks, so it "
    "counts as Spearman 0 and HOG similarity 0 (no agreement with the trained map; SSIM as "
    "computed) instead of being left out of the means"
)
"""The flat-map rule of :func:`compare_maps` in one line, for the app and the exports."""


def compare_maps(reference: np.ndarray, other: np.ndarray) -> dict[str, float | bool]:
    """Adebayo et al.'s three similarities of two HxW maps in [0, 1], and whether ``other`` is flat.

    ``spearman``: rank correlation of the pixels; ``ssim``: structural similarity with
    ``data_range=1``; ``hog``: Pearson correlation of ``skimage.feature.hog`` features (skimage's
    defaults: 9 orientations, 8x8-pixel cells, 3x3-cell blocks).

    The flat-map rule: a constant ``other`` (a randomised model often gives one) has no ranks
    and no gradients, so neither correlation is defined; it gets ``flat=True`` and
    ``spearman = hog = 0``, "no agreement with the trained map", while ``ssim`` is computed as
    for any map. Leaving such maps out of a mean (NaN) instead would average only over the maps
    that still resemble the trained one and so favour the methods whose maps change least. A
    constant ``reference`` has nothing to agree with: ``spearman`` and ``hog`` are NaN then. A
    map with non-finite values gives NaN for all three. Never an exception or a warning for
    either case.
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise AnalysisError(f"maps must be two HxW arrays of one shape, got {a.shape}, {b.shape}")
    nan = float("nan")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {"spearman": nan, "ssim": nan, "hog": nan, "flat": False}
    flat = bool(np.ptp(b) == 0)
    ssim = float(structural_similarity(a, b, data_range=1.0))
    if np.ptp(a) == 0:
        return {"spearman": nan, "ssim": ssim, "hog": nan, "flat": flat}
    if flat:
        return {"spearman": 0.0, "ssim": ssim, "hog": 0.0, "flat": True}
    spearman = float(spearmanr(a.ravel(), b.ravel()).statistic)
    return {"spearman": spearman, "ssim": ssim, "hog": _pearson(hog(a), hog(b)), "flat": False}


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson correlation, NaN (quietly) when either vector is constant or empty."""
    if u.size < 2 or np.ptp(u) == 0 or np.ptp(v) == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])


def _step_seed(seed: int, step: int) -> int:
    """The seed of one cascade step: numpy's ``SeedSequence([seed, step])``, one 64-bit word.

    Steps get independent streams, and seed ``s`` at step ``k + 1`` shares nothing with seed
    ``s + 1`` at step ``k`` (as ``seed + step`` would).
    """
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0])


@contextmanager
def _private_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The CPU generator and the one of ``device`` seeded for a block, both restored after it.

    Only these two are seeded: ``torch.manual_seed`` would also reseed every other GPU's
    generator, which ``fork_rng`` does not give back.
    """
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:
        module = torch.get_device_module(device.type)
        index = device.index if device.index is not None else module.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type=device.type)
    with fork:
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        elif device.type != "cpu":
            module.manual_seed(seed)
        yield


def _reinitialise(part: nn.Module) -> None:
    """Every submodule holding parameters or buffers back to its constructor's initial values.

    Each module's own ``reset_parameters``: convolutions and linear layers draw fresh weights
    (PyTorch's default Kaiming-uniform), batch norms return to weight 1, bias 0 and running
    statistics 0 and 1 (``reset_parameters`` resets both).
    """
    for module in part.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not own:
            continue
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            raise AnalysisError(f"cannot re-initialise a {type(module).__name__}: no reset")
        reset()


SANITY_MODES: tuple[str, ...] = ("cascade", "independent")
"""The two randomisation schemes of :func:`sanity_check` (Adebayo et al. 2018 define both)."""


def _check_mode(mode: str) -> None:
    if not isinstance(mode, str) or mode not in SANITY_MODES:
        raise AnalysisError(
            f"unknown sanity mode {mode!r}; expected one of {', '.join(SANITY_MODES)}")


def _parts(model: nn.Module, layer: str) -> list[nn.Module]:
    """The submodules one step of :data:`SANITY_LAYERS` re-initialises (the stem is two)."""
    return [model.get_submodule(name) for name in _PARTS.get(layer, (layer,))]


def sanity_check(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    target: int | str | None = None,
    block: str = DEFAULT_BLOCK,
    where: str = "output",
    method: str = "gradcam",
    seed: int = 0,
    mode: str = "cascade",
    simam_lambda: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[SanityStep]:
    """Model-parameter randomization (Adebayo et al. 2018) of one map, cascading or independent.

    The map ``analyze`` gives for (block, where, method) on the trained model is the reference
    (``target=None``: the trained model's top-1 class, kept fixed for every step). A deep copy
    of the model then has its parts re-initialised, one per step, in the order of
    :data:`SANITY_LAYERS`: ``fc``, ``layer4.2``, ``layer4.1``, ..., ``layer1.0``, then
    ``stem`` (``conv1`` + ``bn1``), 18 steps. ``mode`` (:data:`SANITY_MODES`):

    ``"cascade"`` (the default)
        cumulative: step ``k`` has parts ``0..k`` random, from the logits down.
    ``"independent"``
        one part at a time: step ``k`` has only part ``k`` random, every other part trained
        (the part is put back from the trained weights after its step), which separates a
        block's own effect on the map from that of everything randomised above it.

    Re-initialising a bottleneck resets all its convolutions and batch norms (its downsample
    too) and the parameters of its attention module; SimAM has no parameters, so for a SimAM
    model a block's randomisation is that of its convolutions and BNs alone, while SE's
    excitation layers are reset with its block. How to read the curve in a ResNet: a
    re-initialised batch norm in eval mode is the identity (running mean 0, variance 1, weight
    1, bias 0) and the skip path carries the trained features past it, so a randomised identity
    bottleneck changes the map little; Spearman plateaus within a stage and drops at its
    downsampling block (``layerN.0``), whose skip path is itself re-initialised.

    Each re-initialisation uses the module's own ``reset_parameters`` under the global RNG,
    forked and seeded with ``_step_seed(seed, step)`` for that step, in both modes: a part gets
    the same random weights in either, results are reproducible for a seed, and the caller's
    RNG state is left untouched. The model passed in is only read (under its lock, for the
    copy) and comes back exactly as it was; one copy is made whatever the mode.

    Returns one :class:`SanityStep` per part. Randomised models often give a flat map; it has
    ``flat=True`` and Spearman and HOG similarity 0 (the rule of :func:`compare_maps`). The
    reference map itself is ``analyze(model, image, target=..., blocks=(block,),
    method=method)``'s. ``simam_lambda`` sets SimAM's lambda for this call only, for the
    trained model and every randomised copy. ``progress``, if given, is called with the
    fraction done (0-1) after every step. A bad ``mode`` is a one-line ``AnalysisError``
    before any forward pass.
    """
    start = time.perf_counter()
    _check_mode(mode)
    x, reference = _reference(model, image, target, block, where, method, seed, simam_lambda)
    device = x.device
    ref_cam = reference.cam(block, where)
    chosen = reference.target
    with model_lock(model):  # no other call's hooks or lambda are on it while it is copied
        randomised = copy.deepcopy(model)
    independent = mode == "independent"
    steps: list[SanityStep] = []
    for index, layer in enumerate(SANITY_LAYERS):
        parts = _parts(randomised, layer)  # independent: keep only this part's trained weights
        trained = ([{k: v.clone() for k, v in part.state_dict().items()} for part in parts]
                   if independent else [])
        with _private_rng(device, _step_seed(int(seed), index)):
            for part in parts:
                _reinitialise(part)
        cam = analyze(randomised, x, target=chosen, blocks=(block,), method=method,
                      simam_lambda=simam_lambda).cam(block, where)
        if independent:
            for part, state in zip(parts, trained, strict=True):
                part.load_state_dict(state)
        steps.append(SanityStep(layer=layer, cam=cam, **compare_maps(ref_cam, cam)))
        _report(progress, (index + 1) / len(SANITY_LAYERS))
    logger.debug("%s sanity check of %s/%s took %.2f s", mode, block, where,
                 time.perf_counter() - start)
    return steps
