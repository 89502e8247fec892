"""Accuracy, Grad-CAM localization and, on request, trust scores of models on an ImageFolder.

For each image the ground-truth class is explained (target = label), one analysis pass per
model and method gives every map, and each map is scored against the object mask brought to
the model's input frame (same resize and centre crop, nearest neighbour). SimAM models are
scored at the block output and before/after SimAM, the paper's claim being that SimAM's
refinement focuses the features on the object.

With ``faithfulness=True`` / ``sanity=True`` every one of those maps (before/after the
attention module included) is also scored by :func:`simam_viz.engine.trust.faithfulness` and
:func:`simam_viz.engine.trust.sanity_check`, called exactly as a user would call them on the image,
with the same target (the label): the columns are means of what those functions return. A
mean over a few hundred synthetic scenes is not a certainty, so each such column comes with a
95 % percentile-bootstrap interval (``<column>_lo``, ``<column>_hi``) and each row keeps its
per-image values (``row["per_image"]``), so that any other statistic can be computed later.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tf
from tqdm import tqdm

from simam_viz.engine import trust
from simam_viz.engine.analysis import analyze
from simam_viz.errors import SimamVizError
from simam_viz.images import load_image
from simam_viz.networks.models import ARCHS, DEFAULT_BLOCK
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.rendering.jsonsafe import to_json_safe
from simam_viz.studies.distributed import Shard
from simam_viz.studies.localization import energy_in_mask, iou_at, mask_from_boxes, pointing_game

__all__ = ["BASELINE_FIELDS", "BOOTSTRAP_RESAMPLES", "FAITHFULNESS_FIELDS", "PAIRED_FIELDS",
           "SANITY_FIELDS",
           "Sample", "bootstrap_interval", "evaluate", "format_paired_table", "format_table",
           "load_samples", "paired_differences", "pick_reference", "write_csv", "write_paired_csv",
           "write_per_image"]

LOG = logging.getLogger(__name__)

FIELDS = ("model", "arch", "method", "block", "where", "images", "top1", "pointing",
          "energy", "iou")

FAITHFULNESS_FIELDS: tuple[str, ...] = tuple(trust.SCORES)
"""Columns added by ``faithfulness=True``: the mean over images of each score of
:func:`simam_viz.engine.trust.faithfulness` (probabilities and areas in [0, 1], not percentages)."""

BASELINE_KINDS: tuple[str, ...] = tuple(trust.BASELINES)  # random, center
BASELINE_FIELDS: tuple[str, ...] = tuple(
    f"{score}_{kind}" for score in FAITHFULNESS_FIELDS for kind in BASELINE_KINDS)
"""Columns added by ``baselines=True`` (with ``faithfulness``): ``road_random``,
``road_center``, ...: the mean over images of each score for the two maps that know nothing
(``faithfulness(..., baselines=True)["baselines"]``, :data:`simam_viz.engine.trust.BASELINES`),
so each faithfulness column has a reference point from the same scenes."""

_FIRST, _LAST = trust.SANITY_LAYERS[0], trust.SANITY_LAYERS[-1]  # fc, stem
SANITY_FIELDS: tuple[str, ...] = (
    *(f"{score}_{_FIRST}" for score in trust.SANITY_SCORES),
    *(f"{score}_{_LAST}" for score in trust.SANITY_SCORES),
    "mean_abs_spearman",
    "flat",
)
"""Columns added by ``sanity=True``, from :func:`simam_viz.engine.trust.sanity_check`'s cascade.

``spearman_fc``, ``ssim_fc``, ``hog_fc``: similarity to the trained model's map once only the
classifier is re-initialised, the step that tests whether the map depends on the class
weights at all. ``spearman_stem``, ``ssim_stem``, ``hog_stem``: the last step, every layer
random, the floor a map reaches when nothing learned is left. ``mean_abs_spearman``: per image
the mean of |Spearman| over the 18 steps, one number for the whole curve (the sign of a
correlation with a random model's map carries no meaning, its size does). ``flat``: % of the
cascade's maps that were flat. A flat map enters every mean as Spearman 0 and HOG similarity 0
("no agreement with the trained map"; its SSIM as computed), the rule of
:func:`simam_viz.engine.trust.compare_maps`, rather than being left out, which would average
only over the maps that changed least. All are lower-is-better except ``flat``, which says how
much of the curve is a flat map. With ``sanity_mode="independent"`` each step randomises its
part alone: the ``fc`` columns are the same as the cascade's, the ``stem`` ones the stem alone.
"""

_PERCENT = {"pointing", "energy", "iou"}  # the localization columns, kept as percentages
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    mask: np.ndarray  # HxW bool in the original image's frame


def load_samples(data_dir: str | Path, split: str = "test", limit: int | None = None
                 ) -> tuple[list[str], list[Sample]]:
    """Class names and samples of ``data_dir/split`` with masks (``masks/``) or boxes.

    Boxes come from ``data_dir/boxes.json``: ``{"split/class/file.png": [[x0,y0,x1,y1], ...]}``.
    """
    root = Path(data_dir)
    split_dir = root / split
    if not split_dir.is_dir():
        raise SimamVizError(f"{split_dir}: no such split folder")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    boxes_file = root / "boxes.json"
    boxes = json.loads(boxes_file.read_text()) if boxes_file.is_file() else {}
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            rel = f"{split}/{name}/{path.name}"
            mask_path = root / "masks" / split / name / path.name
            if mask_path.is_file():
                mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            elif rel in boxes:
                with Image.open(path) as im:
                    size = im.size
                mask = mask_from_boxes((size[1], size[0]), boxes[rel])
            else:
                continue
            samples.append(Sample(path, label, mask))
    if limit is not None:  # an even spread over classes, deterministic
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    if not samples:
        raise SimamVizError(f"{split_dir}: no images with masks (masks/) or boxes (boxes.json)")
    return classes, samples


def _mask_in_frame(mask: np.ndarray, prep: Preprocessing) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    im = tf.resize(im, [prep.resize], interpolation=InterpolationMode.NEAREST)
    return np.asarray(tf.center_crop(im, [prep.crop])) > 127


def bootstrap_interval(
    values: Iterable[float],
    *,
    minus: Iterable[float] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (NaNs left out).

    ``resamples`` resamples of the finite values, with replacement, from
    ``numpy.random.default_rng(seed)``; the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of their means. The percentile bootstrap assumes nothing
    about the scores' distribution (they are bounded and often skewed: ROAD near 0, increase
    in confidence 0 or 1), and a fixed seed makes the table reproducible to the last digit.
    ``(nan, nan)`` when no value is finite.

    ``minus`` (the same scenes, in the same order, scored by another model or map) makes it
    the *paired* interval of the mean difference ``values - minus``: a resample draws scenes,
    and each drawn scene brings both its scores, so the scene-to-scene variation both maps
    share (hard scenes are hard for every model) cancels instead of widening the interval.
    Resampling the per-scene differences is exactly that. Scenes where either value is NaN
    are left out of both.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if minus is not None:
        other = np.asarray(list(minus), dtype=np.float64)
        if other.shape != x.shape:
            raise SimamVizError(f"paired values need the same scenes: {x.size} against "
                                f"{other.size}")
        x = x - other  # NaN wherever either is undefined
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if resamples < 1 or not 0.0 < level < 1.0:
        raise SimamVizError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values, NaN (without numpy's empty-slice warning) if there are none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _sanity_values(steps: Sequence[trust.SanityStep]) -> dict[str, float]:
    """One image's :data:`SANITY_FIELDS` from its cascade (see there for the choices)."""
    first, last = steps[0], steps[-1]
    out = {f"{score}_{_FIRST}": float(getattr(first, score)) for score in trust.SANITY_SCORES}
    out.update({f"{score}_{_LAST}": float(getattr(last, score))
                for score in trust.SANITY_SCORES})
    out["mean_abs_spearman"] = _finite_mean([abs(s.spearman) for s in steps])  # flat: 0
    out["flat"] = 100.0 * float(np.mean([s.flat for s in steps]))
    return out


def _score_sample(
    sample: Sample, models: Sequence[nn.Module], methods: Sequence[str], block: str,
    faithfulness: bool, sanity: bool, seed: int, sanity_mode: str = "cascade",
    baselines: bool = False,
) -> tuple[dict[str, int], list[tuple[tuple, dict[str, Any], dict[str, list[float]]]]]:
    """One image with every model and method: ``(top-1 hits by model, [(row key, this
    image's value of each column, its sanity cascade)])``, in the rows' order."""
    image = load_image(sample.path)
    hits: dict[str, int] = {}
    found: list[tuple[tuple, dict[str, Any], dict[str, list[float]]]] = []
    for model in models:
        info = model.simam_viz
        mask = _mask_in_frame(sample.mask, info.preprocessing)
        for method in methods:
            result = analyze(model, image, target=sample.label, blocks=(block,), method=method)
            if method == methods[0]:
                hits[info.name] = int(result.predictions[0].index == sample.label)
            for where in result.wheres(block):
                if where == "attention":
                    continue
                cam = result.cam(block, where)
                values: dict[str, Any] = {
                    "path": str(sample.path),
                    "pointing": float(pointing_game(cam, mask)),
                    "energy": float(energy_in_mask(cam, mask)),
                    "iou": float(iou_at(cam, mask)),
                }
                cascade: dict[str, list[float]] = {}
                request = dict(target=sample.label, block=block, where=where, method=method,
                               seed=seed)
                if faithfulness:
                    scores = trust.faithfulness(model, image, **request, baselines=baselines)
                    values.update({name: float(scores[name]) for name in FAITHFULNESS_FIELDS})
                    if baselines:
                        values.update({f"{name}_{kind}": float(scores["baselines"][kind][name])
                                       for name in FAITHFULNESS_FIELDS
                                       for kind in BASELINE_KINDS})
                if sanity:
                    steps = trust.sanity_check(model, image, **request, mode=sanity_mode)
                    values.update(_sanity_values(steps))
                    cascade = {score: [float(getattr(s, score)) for s in steps]
                               for score in trust.SANITY_SCORES}
                found.append(((info.name, info.arch, method, where), values, cascade))
    return hits, found


def evaluate(
    models: Sequence[nn.Module],
    data_dir: str | Path,
    *,
    split: str = "test",
    methods: Sequence[str] = ("gradcam",),
    block: str = DEFAULT_BLOCK,
    limit: int | None = None,
    faithfulness: bool = False,
    sanity: bool = False,
    sanity_mode: str = "cascade",
    baselines: bool = False,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    progress: bool = False,
    shard: Shard | None = None,
    keep_values: bool = False,
) -> list[dict[str, Any]]:
    """One row per (model, method, where) with accuracy and mean localization scores.

    ``faithfulness`` adds the mean of each of :data:`FAITHFULNESS_FIELDS`, ``sanity`` those of
    :data:`SANITY_FIELDS`, each with ``<field>_lo`` and ``<field>_hi``, its 95 % interval
    (:func:`bootstrap_interval`, ``resamples`` resamples seeded by ``seed``, the same
    resampling for every column of a row, so intervals of one row are paired). Both call
    ``trust.faithfulness`` / ``trust.sanity_check`` on the image with ``target`` = the label,
    ``seed`` = ``seed`` (ROAD's noise, the cascade's re-initialisation), for the same (block,
    where, method) as the localization columns. Such rows also carry ``per_image``: the paths
    and each image's value of every score column, and, with ``sanity``, ``cascade``: the
    Spearman, SSIM and HOG similarity of every image at every step (``layers``), for curves.
    Neither is a CSV column (:func:`write_per_image` writes them as JSON). ``keep_values``
    keeps ``per_image`` on plain localization rows too (each image's 0/1 pointing, energy and
    IoU as fractions), which :func:`paired_differences` needs.

    ``shard`` (under torchrun, :func:`simam_viz.studies.distributed.sharded`) scores only this
    process's share of the images; the per-image values of all ranks are then gathered and
    put back in the images' order before any mean or bootstrap, so every rank returns the
    same rows as one process would.

    ``baselines`` (with ``faithfulness`` only) adds :data:`BASELINE_FIELDS`, the same scores
    of a random and a centred map on the same scenes, with their intervals; without it the
    rows and the CSV are exactly as before.

    ``sanity_mode`` is ``trust.sanity_check``'s ``mode`` (``"cascade"`` or ``"independent"``,
    :data:`simam_viz.engine.trust.SANITY_MODES`); ``cascade`` carries it as ``mode``.
    """
    if sanity and sanity_mode not in trust.SANITY_MODES:
        raise SimamVizError(f"unknown sanity mode {sanity_mode!r}; expected one of "
                            f"{', '.join(trust.SANITY_MODES)}")
    if baselines and not faithfulness:
        raise SimamVizError("baselines are faithfulness scores: they need faithfulness=True")
    shard = shard or Shard()
    classes, samples = load_samples(data_dir, split, limit)
    for model in models:
        if list(model.simam_viz.class_names) != classes:
            raise SimamVizError(f"{model.simam_viz.name}: classes differ from {split}/ folders")
    mine = shard.take(list(enumerate(samples)))
    scored = [(index, _score_sample(sample, models, methods, block, faithfulness, sanity, seed,
                                    sanity_mode, baselines=baselines))
              for index, sample in tqdm(mine, disable=not progress or not shard.main,
                                        unit="img", desc="evaluate")]
    merged = sorted((item for part in shard.gather(scored) for item in part),
                    key=lambda item: item[0])
    per_image: dict[tuple, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    cascades: dict[tuple, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    correct: dict[str, int] = defaultdict(int)
    for _, (hits, found) in merged:
        for name, hit in hits.items():
            correct[name] += hit
        for key, values, cascade in found:
            for name, value in values.items():
                per_image[key][name].append(value)
            for score, curve in cascade.items():
                cascades[key][score].append(curve)
    extra = (FAITHFULNESS_FIELDS if faithfulness else ()) + (
        BASELINE_FIELDS if baselines else ()) + (SANITY_FIELDS if sanity else ())
    rows = []
    for key, values in per_image.items():
        name, arch, method, where = key
        row: dict[str, Any] = {
            "model": name, "arch": arch, "method": method, "block": block, "where": where,
            "images": len(values["path"]), "top1": 100.0 * correct[name] / len(samples),
        }
        for field in _PERCENT:
            row[field] = 100.0 * float(np.mean(values[field]))
        row = {f: row[f] for f in FIELDS}  # the CSV's column order
        for field in extra:
            row[field] = _finite_mean(values[field])
        for field in extra:
            row[f"{field}_lo"], row[f"{field}_hi"] = bootstrap_interval(
                values[field], resamples=resamples, seed=seed)
        if extra or keep_values:
            row["per_image"] = {k: list(v) for k, v in values.items()}
        if sanity:
            row["cascade"] = {"layers": list(trust.SANITY_LAYERS), "mode": sanity_mode,
                              **{k: list(v) for k, v in cascades[key].items()}}
        rows.append(row)
    LOG.info("evaluated %d models x %d methods on %d images of %s/%s%s%s", len(models),
             len(methods), len(samples), data_dir, split,
             " with faithfulness" if faithfulness else "",
             f" with {sanity_mode} sanity" if sanity else "")
    return rows


def _score_fields(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The trust columns the rows have, in :data:`FAITHFULNESS_FIELDS`, :data:`SANITY_FIELDS`
    order (none for a plain localization run)."""
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    return [f for f in (*FAITHFULNESS_FIELDS, *BASELINE_FIELDS, *SANITY_FIELDS) if f in present]


def _interval_cell(row: dict[str, Any], field: str, digits: int) -> str:
    """``mean [lo, hi]``, or ``n/a`` where no image gave a defined value."""
    mean = row[field]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{row[f'{field}_lo']:.{digits}f}, {row[f'{field}_hi']:.{digits}f}]"


def _header(field: str) -> str:
    """A column title with its better direction (from trust's SCORES / SANITY_SCORES)."""
    if field in trust.SCORES:
        arrow = "↑" if trust.SCORES[field][0].startswith("higher") else "↓"
        return f"{field.replace('_', ' ')} {arrow}"
    if field == "flat":
        return "flat maps %"
    if field == "mean_abs_spearman":
        return "mean abs Spearman ↓"
    score, _, step = field.rpartition("_")
    return f"{score} {step} ↓"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables (README-ready) of evaluation rows.

    The localization table always; then, for rows with trust columns, one table of
    faithfulness and one of sanity scores, each cell ``mean [lo, hi]`` (95 % bootstrap). Rows
    with :data:`BASELINE_FIELDS` get one more faithfulness line per baseline map ("random
    map", "center map") under their own, so each score is read beside its reference point.
    """
    head = "| model | method | map | images | top-1 % | pointing % | energy in mask % | IoU@0.5 % |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['block']} {r['where']} | {r['images']} | "
            f"{r['top1']:.1f} | {r['pointing']:.1f} | {r['energy']:.1f} | {r['iou']:.1f} |"
        )
    fields = _score_fields(rows)
    for group in (FAITHFULNESS_FIELDS, SANITY_FIELDS):
        shown = [f for f in group if f in fields]
        if not shown:
            continue
        lines += ["", "| model | method | map | " + " | ".join(map(_header, shown)) + " |",
                  "|---|---|---|" + "---|" * len(shown)]
        for r in rows:
            cells = [_interval_cell(r, f, 1 if f == "flat" else 3) for f in shown]
            lines.append(f"| {r['model']} | {r['method']} | {r['block']} {r['where']} | "
                         + " | ".join(cells) + " |")
            if group is FAITHFULNESS_FIELDS:
                lines += _baseline_lines(r, shown)
    return "\n".join(lines)


def _baseline_lines(row: dict[str, Any], shown: Sequence[str]) -> list[str]:
    """Under a row's faithfulness line, one line per baseline map (:data:`BASELINE_FIELDS`),
    its cells in the same columns, when the row has them (``baselines=True``)."""
    kinds = [k for k in BASELINE_KINDS if all(f"{f}_{k}" in row for f in shown)]
    return [f"| {row['model']} | {row['method']} | {row['block']} {row['where']}: {kind} map | "
            + " | ".join(_interval_cell(row, f"{f}_{kind}", 3) for f in shown) + " |"
            for kind in kinds]


PAIRED_FIELDS = ("model", "arch", "method", "block", "where", "reference", "reference_where",
                 "metric", "images", "difference", "lo", "hi", "excludes_zero")
"""Columns of :func:`paired_differences`' rows (one per pair of maps and metric): ``model``'s
map at ``where`` minus ``reference``'s map at ``reference_where`` (same method, block and
scenes); ``difference`` is the mean over the ``images`` scenes where both are defined, in
percentage points for pointing, energy and IoU and in the score's own units otherwise;
``lo``, ``hi`` its paired bootstrap interval; ``excludes_zero``: the interval lies wholly on
one side of 0, the only case in which the difference is reported as a finding."""

_LOCALIZATION = ("pointing", "energy", "iou")


def pick_reference(models: Iterable[tuple[str, str]], reference: str | None) -> str | None:
    """The name of the model that ``reference`` (a name or an arch) designates among
    ``models`` (``(name, arch)`` pairs), so that a bad ``--reference`` is refused before any
    work. ``None`` picks the plain ResNet-50 when exactly one model is one, else none (then
    only the attention modules' after minus before is paired)."""
    models = list(models)
    if reference is None:
        plain = sorted({name for name, arch in models
                        if arch in ARCHS and not ARCHS[arch].kind.has_attention})
        return plain[0] if len(plain) == 1 else None
    matches = sorted({name for name, arch in models if reference in (name, arch)})
    if not matches:
        names = ", ".join(sorted({name for name, _ in models}))
        raise SimamVizError(f"reference {reference!r} is none of the evaluated models ({names})")
    if len(matches) > 1:
        raise SimamVizError(f"reference {reference!r} matches several models "
                            f"({', '.join(matches)}): name one")
    return matches[0]


def _pairs(rows: Sequence[dict[str, Any]], reference: str | None
           ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(row, reference row)`` pairs: every other model's block output minus the reference
    model's, method by method (none without a reference), then each attention module's after
    minus before (the module's own effect, in the same model, on the same scenes)."""
    name = (pick_reference(((r["model"], r["arch"]) for r in rows), reference)
            if reference is not None else None)
    base = {r["method"]: r for r in rows if r["model"] == name and r["where"] == "output"}
    pairs = [(r, base[r["method"]]) for r in rows
             if r["where"] == "output" and r["model"] != name and r["method"] in base]
    before = {(r["model"], r["method"]): r for r in rows if r["where"] == "before"}
    pairs += [(r, before[r["model"], r["method"]]) for r in rows
              if r["where"] == "after" and (r["model"], r["method"]) in before]
    return pairs


def _aligned(row: dict[str, Any], ref: dict[str, Any], metric: str
             ) -> tuple[list[float], list[float]]:
    """The two rows' per-image values of ``metric``, scene by scene (matched by path)."""
    mine, theirs = row["per_image"], ref["per_image"]
    if mine["path"] == theirs["path"]:
        return mine[metric], theirs[metric]
    where = {path: i for i, path in enumerate(theirs["path"])}
    if set(where) != set(mine["path"]):
        raise SimamVizError(f"{row['model']} and {ref['model']} were not scored on the same "
                            "scenes: no paired difference")
    return mine[metric], [theirs[metric][where[path]] for path in mine["path"]]


def paired_differences(
    rows: Sequence[dict[str, Any]],
    reference: str | None = "resnet50",
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Differences between maps on the same scenes, each with its paired bootstrap interval.

    ``rows`` are :func:`evaluate`'s, with ``per_image`` (``keep_values=True``, or trust
    columns). ``reference`` names one evaluated model by name or arch (default: the plain
    ResNet-50; ``None``: no comparison between models). For every other model and method:
    block output minus the reference's block output; for each attention module: its after
    map minus its before map. Metrics: pointing,
    energy and IoU (percentage points), then every trust column the rows have. The interval is
    :func:`bootstrap_interval` with ``minus``: ``resamples`` resamples of the scenes, seeded by
    ``seed``, the same drawn scenes for both maps; with the same scenes and seed every metric
    and pair is drawn with the same resamples. Why paired: the two models see the same 600
    scenes, so comparing two unpaired intervals would count the scenes' own variation twice.
    Rows are in :data:`PAIRED_FIELDS`' layout.
    """
    if any("per_image" not in r for r in rows):
        raise SimamVizError("paired differences need each image's values: "
                            "evaluate(..., keep_values=True)")
    metrics = [*_LOCALIZATION, *_score_fields(rows)]
    out: list[dict[str, Any]] = []
    for row, ref in _pairs(rows, reference):
        for metric in metrics:
            if metric not in row["per_image"] or metric not in ref["per_image"]:
                continue
            mine, theirs = _aligned(row, ref, metric)
            scale = 100.0 if metric in _PERCENT else 1.0
            a = scale * np.asarray(mine, dtype=np.float64)
            b = scale * np.asarray(theirs, dtype=np.float64)
            both = np.isfinite(a) & np.isfinite(b)
            lo, hi = bootstrap_interval(a, minus=b, resamples=resamples, level=level, seed=seed)
            out.append({
                "model": row["model"], "arch": row["arch"], "method": row["method"],
                "block": row["block"], "where": row["where"], "reference": ref["model"],
                "reference_where": ref["where"], "metric": metric, "images": int(both.sum()),
                "difference": _finite_mean(a[both] - b[both]), "lo": lo, "hi": hi,
                "excludes_zero": bool(lo > 0.0 or hi < 0.0),
            })
    LOG.info("%d paired differences against %s", len(out), reference)
    return out


def _paired_header(metric: str) -> str:
    if metric in _LOCALIZATION:
        return {"pointing": "pointing", "energy": "energy in mask", "iou": "IoU@0.5"}[metric] \
            + " Δ pts"
    return _header(metric) + " Δ"


def _paired_cell(diff: dict[str, Any] | None) -> str:
    """``+d [lo, hi]``, starred when the interval excludes 0; ``n/a`` if undefined."""
    if diff is None or not math.isfinite(diff["difference"]):
        return "n/a"
    digits = 1 if diff["metric"] in _PERCENT or diff["metric"] == "flat" else 3
    star = " *" if diff["excludes_zero"] else ""
    return (f"{diff['difference']:+.{digits}f} [{diff['lo']:+.{digits}f}, "
            f"{diff['hi']:+.{digits}f}]{star}")


def format_paired_table(diffs: Sequence[dict[str, Any]]) -> str:
    """Markdown tables of :func:`paired_differences`: one line per pair of maps and method,
    one column per metric (localization, then faithfulness, then sanity), each cell
    ``difference [95 % paired interval]``, ``*`` where the interval excludes 0."""
    keys = list(dict.fromkeys((d["model"], d["method"], d["block"], d["where"], d["reference"],
                               d["reference_where"]) for d in diffs))
    cell = {(d["model"], d["method"], d["block"], d["where"], d["reference"],
             d["reference_where"], d["metric"]): d for d in diffs}
    present = {d["metric"] for d in diffs}
    lines = ["Paired differences on the same scenes: mean [95 % paired bootstrap interval]; "
             "* the interval excludes 0."]
    for group in (_LOCALIZATION, FAITHFULNESS_FIELDS, SANITY_FIELDS):
        shown = [m for m in group if m in present]
        if not shown:
            continue
        lines += ["", "| difference | method | map | "
                  + " | ".join(map(_paired_header, shown)) + " |",
                  "|---|---|---|" + "---|" * len(shown)]
        for model, method, block, where, ref, ref_where in keys:
            title = (f"{model} − {ref}" if where == ref_where
                     else f"{model}: {where} − {ref_where}")
            cells = [_paired_cell(cell.get((model, method, block, where, ref, ref_where, m)))
                     for m in shown]
            lines.append(f"| {title} | {method} | {block} {where} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_dict_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str], path: str | Path,
                   *, digits: int = 4) -> Path:
    """``rows`` as CSV with the columns ``fields`` (other keys ignored), floats to ``digits``
    decimals; the folder is created. The one CSV writer of the study tables."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.{digits}f}" if isinstance(v, float) else v
                             for k, v in row.items() if k in fields})
    return path


def write_paired_csv(diffs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """:func:`paired_differences`' rows as CSV (:data:`PAIRED_FIELDS`, one line per pair and
    metric; 4 decimals, enough for trust scores and for percentage points alike)."""
    return write_dict_csv(diffs, PAIRED_FIELDS, path)


def _csv_value(field: str, value: object) -> object:
    """Localization columns keep their two decimals; trust scores (probabilities and
    correlations in [0, 1] or [-1, 1]) get four, which two would round away."""
    if not isinstance(value, float):
        return value
    base = field.removesuffix("_lo").removesuffix("_hi")
    if base in FAITHFULNESS_FIELDS or base in BASELINE_FIELDS or (
            base in SANITY_FIELDS and base != "flat"):
        return f"{value:.4f}"
    return f"{value:.2f}"


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV: :data:`FIELDS`, then each trust column present with its ``_lo`` and
    ``_hi`` (``nan`` where undefined); ``per_image`` and ``cascade`` are left to
    :func:`write_per_image`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = list(FIELDS)
    for field in _score_fields(rows):
        fieldnames += [field, f"{field}_lo", f"{field}_hi"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(k, v) for k, v in row.items() if k in fieldnames})
    return path


def write_per_image(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Every row, per-image values and cascades included, as one JSON document (NaN as null),
    so bootstraps, other statistics or figures can be redone without re-running the models."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": "simam-viz-evaluation", "version": 1, "rows": list(rows)}
    path.write_text(json.dumps(to_json_safe(document), allow_nan=False) + "\n", encoding="utf-8")
    return path
