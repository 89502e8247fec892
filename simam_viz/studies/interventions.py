"""The intervention study: what each attention module's weights do to the decision, scene by scene.

:func:`simam_viz.engine.intervention.intervention_effects` answers for one image what replacing
a model's attention weights by a counterfactual (``identity``, ``constant``, ``channel_mean``,
``spatial_mean``, SimAM's ``exact``) does to its output. Over the test scenes this module asks
it, for every model with attention, every mode its kind takes and every block set (each stage
``layer1`` ... ``layer4`` changed as a whole, and ``all`` blocks at once), and keeps per scene:

- ``prob_change``: the target's probability after minus before (``prob - prob_ref``);
- ``flip``: 1 when the top-1 class changed, else 0;
- ``kl``: KL(p_ref || p) in nats over all classes.

**Target.** By default the target is the class the unchanged model predicts (its top-1), not
the scene's label: an intervention asks what the module contributes to *the decision the
model made*, the same question :func:`~simam_viz.intervene` answers on one image (its
``target=None``), and on a misclassified scene the label's probability is already near 0, so
its change would say little and mix the model's accuracy into the effect. ``target="label"``
is there for the other question (what it does to the right answer).

Each row (model, mode, block set) has the mean of each of the three with its 95 % percentile
bootstrap interval (:func:`~simam_viz.studies.evaluation.bootstrap_interval`, the resampling of
the honest-numbers tables: same seed, same scenes, so every row is drawn with the same
resamples) and keeps every scene's values (``per_image``). :func:`paired_interventions` then
compares two modes on the same scenes (paired bootstrap, ``bootstrap_interval(minus=...)``):

- ``channel_mean`` against the model as trained: what SimAM's 3-D (position-dependent) part
  adds beyond its channel part, since ``channel_mean`` keeps exactly the channel part;
- ``spatial_mean`` against the model: what the 3-D part adds beyond a spatial part;
- ``channel_mean - constant`` and ``spatial_mean - constant``: what the channel (spatial) part
  adds beyond the overall gain, the 3-D part being gone in both; KL(channel_mean) close to
  KL(constant) means the channel part alone recovers nothing of the module's effect;
- ``channel_mean - spatial_mean``: the paper's 1-D against 2-D, reduced from the same weights;
- ``exact`` against the model: Eqn (2)'s exact minimum instead of Eqn (5)'s shortcut.

Against the model only the change in probability and the flips are compared: a KL from the
model is >= 0 by construction, so an interval that excludes 0 would say nothing. For SE,
whose weights are one per channel, ``channel_mean`` leaves them as they are (its row is exactly
0, a check) and ``spatial_mean`` equals ``constant``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from simam_viz.engine.intervention import MODES, attention_blocks, intervention_effects
from simam_viz.errors import SimamVizError
from simam_viz.images import load_image
from simam_viz.networks.models import model_info
from simam_viz.rendering.jsonsafe import to_json_safe
from simam_viz.studies.distributed import Shard
from simam_viz.studies.evaluation import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    Sample,
    bootstrap_interval,
    load_samples,
    write_dict_csv,
)

__all__ = [
    "BLOCK_SETS",
    "COMPARISONS",
    "METRICS",
    "NOISE",
    "PAIRED_FIELDS",
    "ROW_FIELDS",
    "TARGETS",
    "Comparison",
    "block_sets",
    "format_intervention_table",
    "format_paired_interventions",
    "intervention_study",
    "paired_interventions",
    "read_rows",
    "study_modes",
    "write_intervention_csv",
    "write_paired_csv",
    "write_per_image_csv",
    "write_rows",
]

LOG = logging.getLogger(__name__)

BLOCK_SETS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "all")
"""The block sets of the study: each stage's attention blocks changed together, then all."""

METRICS: dict[str, str] = {
    "prob_change": "change in the target's probability (after - before)",
    "flip": "top-1 class changed (share of scenes)",
    "kl": "KL(p_ref || p), nats",
}
"""Per-scene values of every row, with what they mean."""

NOISE = 1e-6
"""Differences this small are float32 rounding (a module's product recomputed by the hook),
not effects: an interval must lie beyond it to count as excluding 0."""

TARGETS = ("prediction", "label")
"""Whose probability is followed: the unchanged model's top-1 (default) or the scene's label."""

ROW_FIELDS = ("model", "arch", "mode", "blocks", "n_blocks", "target", "images", "prob_ref",
              *(f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")))
"""Columns of :func:`intervention_study`'s rows (and their CSV); ``per_image`` is not one."""

PAIRED_FIELDS = ("model", "arch", "blocks", "a", "b", "question", "metric", "images",
                 "difference", "lo", "hi", "excludes_zero", "verdict")
"""Columns of :func:`paired_interventions`' rows: mode ``a`` minus mode ``b`` (``b`` =
``"model"``: the unchanged model), one line per metric."""


@dataclass(frozen=True)
class Comparison:
    """Mode ``a`` minus mode ``b`` on the same scenes (``b=None``: the model as trained)."""

    a: str
    b: str | None
    question: str

    @property
    def metrics(self) -> tuple[str, ...]:
        """KL from the unchanged model is >= 0 by construction: compared only between modes."""
        return ("prob_change", "flip") if self.b is None else tuple(METRICS)

    @property
    def title(self) -> str:
        return f"{self.a} − {self.b or 'model'}"


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("channel_mean", None, "3-D part beyond the channel part"),
    Comparison("spatial_mean", None, "3-D part beyond the spatial part"),
    Comparison("channel_mean", "constant", "channel part beyond the gain (no 3-D part in either)"),
    Comparison("spatial_mean", "constant", "spatial part beyond the gain (no 3-D part in either)"),
    Comparison("channel_mean", "spatial_mean", "1-D channel part against 2-D spatial part"),
    Comparison("exact", None, "Eqn (2)'s exact minimum against Eqn (5)'s shortcut"),
)
"""The questions of issue 23, each as a paired difference of two modes (see the module doc)."""


def block_sets(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{stage: its attention blocks, ..., "all": every attention block}``; stages without an
    attention module are left out (none for the four kinds here, but a model may lack some)."""
    blocks = attention_blocks(model)
    sets = {stage: tuple(b for b in blocks if b.split(".")[0] == stage)
            for stage in BLOCK_SETS[:-1]}
    sets = {name: chosen for name, chosen in sets.items() if chosen}
    if blocks:
        sets["all"] = blocks
    return sets


def study_modes(model: nn.Module, modes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The modes the model's kind takes (:attr:`AttentionKind.interventions`), in
    :data:`MODES` order, limited to ``modes`` when given; () for a model without attention."""
    if modes is not None:
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise SimamVizError(f"unknown intervention mode {unknown[0]!r}; expected one of "
                                f"{', '.join(MODES)}")
    takes = model_info(model).kind.interventions
    return tuple(m for m in MODES if m in takes and (modes is None or m in modes))


def _name(model: nn.Module) -> str:
    info = model_info(model)
    return info.name or info.title


def _score_sample(sample: Sample, plans: Sequence[tuple[nn.Module, tuple[str, ...],
                                                         dict[str, tuple[str, ...]]]],
                  target: str) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
    """One scene, every model, mode and block set: ``[((model, mode, set), values)]``."""
    image = load_image(sample.path)
    found = []
    for model, modes, sets in plans:
        for mode in modes:
            table = intervention_effects(model, image, mode=mode, block_sets=sets,
                                         target=sample.label if target == "label" else None)
            ref = table["reference"]
            for name in sets:
                effect = table[name]
                found.append(((_name(model), mode, name), {
                    "path": str(sample.path), "label": sample.label, "target": ref["target"],
                    "prob_ref": ref["prob"], "prob": effect["prob"],
                    "prob_change": effect["prob"] - ref["prob"],
                    "flip": int(effect["top1"] != ref["top1"]), "kl": effect["kl"],
                }))
    return found


def _mean(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def intervention_study(
    models: Sequence[nn.Module],
    data_dir: str | Path,
    *,
    split: str = "test",
    modes: Sequence[str] | None = None,
    limit: int | None = None,
    target: str = "prediction",
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    progress: bool = False,
    shard: Shard | None = None,
) -> list[dict[str, Any]]:
    """One row per (model, mode, block set) over the scenes of ``data_dir/split``.

    The scenes are :func:`~simam_viz.studies.evaluation.load_samples`' (the same even subset
    for the same ``limit`` as ``evaluate``). Models without attention are skipped; ``modes``
    (default: all) is limited per model to those its kind takes. Each row has
    :data:`ROW_FIELDS`: the mean of each of :data:`METRICS` over the scenes with its 95 %
    bootstrap interval (``resamples`` resamples seeded by ``seed``), ``prob_ref`` the mean
    probability of the target before, and ``per_image``: every scene's path, label, target,
    ``prob_ref``, ``prob`` and metrics. ``shard`` (under torchrun) scores this process's share
    of the scenes; the values are gathered and put back in scene order before any mean, so
    every rank returns what one process would.
    """
    if target not in TARGETS:
        raise SimamVizError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    plans = [(m, study_modes(m, modes), block_sets(m)) for m in models]
    plans = [p for p in plans if p[1]]
    if not plans:
        wanted = f" that takes {', '.join(modes)}" if modes else ""
        raise SimamVizError(f"no model with an attention module{wanted} to intervene on")
    shard = shard or Shard()
    classes, samples = load_samples(data_dir, split, limit)
    if target == "label":
        for model, _, _ in plans:
            if list(model_info(model).class_names) != classes:
                raise SimamVizError(f"{_name(model)}: classes differ from {split}/ folders")
    mine = shard.take(list(enumerate(samples)))
    scored = [(index, _score_sample(sample, plans, target))
              for index, sample in tqdm(mine, disable=not progress or not shard.main,
                                        unit="img", desc="interventions")]
    merged = sorted((item for part in shard.gather(scored) for item in part),
                    key=lambda item: item[0])
    values: dict[tuple[str, str, str], dict[str, list[Any]]] = defaultdict(
        lambda: defaultdict(list))
    for _, found in merged:
        for key, scene in found:
            for field, value in scene.items():
                values[key][field].append(value)
    archs = {_name(m): model_info(m).arch for m, _, _ in plans}
    sizes = {(_name(m), name): len(blocks) for m, _, sets in plans
             for name, blocks in sets.items()}
    rows = []
    for (name, mode, blocks), per_image in values.items():
        row: dict[str, Any] = {
            "model": name, "arch": archs[name], "mode": mode, "blocks": blocks,
            "n_blocks": sizes[name, blocks], "target": target,
            "images": len(per_image["path"]), "prob_ref": _mean(per_image["prob_ref"]),
        }
        for metric in METRICS:
            row[metric] = _mean(per_image[metric])
            row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_interval(
                per_image[metric], resamples=resamples, seed=seed)
        row["per_image"] = {k: list(v) for k, v in per_image.items()}
        rows.append(row)
    LOG.info("intervention study: %d models, %d rows, %d scenes of %s/%s", len(plans),
             len(rows), len(samples), data_dir, split)
    return rows


def paired_interventions(
    rows: Sequence[dict[str, Any]],
    comparisons: Sequence[Comparison] = COMPARISONS,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each comparison's paired difference, per model, block set and metric.

    For ``Comparison(a, b)`` the per-scene difference is ``a``'s value minus ``b``'s on the
    same scene (for ``prob_change`` that is ``prob_a - prob_b``; for ``b=None``, ``a``'s own
    value: its difference from the model as trained). ``difference`` is its mean over the
    scenes where both are defined, ``lo``/``hi`` the paired bootstrap interval of
    :func:`~simam_viz.studies.evaluation.bootstrap_interval` (``minus=``), seeded by ``seed``;
    ``verdict`` is ``"finding"`` only when that interval excludes 0, else ``"no finding"``;
    "excludes 0" means it lies wholly beyond :data:`NOISE` on one side, so that a float32
    rounding difference (SE's ``channel_mean``, which changes nothing) is not called one. A
    comparison is left out for a model whose kind does not take both modes.
    """
    index = {(r["model"], r["mode"], r["blocks"]): r for r in rows}
    out: list[dict[str, Any]] = []
    for (model, mode, blocks), row in index.items():
        for comp in comparisons:
            if mode != comp.a:
                continue
            other = index.get((model, comp.b, blocks)) if comp.b is not None else None
            if comp.b is not None and other is None:
                continue
            if other is not None and other["per_image"]["path"] != row["per_image"]["path"]:
                raise SimamVizError(f"{model}: {comp.a} and {comp.b} were not run on the same "
                                    "scenes: no paired difference")
            for metric in comp.metrics:
                a = np.asarray(row["per_image"][metric], dtype=np.float64)
                b = (np.zeros_like(a) if other is None
                     else np.asarray(other["per_image"][metric], dtype=np.float64))
                both = np.isfinite(a) & np.isfinite(b)
                lo, hi = bootstrap_interval(a, minus=b, resamples=resamples, level=level,
                                            seed=seed)
                excludes = bool(lo > NOISE or hi < -NOISE)
                out.append({
                    "model": model, "arch": row["arch"], "blocks": blocks, "a": comp.a,
                    "b": comp.b or "model", "question": comp.question, "metric": metric,
                    "images": int(both.sum()), "difference": _mean(a[both] - b[both]),
                    "lo": lo, "hi": hi, "excludes_zero": excludes,
                    "verdict": "finding" if excludes else "no finding",
                })
    order = {c.title: i for i, c in enumerate(comparisons)}
    models = list(dict.fromkeys(r["model"] for r in rows))
    out.sort(key=lambda d: (models.index(d["model"]), order[f"{d['a']} − {d['b']}"],
                            _set_order(d["blocks"]), list(METRICS).index(d["metric"])))
    LOG.info("%d paired intervention differences", len(out))
    return out


def _set_order(name: str) -> int:
    return BLOCK_SETS.index(name) if name in BLOCK_SETS else len(BLOCK_SETS)


# ---- tables and files --------------------------------------------------------------------------


def _digits(metric: str) -> tuple[float, int]:
    """Scale and digits a metric is shown with: flips as %, probabilities and KL to 4 (a
    module's effect on one block is often below 1e-3)."""
    return (100.0, 1) if metric == "flip" else (1.0, 4)


def _cell(mean: float, lo: float, hi: float, metric: str, sign: bool = False) -> str:
    if not math.isfinite(mean):
        return "n/a"
    scale, digits = _digits(metric)
    fmt = f"{'+' if sign else ''}.{digits}f"
    return f"{scale * mean:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"


def _ordered(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(rows, key=lambda r: (models.index(r["model"]), list(MODES).index(r["mode"]),
                                       _set_order(r["blocks"])))


def format_intervention_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per model, mode and block set, the mean change in the target's probability,
    the share of top-1 flips (%) and the mean KL, each ``mean [95 % bootstrap interval]``."""
    if not rows:
        return "no intervention rows"
    target = {r["target"] for r in rows}
    lines = [f"Interventions on the attention over {rows[0]['images']} scenes; target: "
             f"{' / '.join(sorted(target))}; mean [95 % bootstrap interval].", "",
             "| model | mode | blocks | p before | Δ target prob | top-1 flips % | KL (nats) |",
             "|---|---|---|---|---|---|---|"]
    for r in _ordered(rows):
        cells = [_cell(r[m], r[f"{m}_lo"], r[f"{m}_hi"], m, sign=m == "prob_change")
                 for m in METRICS]
        lines.append(f"| {r['model']} | {r['mode']} | {r['blocks']} ({r['n_blocks']}) | "
                     f"{r['prob_ref']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paired_interventions(diffs: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per (model, comparison, block set), a cell per metric
    ``+d [95 % paired interval]`` (``*``: excludes 0), and the verdict: ``finding (...)``
    naming the metrics whose interval excludes 0, else ``no finding``."""
    if not diffs:
        return "no paired intervention differences (the modes compared were not run)"
    keys = list(dict.fromkeys((d["model"], d["a"], d["b"], d["blocks"]) for d in diffs))
    cell = {(d["model"], d["a"], d["b"], d["blocks"], d["metric"]): d for d in diffs}
    titles = {"prob_change": "Δ target prob", "flip": "flips Δ pts", "kl": "KL Δ"}
    lines = ["Paired differences of two modes on the same scenes: mean [95 % paired bootstrap "
             "interval]; * the interval excludes 0 (a finding); `model`: the model as trained "
             "(KL from it is >= 0 by construction, so not compared).", "",
             "| model | comparison | question | blocks | " + " | ".join(titles.values())
             + " | verdict |", "|---|---|---|---|---|---|---|---|"]
    for model, a, b, blocks in keys:
        shown, found = [], []
        for metric in METRICS:
            d = cell.get((model, a, b, blocks, metric))
            if d is None:
                shown.append("–")
                continue
            star = " *" if d["excludes_zero"] else ""
            shown.append(_cell(d["difference"], d["lo"], d["hi"], metric, sign=True) + star)
            if d["excludes_zero"]:
                found.append(titles[metric])
        question = next(d["question"] for d in diffs if (d["model"], d["a"], d["b"]) ==
                        (model, a, b))
        verdict = f"finding ({', '.join(found)})" if found else "no finding"
        lines.append(f"| {model} | {a} − {b} | {question} | {blocks} | " + " | ".join(shown)
                     + f" | {verdict} |")
    return "\n".join(lines)


def _write_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str], path: str | Path) -> Path:
    return write_dict_csv(rows, fields, path, digits=6)


def write_intervention_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (:data:`ROW_FIELDS`, 6 decimals, ``nan`` where undefined)."""
    return _write_csv(_ordered(rows), ROW_FIELDS, path)


def write_paired_csv(diffs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """:func:`paired_interventions`' rows as CSV (:data:`PAIRED_FIELDS`)."""
    return _write_csv(diffs, PAIRED_FIELDS, path)


PER_IMAGE_FIELDS = ("model", "arch", "mode", "blocks", "path", "label", "target", "prob_ref",
                    "prob", "prob_change", "flip", "kl")


def write_per_image_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One line per (model, mode, block set, scene): every value the means are made of, so
    any other statistic can be computed without running the models again."""
    def lines() -> Iterable[dict[str, Any]]:
        for r in _ordered(rows):
            per = r["per_image"]
            for i in range(len(per["path"])):
                yield {"model": r["model"], "arch": r["arch"], "mode": r["mode"],
                       "blocks": r["blocks"], **{k: per[k][i] for k in per}}
    return _write_csv(lines(), PER_IMAGE_FIELDS, path)


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows, per-image values included, as strict JSON (NaN as null): a study's cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": "simam-viz-interventions", "version": 1, "rows": list(rows)}
    path.write_text(json.dumps(to_json_safe(document), allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """:func:`write_rows`' rows back, NaN restored where the JSON has null."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("format") != "simam-viz-interventions":
        raise SimamVizError(f"{path}: not an intervention study file")
    rows = []
    for row in document["rows"]:
        row = {k: (math.nan if v is None else v) for k, v in row.items()}
        row["per_image"] = {k: [math.nan if x is None else x for x in v]
                            for k, v in row["per_image"].items()}
        rows.append(row)
    return rows
