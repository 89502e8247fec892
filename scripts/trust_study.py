"""The trust study of docs/studies.md: faithfulness and sanity scores of the three demo models.

``simam-viz evaluate --faithfulness --sanity`` on the demo models, the test split, Grad-CAM,
Grad-CAM++ and LayerCAM at ``layer4.2`` (block output, and before/after SE and SimAM), then the
tables of docs/studies.md (mean and 95 % bootstrap interval per score) and the figure of the
cascading randomization (mean Spearman, SSIM and HOG similarity by step, Grad-CAM at the block
output).

Each (model, method) pair is one job: ``evaluation.evaluate`` for that model and method alone,
in a process of its own with one torch thread. On a shared 2-core CPU, two single-threaded
processes keep both cores busy without the stalls of a two-threaded one whose second thread
waits for a core another program holds; the rows are the same as one run with every model and
method (each image's scores depend only on model, image, map and seed). A finished job's rows
are kept in ``OUT/<arch>-<method>.json`` and not recomputed, so an interrupted study resumes;
``--from-cache`` only redraws the tables and the figure.

Usage::

    python scripts/trust_study.py [--data build/scenes] [--limit 60] [--jobs 2]
                                  [--out build/trust_study] [--figure docs/study/sanity_cascade.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("resnet50", "se_resnet50", "simam_resnet50")
TITLES = {"resnet50": "ResNet-50", "se_resnet50": "SE-ResNet-50",
          "simam_resnet50": "SimAM-ResNet-50"}
METHODS = ("gradcam", "gradcam++", "layercam")
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}
BLOCK = "layer4.2"
FAITHFULNESS_COLUMNS = (("road", "ROAD ↑"), ("drop_in_confidence", "drop in conf. ↓"),
                        ("increase_in_confidence", "increase in conf. ↑"),
                        ("deletion_auc", "deletion AUC ↓"), ("insertion_auc", "insertion AUC ↑"))
SANITY_COLUMNS = (("spearman_fc", "Spearman fc"), ("ssim_fc", "SSIM fc"), ("hog_fc", "HOG fc"),
                  ("spearman_stem", "Spearman all"), ("ssim_stem", "SSIM all"),
                  ("mean_abs_spearman", "mean abs Spearman"), ("flat", "flat maps %"))


def _job(args: tuple[str, str, str, int | None, str]) -> tuple[str, str, float]:
    """One (arch, method) evaluation in this worker process; rows cached as JSON."""
    arch, method, data, limit, out = args
    import torch

    torch.set_num_threads(1)
    from simam_viz.studies.evaluation import evaluate, write_per_image
    from simam_viz.weights.checkpoints import load_model

    start = time.perf_counter()
    model = load_model(ROOT / "checkpoints" / "demo" / f"{arch}.safetensors")
    rows = evaluate([model], data, methods=(method,), block=BLOCK, limit=limit,
                    faithfulness=True, sanity=True, baselines=True, progress=True)
    write_per_image(rows, _cache(Path(out), arch, method, limit))
    return arch, method, time.perf_counter() - start


def _cache(out: Path, arch: str, method: str, limit: int | None) -> Path:
    """One job's rows; the subset size is in the name, so another ``--limit`` recomputes."""
    return out / f"{arch}-{method.replace('+', 'p')}-n{limit or 'all'}.json"


def run_jobs(data: str, limit: int | None, out: Path, jobs: int,
             methods: Sequence[str] = METHODS) -> None:
    """Every missing (arch, method) job, ``jobs`` at a time, largest first."""
    todo = [(arch, method, data, limit, str(out)) for arch in reversed(ARCHS) for method in methods
            if not _cache(out, arch, method, limit).is_file()]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
    run_pool(_job, todo, jobs, lambda r: f"{r[0]} {r[1]}: {r[2] / 60:.1f} min")


def run_pool(job: Callable[[Any], Any], todo: list[Any], jobs: int,
             describe: Callable[[Any], str]) -> None:
    """``job`` over ``todo`` in ``jobs`` single-threaded processes (two keep a shared 2-core
    CPU busy without oversubscribing it), one line per finished job."""
    if not todo:
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        for result in pool.map(job, todo):
            print(describe(result), flush=True)


def load_rows(out: Path, limit: int | None, methods: Sequence[str] = METHODS
              ) -> list[dict[str, Any]]:
    """All cached rows, NaN restored where the JSON has null."""
    rows = []
    for arch in ARCHS:
        for method in methods:
            path = _cache(out, arch, method, limit)
            if not path.is_file():
                raise SystemExit(f"{path} is missing: run without --from-cache first")
            for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
                rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def _cell(row: dict[str, Any], field: str) -> str:
    mean = row[field]
    if not math.isfinite(mean):
        return "n/a"
    digits = 1 if field == "flat" else 3
    return f"{mean:.{digits}f} [{row[field + '_lo']:.{digits}f}, {row[field + '_hi']:.{digits}f}]"


def _map_label(row: dict[str, Any]) -> str:
    if row["where"] == "output":
        return "block output"
    module = "SimAM" if row["arch"] == "simam_resnet50" else "SE"
    return f"{row['where']} {module}"


def _ordered(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """As the localization table: block outputs by method then model, then before/after."""
    def key(r: dict[str, Any]) -> tuple:
        inside = r["where"] != "output"
        return (inside, ARCHS.index(r["arch"]) if inside else 0, METHODS.index(r["method"]),
                ARCHS.index(r["arch"]), ("output", "before", "after").index(r["where"]))
    return sorted(rows, key=key)


BASELINE_TITLES = {"random": "random map", "center": "centred Gaussian map"}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """docs/studies.md's tables: faithfulness with each block output's two baseline maps (the
    same scores for maps that know nothing, on the same scenes), each map minus its random
    baseline with a paired interval, sanity, and each model minus ResNet-50 (paired)."""
    from simam_viz.studies.evaluation import format_paired_table, paired_differences

    rows = [{**r, "model": TITLES[r["arch"]]} for r in rows]  # titles, not file names
    out = []
    for columns in (FAITHFULNESS_COLUMNS, SANITY_COLUMNS):
        out += ["| model | method | map | " + " | ".join(t for _, t in columns) + " |",
                "|---|---|---|" + "---|" * len(columns)]
        for r in _ordered(rows):
            out.append(f"| {TITLES[r['arch']]} | {METHOD_TITLES[r['method']]} | {_map_label(r)} | "
                       + " | ".join(_cell(r, f) for f, _ in columns) + " |")
            if columns is FAITHFULNESS_COLUMNS and r["where"] == "output":
                for kind, title in BASELINE_TITLES.items():
                    if f"road_{kind}" in r:
                        out.append(f"| | | {title} | " + " | ".join(
                            _cell(r, f"{f}_{kind}") for f, _ in columns) + " |")
        out.append("")
    out += [baseline_differences(rows), "",
            format_paired_table(paired_differences(rows, "resnet50")), ""]
    return "\n".join(out)


def baseline_differences(rows: Sequence[dict[str, Any]]) -> str:
    """Each map's score minus each baseline map's on the same scenes, with the paired interval
    (``bootstrap_interval(minus=...)``): is the map better than one that knows nothing (the
    random map), and better than a centre prior (the centred Gaussian)?"""
    import numpy as np

    from simam_viz.studies.evaluation import bootstrap_interval

    lines = ["| model | map minus | " + " | ".join(t for _, t in FAITHFULNESS_COLUMNS) + " |",
             "|---|---|" + "---|" * len(FAITHFULNESS_COLUMNS)]
    for r in _ordered(rows):
        values = r.get("per_image", {})
        if r["where"] != "output" or "road_random" not in values:
            continue
        for kind, title in BASELINE_TITLES.items():
            cells = []
            for field, _ in FAITHFULNESS_COLUMNS:
                a = np.asarray(values[field], dtype=np.float64)
                b = np.asarray(values[f"{field}_{kind}"], dtype=np.float64)
                both = np.isfinite(a) & np.isfinite(b)
                lo, hi = bootstrap_interval(a, minus=b)
                star = " *" if lo > 0 or hi < 0 else ""
                cells.append(f"{float(np.mean(a[both] - b[both])):+.3f} "
                             f"[{lo:+.3f}, {hi:+.3f}]{star}")
            lines.append(f"| {TITLES[r['arch']]} ({METHOD_TITLES[r['method']]}) | {title} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Mean similarity to the trained model's map by cascade step, one line per model, with
    its 95 % bootstrap band (Grad-CAM, layer4.2 output; a flat map counts as Spearman and HOG
    0, SSIM as computed, the library's rule)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from simam_viz.studies.evaluation import bootstrap_interval

    chosen = {r["arch"]: r for r in rows if r["method"] == "gradcam" and r["where"] == "output"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True)
    for ax, score, title in zip(axes, ("spearman", "ssim", "hog"),
                                ("Spearman rank correlation", "SSIM", "HOG correlation"),
                                strict=True):
        for arch in ARCHS:
            row = chosen[arch]
            layers = row["cascade"]["layers"]
            values = np.array(row["cascade"][score], dtype=np.float64)  # images x steps
            values[~np.isfinite(values)] = np.nan
            steps = np.arange(len(layers) + 1)  # 0: the trained model, its map against itself
            mean = np.array([1.0] + [np.nanmean(c) if np.isfinite(c).any() else np.nan
                                     for c in values.T])
            band = np.array([(1.0, 1.0)] + [bootstrap_interval(c) for c in values.T])
            line, = ax.plot(steps, mean, marker="o", ms=3, label=TITLES[arch])
            ax.fill_between(steps, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_title(title)
        ax.set_xticks(steps, ["trained", *layers], rotation=70, fontsize=7)
        ax.set_ylim(-0.4, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's map")
    axes[0].legend(fontsize=8, loc="lower left")
    n = chosen[ARCHS[0]]["images"]
    fig.suptitle(f"Cascading randomization (Adebayo et al. 2018), Grad-CAM at {BLOCK} output, "
                 f"{n} test scenes; step k re-initialises every part up to k "
                 "(mean, 95 % bootstrap band)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "build" / "scenes"))
    parser.add_argument("--limit", type=int, default=60, help="even subset of the test split")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--out", default=str(ROOT / "build" / "trust_study"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "study" / "sanity_cascade.png"))
    parser.add_argument("--from-cache", action="store_true", help="only redraw table and figure")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="CAM methods (default: all three)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    if not args.from_cache:
        run_jobs(args.data, args.limit, out, args.jobs, args.methods)
    rows = load_rows(out, args.limit, args.methods)
    table = markdown(rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {figure(rows, Path(args.figure))} and {out / 'table.md'} "
          f"({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
