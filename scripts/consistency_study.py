"""Figure 6's consistency over the test scenes: does SimAM's attention agree with Grad-CAM?

The paper (Figure 6) says the Grad-CAM maps "are consistent with SimAM masks". For the shipped
SimAM demo model and every test scene, per block: the Spearman correlation between the
channel-mean attention and the Grad-CAM after SimAM (true class as target), both at the block's
grid (:mod:`simam_viz.engine.attention_agreement`), and the same correlation with ANOTHER
scene's attention (a shuffled null: scene ``s``'s Grad-CAM against the attention of scene
``partner[s]``, the pairing fixed by a seeded permutation with no scene paired with itself).
The table gives both means, and observed - null with a paired 95 % bootstrap interval over
scenes (``simam_viz.studies.evaluation.bootstrap_interval(minus=...)``): an interval above 0
says the attention agrees with its own image's Grad-CAM beyond the agreement any scene's
attention has (a shared centre bias, padding borders).

All 16 blocks, not one per stage: one analysis (one forward and one backward pass) records
every block's attention and Grad-CAM at once, so the other 12 blocks cost only their CAMs,
and Figure 6's claim is about SimAM in general, not about one depth; per-stage rows (each
scene's mean over the stage's blocks) summarise them.

Scenes are analysed in ``--jobs`` single-threaded processes (as scripts/trust_study.py, for a
shared 2-core CPU); each returns only the small block-grid maps.

Usage::

    python scripts/consistency_study.py [--data build/scenes] [--limit 16] [--jobs 1]
                                        [--seed 0] [--out build/consistency_study]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "demo" / "simam_resnet50.safetensors"

# one scene's maps: block -> (Grad-CAM after at the block grid, channel-mean attention)
Maps = dict[str, tuple[np.ndarray, np.ndarray]]


def _job(args: tuple[str, list[tuple[str, int]]]) -> tuple[list[Maps], float]:
    """Analyse a chunk of scenes in this worker process: their block-grid maps, seconds."""
    checkpoint, scenes = args
    import torch

    torch.set_num_threads(1)
    from simam_viz.engine.analysis import analyze
    from simam_viz.engine.attention_agreement import WHERE, cam_at_grid
    from simam_viz.images import load_image
    from simam_viz.weights.checkpoints import load_model

    model = load_model(checkpoint)
    start = time.perf_counter()
    out: list[Maps] = []
    for path, label in scenes:
        result = analyze(model, load_image(path), target=label, blocks="all")
        maps: Maps = {}
        for block in result.blocks:
            _, mean = result.attention(block)
            maps[block] = (cam_at_grid(result.cam(block, WHERE), mean.shape),
                           mean.astype(np.float64))
        out.append(maps)
    return out, time.perf_counter() - start


def partners(n: int, seed: int) -> np.ndarray:
    """``partner[s]``: whose attention scene ``s``'s Grad-CAM meets in the null.

    A seeded permutation walked as one cycle (each scene to the next in a shuffled order), so
    no scene is its own partner and every scene's attention is used exactly once.
    """
    if n < 2:
        raise SystemExit("the shuffled null needs at least 2 scenes")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def scores(scenes: Sequence[Maps], partner: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per block and per stage: observed and null Spearman per scene, in scene order."""
    from simam_viz.engine.attention_agreement import map_spearman
    from simam_viz.networks.models import BLOCKS

    rows: dict[str, dict[str, Any]] = {}
    for block in BLOCKS:
        if block not in scenes[0]:
            continue
        observed = [map_spearman(*s[block]) for s in scenes]
        null = [map_spearman(s[block][0], scenes[p][block][1]) for s, p in zip(
            scenes, partner, strict=True)]
        rows[block] = {"grid": list(scenes[0][block][1].shape), "observed": observed,
                       "null": null}
    for stage in sorted({b.split(".")[0] for b in rows}):
        members = [rows[b] for b in rows if b.split(".")[0] == stage]
        with np.errstate(invalid="ignore"):  # a scene with no finite block stays NaN
            rows[stage] = {
                "grid": members[-1]["grid"],
                **{key: [float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
                         for v in np.array([m[key] for m in members]).T]
                   for key in ("observed", "null")},
            }
    return rows


def table(rows: dict[str, dict[str, Any]], n: int, seed: int) -> str:
    """The markdown table: means with intervals, and observed - null with a paired one."""
    from simam_viz.studies.evaluation import bootstrap_interval

    def cell(values: Sequence[float], minus: Sequence[float] | None = None) -> str:
        a = np.asarray(values, dtype=np.float64)
        b = None if minus is None else np.asarray(minus, dtype=np.float64)
        d = a if b is None else a - b
        if not np.isfinite(d).any():
            return "n/a"
        lo, hi = bootstrap_interval(a, minus=b)
        star = " *" if b is not None and (lo > 0 or hi < 0) else ""
        return f"{float(np.nanmean(d)):+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"

    lines = [f"Spearman(channel-mean attention, Grad-CAM after SimAM), SimAM demo model, {n} "
             f"test scenes, true class; null: each scene's Grad-CAM against another scene's "
             f"attention (seeded permutation, seed {seed}). Mean [95 % bootstrap interval]; "
             "* : the paired interval of observed - null excludes 0.", "",
             "| block | grid | scenes | observed | null (other scene) | observed − null | "
             "own > null |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        obs = np.asarray(row["observed"], dtype=np.float64)
        null = np.asarray(row["null"], dtype=np.float64)
        both = np.isfinite(obs) & np.isfinite(null)
        wins = f"{100 * float(np.mean(obs[both] > null[both])):.0f} %" if both.any() else "n/a"
        label = f"**{name} (mean of its blocks)**" if "." not in name else name
        lines.append(f"| {label} | {row['grid'][0]}×{row['grid'][1]} | {int(both.sum())} | "
                     f"{cell(obs)} | {cell(null)} | {cell(obs, null)} | {wins} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "build" / "scenes"))
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--limit", type=int, default=None, help="even subset of the test split")
    parser.add_argument("--jobs", type=int, default=1, help="processes (one thread each)")
    parser.add_argument("--seed", type=int, default=0, help="the null's pairing")
    parser.add_argument("--out", default=str(ROOT / "build" / "consistency_study"))
    args = parser.parse_args(argv)
    from simam_viz.studies.evaluation import load_samples

    start = time.perf_counter()
    _, samples = load_samples(args.data, "test", args.limit)
    scenes = [(str(s.path), s.label) for s in samples]
    jobs = max(1, min(args.jobs, len(scenes)))
    chunks = [(args.checkpoint, scenes[i::jobs]) for i in range(jobs)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(jobs) as pool:
        done = list(pool.map(_job, chunks))
    maps: list[Maps] = [None] * len(scenes)  # type: ignore[list-item]
    for i, (chunk_maps, _) in enumerate(done):
        maps[i::jobs] = chunk_maps
    busy = sum(seconds for _, seconds in done)
    partner = partners(len(scenes), args.seed)
    rows = scores(maps, partner)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, len(scenes), args.seed)
    (out / "table.md").write_text(text, encoding="utf-8")
    from simam_viz.rendering.jsonsafe import to_json_safe

    (out / "scores.json").write_text(json.dumps(to_json_safe({
        "checkpoint": Path(args.checkpoint).name, "scenes": [p for p, _ in scenes],
        "seed": args.seed, "partner": partner.tolist(), "rows": rows}), allow_nan=False,
        indent=1), encoding="utf-8")
    print(text)
    print(f"wrote {out / 'table.md'}: {len(scenes)} scenes, {busy / len(scenes):.2f} s of "
          f"analysis per scene ({jobs} single-threaded process(es)), "
          f"{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
