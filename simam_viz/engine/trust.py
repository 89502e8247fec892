"""How far to trust a map: faithfulness scores and the model-randomization sanity check.

A saliency map can look plausible and still say little about the model. Two kinds of check
answer that, and this module gives both for exactly the map
:func:`~simam_viz.engine.analysis.analyze`
shows for a (block, where, method) and a target class:

* :func:`faithfulness` perturbs the input where the map points and watches the target's
  softmax probability: pytorch-grad-cam's ROAD, DropInConfidence and IncreaseInConfidence
  (called as the library ships them), plus the deletion and insertion curves of RISE
  (Petsiuk et al. 2018), which the library lacks and which are written here.
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
    "RISE_STEPS",
    "ROAD_PERCENTILES",
    "SANITY_LAYERS",
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
        "imputed minus that kept when the most relevant are, halved; mean over 20-80%",
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

SANITY_SCORES: dict[str, tuple[str, str]] = {
    "spearman": (
        "lower is better",
        "Spearman rank correlation with the trained model's map (NaN if either map is flat); "
        "a map that explains the weights loses it as they are randomised",
    ),
    "ssim": (
        "lower is better",
        "structural similarity to the trained model's map (1: identical)",
    ),
    "hog": (
        "lower is better",
        "Pearson correlation of the maps' HOG features (NaN if either map is flat)",
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
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Faithfulness scores of the map ``analyze`` gives for (block, where, method) and target.

    ``image`` is a PIL image or a preprocessed 1x3xHxW tensor, as for ``analyze``;
    ``target=None`` scores the map of the top-1 class. All probabilities are the target's
    softmax probability (``ClassifierOutputSoftmaxTarget``), so scores are comparable across
    models. Directions are in :data:`SCORES`. The returned dict holds:

    ``road``
        pytorch-grad-cam's ``ROADCombined(percentiles=[20, 40, 60, 80])``. Its imputer adds
        random noise, drawn here from a private generator seeded by ``seed`` (the caller's
        global RNG is left as it was), so the score is reproducible.
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
    targets = [ClassifierOutputSoftmaxTarget(chosen)]
    cams = cam[None]
    with (
        model_lock(model),
        analysis_state(model, simam_lambda),
        torch.no_grad(),
        _private_rng(torch.device("cpu"), seed),  # ROAD's imputation noise is drawn on the CPU
    ):
        _report(progress, 0.1)
        road = ROADCombined(percentiles=list(ROAD_PERCENTILES))(x, cams, targets, model)
        _report(progress, 0.5)
        drop = DropInConfidence()(x, cams, targets, model)
        increase = IncreaseInConfidence()(x, cams, targets, model)
        probability = float(_probabilities(model, x, chosen)[0])
        _report(progress, 0.6)
        fractions, deletion, insertion = _rise_curves(model, x, cam, chosen)
        _report(progress, 1.0)
    logger.debug("faithfulness of %s/%s took %.2f s", block, where, time.perf_counter() - start)
    return {
        "target": chosen,
        "target_name": analysis.target_name,
        "block": block,
        "where": where,
        "method": analysis.method,
        "seed": int(seed),
        "probability": probability,
        "road": float(road[0]),
        "drop_in_confidence": float(drop[0]),
        "increase_in_confidence": float(increase[0]),
        "deletion_auc": float(np.trapezoid(deletion, fractions)),
        "insertion_auc": float(np.trapezoid(insertion, fractions)),
        "fractions": fractions.tolist(),
        "deletion_curve": deletion.tolist(),
        "insertion_curve": insertion.tolist(),
    }


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
    """One step of the cascade: the part just re-initialised, the new map and its similarity.

    ``spearman``, ``ssim`` and ``hog`` compare ``cam`` with the trained model's map (see
    :data:`SANITY_SCORES`); the randomisation is cumulative, so step ``k`` has every part of
    steps ``0..k`` re-initialised.
    """

    layer: str
    spearman: float
    ssim: float
    hog: float
    cam: np.ndarray

    def scores(self) -> dict[str, float | str]:
        """The step without its map (JSON-ready)."""
        return {"layer": self.layer, "spearman": self.spearman, "ssim": self.ssim,
                "hog": self.hog}


def compare_maps(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Adebayo et al.'s three similarities of two HxW maps in [0, 1].

    ``spearman``: rank correlation of the pixels; ``ssim``: structural similarity with
    ``data_range=1``; ``hog``: Pearson correlation of ``skimage.feature.hog`` features (skimage's
    defaults: 9 orientations, 8x8-pixel cells, 3x3-cell blocks). A flat map has no ranks and no
    gradients, so its ``spearman`` and ``hog`` are NaN (never an exception or a warning); a map
    with non-finite values gives NaN for all three.
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise AnalysisError(f"maps must be two HxW arrays of one shape, got {a.shape}, {b.shape}")
    nan = float("nan")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {"spearman": nan, "ssim": nan, "hog": nan}
    flat = np.ptp(a) == 0 or np.ptp(b) == 0
    spearman = nan if flat else float(spearmanr(a.ravel(), b.ravel()).statistic)
    ssim = float(structural_similarity(a, b, data_range=1.0))
    return {"spearman": spearman, "ssim": ssim, "hog": _pearson(hog(a), hog(b))}


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


def sanity_check(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    *,
    target: int | str | None = None,
    block: str = DEFAULT_BLOCK,
    where: str = "output",
    method: str = "gradcam",
    seed: int = 0,
    simam_lambda: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[SanityStep]:
    """Cascading model-parameter randomization (Adebayo et al. 2018) of one map.

    The map ``analyze`` gives for (block, where, method) on the trained model is the reference
    (``target=None``: the trained model's top-1 class, kept fixed for every step). A deep copy
    of the model then has its parts re-initialised cumulatively, one per step, in the order of
    :data:`SANITY_LAYERS`: ``fc``, ``layer4.2``, ``layer4.1``, ..., ``layer1.0``, then
    ``stem`` (``conv1`` + ``bn1``), 18 steps. Re-initialising a bottleneck resets all its
    convolutions and batch norms (its downsample too) and the parameters of its attention
    module; SimAM has no parameters, so for a SimAM model a block's randomisation is that of
    its convolutions and BNs alone, while SE's excitation layers are reset with its block.

    Each re-initialisation uses the module's own ``reset_parameters`` under the global RNG,
    forked and seeded with ``_step_seed(seed, step)`` for that step: results are reproducible
    for a seed, and the caller's RNG state is left untouched. The model passed in is only
    read (under its lock, for the copy) and comes back exactly as it was.

    Returns one :class:`SanityStep` per part. Randomised models often give a flat map; its
    Spearman and HOG similarity are then NaN (see :func:`compare_maps`). The reference map
    itself is ``analyze(model, image, target=..., blocks=(block,), method=method)``'s.
    ``simam_lambda`` sets SimAM's lambda for this call only, for the trained model and every
    randomised copy. ``progress``, if given, is called with the fraction done (0-1) after
    every step.
    """
    start = time.perf_counter()
    x, reference = _reference(model, image, target, block, where, method, seed, simam_lambda)
    device = x.device
    ref_cam = reference.cam(block, where)
    chosen = reference.target
    with model_lock(model):  # no other call's hooks or lambda are on it while it is copied
        randomised = copy.deepcopy(model)
    steps: list[SanityStep] = []
    for index, layer in enumerate(SANITY_LAYERS):
        with _private_rng(device, _step_seed(int(seed), index)):
            for name in _PARTS.get(layer, (layer,)):
                _reinitialise(randomised.get_submodule(name))
        cam = analyze(randomised, x, target=chosen, blocks=(block,), method=method,
                      simam_lambda=simam_lambda).cam(block, where)
        steps.append(SanityStep(layer=layer, cam=cam, **compare_maps(ref_cam, cam)))
        _report(progress, (index + 1) / len(SANITY_LAYERS))
    logger.debug("sanity check of %s/%s took %.2f s", block, where, time.perf_counter() - start)
    return steps
