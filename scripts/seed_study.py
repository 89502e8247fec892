"""Seed spread of the localization study: the same scenes, every trained seed of the demo models.

Seed 0 is the shipped ``checkpoints/demo``; seed N is ``build/seeds/N/final`` once
``make study-seeds`` finished it (its ``.done`` marker and one checkpoint per arch). Every
model of every seed is scored by ``evaluation.evaluate`` on the same test scenes, Grad-CAM,
Grad-CAM++ and LayerCAM at ``layer4.2`` (pointing, energy in mask, IoU; with ``--trust`` the
faithfulness scores too), and the report gives, per model, method and metric, each seed's mean,
the mean and the range across seeds; then, per seed, each model minus ResNet-50 and each
attention module's after minus before with its 95 % paired bootstrap interval
(``evaluation.paired_differences``), and a verdict: a difference is called a finding only when
every seed's interval excludes 0 on the same side. One seed says nothing about the spread, and
the report says so.

Each (seed, arch) pair is one job in a process of its own with one torch thread (as
``scripts/trust_study.py``: two single-threaded processes keep a shared 2-core CPU busy); its
rows, per-image values included, are kept in ``OUT/seed<S>-<arch>-n<limit>.json``, so a rerun
after another seed finished only scores the new seed. Seeds 1 and up also leave their rows in
``docs/study/seed_rows/`` (committed, about 1 MB per seed), so a seed trained once joins every
later report, on any machine, without its (unshipped) checkpoints.

Usage::

    python scripts/seed_study.py [--data build/scenes] [--limit N] [--jobs 2] [--trust]
                                 [--out build/seed_study]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_study import (  # noqa: E402  the same models, maps, pool
    ARCHS,
    BLOCK,
    METHODS,
    ROOT,
    TITLES,
    run_pool,
)

LOCALIZATION = (("pointing", "pointing %"), ("energy", "energy in mask %"), ("iou", "IoU@0.5 %"))


def seed_folders(root: Path = ROOT) -> dict[int, Path]:
    """Seed -> folder of its three checkpoints: 0 the shipped demo models, then every
    finished ``build/seeds/N/final`` (``.done`` present and every arch's checkpoint there)."""
    found = {0: root / "checkpoints" / "demo"}
    for final in sorted((root / "build" / "seeds").glob("*/final")):
        if not final.parent.name.isdigit() or not (final / ".done").is_file():
            continue
        if all((final / f"{arch}.safetensors").is_file() for arch in ARCHS):
            found[int(final.parent.name)] = final
    return dict(sorted(found.items()))


ROWS = ROOT / "docs" / "study" / "seed_rows"
"""Every finished seed's per-image rows, committed (about 1 MB per seed): the trained seeds
are not shipped and training one takes an hour and a half on this CPU, so a seed scored once
joins every later report from its rows alone, on any machine."""


def kept_seeds(rows: Path, limit: int | None, trust: bool) -> list[int]:
    """Seeds (1 and up) whose rows for every arch are in ``rows``."""
    seeds = set()
    for path in rows.glob("seed*-resnet50-*.json"):
        digits = path.name[len("seed"):].split("-", 1)[0]
        if digits.isdigit() and int(digits) > 0 and all(
                _cache(rows, int(digits), arch, limit, trust).is_file() for arch in ARCHS):
            seeds.add(int(digits))
    return sorted(seeds)


def keep_rows(source: Path, target: Path) -> Path:
    """Copy one job's rows into the committed folder, each scene named by its path relative
    to its split folder's parent (``test/apple/000000.png``): no machine's paths in git, and
    the three archs of a seed still line up scene by scene."""
    document = json.loads(source.read_text(encoding="utf-8"))
    for row in document["rows"]:
        paths = row.get("per_image", {}).get("path")
        if paths:
            row["per_image"]["path"] = [str(Path(*Path(p).parts[-3:])) for p in paths]
    target.write_text(json.dumps(document, allow_nan=False), encoding="utf-8")
    return target


def _cache(out: Path, seed: int, arch: str, limit: int | None, trust: bool) -> Path:
    """One job's rows; subset size and trust columns are in the name, so they recompute."""
    return out / f"seed{seed}-{arch}-n{limit or 'all'}{'-trust' if trust else ''}.json"


def _job(args: tuple[int, str, str, str, int | None, bool, str]) -> tuple[int, str, float]:
    """One model of one seed, every method, in this worker process; rows cached as JSON."""
    seed, folder, arch, data, limit, trust, out = args
    import torch

    torch.set_num_threads(1)
    from simam_viz.studies.evaluation import evaluate, write_per_image
    from simam_viz.weights.checkpoints import load_model

    start = time.perf_counter()
    model = load_model(Path(folder) / f"{arch}.safetensors")
    rows = evaluate([model], data, methods=METHODS, block=BLOCK, limit=limit,
                    faithfulness=trust, keep_values=True, progress=True)
    write_per_image(rows, _cache(Path(out), seed, arch, limit, trust))
    return seed, arch, time.perf_counter() - start


def run_jobs(seeds: dict[int, Path], data: str, limit: int | None, trust: bool, out: Path,
             jobs: int) -> None:
    """Every (seed, arch) job without a cached result, ``jobs`` processes at a time."""
    todo = [(seed, str(folder), arch, data, limit, trust, str(out))
            for seed, folder in seeds.items() for arch in reversed(ARCHS)
            if not _cache(out, seed, arch, limit, trust).is_file()]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
    run_pool(_job, todo, jobs, lambda r: f"seed {r[0]} {r[1]}: {r[2] / 60:.1f} min")


def load_rows(out: Path, seed: int, limit: int | None, trust: bool) -> list[dict[str, Any]]:
    """One seed's rows (every arch), NaN restored where the JSON has null; the model name
    is replaced by the arch's title so that seeds line up."""
    rows = []
    for arch in ARCHS:
        document = json.loads(_cache(out, seed, arch, limit, trust).read_text(encoding="utf-8"))
        for row in document["rows"]:
            row = {k: (math.nan if v is None else v) for k, v in row.items()}
            row["per_image"] = {k: [math.nan if x is None else x for x in v]
                                for k, v in row["per_image"].items()}
            row["model"] = TITLES[arch]
            rows.append(row)
    return rows


def _metrics(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    from simam_viz.studies.evaluation import FAITHFULNESS_FIELDS

    trust = [(f, f.replace("_", " ")) for f in FAITHFULNESS_FIELDS if f in rows[0]]
    return [*LOCALIZATION, *trust]


def _fmt(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.1f}" if metric in ("pointing", "energy", "iou") else f"{value:.3f}"


def means_table(by_seed: dict[int, list[dict[str, Any]]]) -> str:
    """Per model, method and metric (block output): each seed's mean, then mean and range."""
    seeds = list(by_seed)
    metrics = _metrics(next(iter(by_seed.values())))
    lines = ["| model | method | metric | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean across seeds | range (min-max) |",
             "|---|---|---|" + "---|" * (len(seeds) + 2)]
    for method in METHODS:
        for arch in ARCHS:
            for metric, title in metrics:
                values = [next(r[metric] for r in by_seed[s] if r["arch"] == arch
                               and r["method"] == method and r["where"] == "output")
                          for s in seeds]
                spread = ("1 seed: no spread yet" if len(seeds) == 1 else
                          f"{_fmt(min(values), metric)}-{_fmt(max(values), metric)}")
                lines.append(f"| {TITLES[arch]} | {method} | {title} | "
                             + " | ".join(_fmt(v, metric) for v in values)
                             + f" | {_fmt(float(np.mean(values)), metric)} | {spread} |")
    return "\n".join(lines)


def _verdict(cells: Sequence[dict[str, Any]]) -> str:
    """A finding only if every seed's interval excludes 0, all on the same side."""
    signs = {math.copysign(1.0, d["difference"]) for d in cells if d["excludes_zero"]}
    if len(cells) == 1:
        return "finding on 1 seed only" if signs else "no finding"
    if all(d["excludes_zero"] for d in cells) and len(signs) == 1:
        return "finding (every seed)"
    return "no finding"


def differences_table(diffs_by_seed: dict[int, list[dict[str, Any]]]) -> str:
    """Each paired difference per seed (``+d [lo, hi]``, * excludes 0), across seeds and the
    verdict."""
    seeds = list(diffs_by_seed)
    first = diffs_by_seed[seeds[0]]
    keys = list(dict.fromkeys((d["model"], d["method"], d["where"], d["reference"],
                               d["reference_where"], d["metric"]) for d in first))
    index = {s: {(d["model"], d["method"], d["where"], d["reference"], d["reference_where"],
                  d["metric"]): d for d in diffs} for s, diffs in diffs_by_seed.items()}
    lines = ["| difference | method | metric | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean across seeds | range | verdict |",
             "|---|---|---|" + "---|" * (len(seeds) + 3)]
    for key in keys:
        model, method, where, ref, ref_where, metric = key
        cells = [index[s][key] for s in seeds if key in index[s]]
        title = f"{model} − {ref}" if where == ref_where else f"{model}: {where} − {ref_where}"
        shown = []
        for d in cells:
            star = " *" if d["excludes_zero"] else ""
            digits = 1 if metric in ("pointing", "energy", "iou") else 3
            shown.append(f"{d['difference']:+.{digits}f} [{d['lo']:+.{digits}f}, "
                         f"{d['hi']:+.{digits}f}]{star}")
        values = [d["difference"] for d in cells]
        spread = ("1 seed: no spread yet" if len(cells) == 1 else
                  f"{min(values):+.2f} to {max(values):+.2f}")
        lines.append(f"| {title} | {method} | {metric} | " + " | ".join(shown)
                     + f" | {float(np.mean(values)):+.2f} | {spread} | {_verdict(cells)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "build" / "scenes"))
    parser.add_argument("--limit", type=int, help="even subset of the test split (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--trust", action="store_true", help="add the faithfulness scores")
    parser.add_argument("--out", default=str(ROOT / "build" / "seed_study"))
    parser.add_argument("--rows", default=str(ROWS),
                        help="committed per-image rows of seeds 1 and up (read and written)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    from simam_viz.studies.evaluation import paired_differences

    out, start = Path(args.out), time.perf_counter()
    seeds = seed_folders()
    if not (seeds[0] / "resnet50.safetensors").is_file():
        parser.error(f"{seeds[0]}: the shipped demo models are missing")
    rows_dir = Path(args.rows)
    for seed in kept_seeds(rows_dir, args.limit, args.trust):  # scored once, kept in git
        seeds.setdefault(seed, rows_dir)
        for arch in ARCHS:
            cached = _cache(out, seed, arch, args.limit, args.trust)
            if not cached.is_file():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(_cache(rows_dir, seed, arch, args.limit, args.trust), cached)
    seeds = dict(sorted(seeds.items()))
    run_jobs(seeds, args.data, args.limit, args.trust, out, args.jobs)
    for seed in seeds:
        if seed > 0 and seeds[seed] != rows_dir:
            rows_dir.mkdir(parents=True, exist_ok=True)
            for arch in ARCHS:
                keep_rows(_cache(out, seed, arch, args.limit, args.trust),
                          _cache(rows_dir, seed, arch, args.limit, args.trust))
    by_seed = {s: load_rows(out, s, args.limit, args.trust) for s in seeds}
    diffs = {s: paired_differences(rows, "ResNet-50") for s, rows in by_seed.items()}
    n = by_seed[0][0]["images"]
    head = (f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
            f", {n} test scenes, maps at {BLOCK}"
            + ("; 1 seed: no spread yet" if len(seeds) == 1 else ""))
    report = "\n\n".join([head, "Means (block output):", means_table(by_seed),
                          "Paired differences on the same scenes, mean [95 % paired bootstrap "
                          "interval], * the interval excludes 0:", differences_table(diffs)])
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    print(f"wrote {out / 'table.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
