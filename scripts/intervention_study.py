"""The intervention study of issue 23: what the demo models' attention weights do to the decision.

``simam-viz evaluate --interventions`` on the shipped demo models with an attention module
(SE-ResNet-50 and SimAM-ResNet-50; the plain ResNet-50 has none to change), the test split:
per model, mode its kind takes and block set (each stage, then all blocks), the mean change in
the top-1 class's probability, the share of top-1 flips and the mean KL with 95 % bootstrap
intervals, then the paired mode-against-mode differences (``simam_viz.studies.interventions``)
with a verdict. Forward passes only, no Grad-CAM.

Each arch is one job in a process of its own with one torch thread (as
``scripts/trust_study.py``: two single-threaded processes keep a shared 2-core CPU busy); its
rows, every scene's values included, are kept in ``OUT/<arch>-n<limit>.json``, so an
interrupted study resumes and ``--from-cache`` only redraws the tables. Writes
``OUT/table.md``, ``OUT/rows.csv``, ``OUT/paired.csv`` and ``OUT/per_image.csv``.

Usage::

    python scripts/intervention_study.py [--data build/scenes] [--limit N] [--jobs 2]
                                         [--out build/intervention_study] [--from-cache]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_study import (  # noqa: E402  the same demo models, titles and pool
    ARCHS,
    ROOT,
    TITLES,
    run_pool,
)


def attention_archs() -> tuple[str, ...]:
    """The demo archs whose kind has an attention module to intervene on."""
    from simam_viz.networks.models import ARCHS as SPECS

    return tuple(a for a in ARCHS if SPECS[a].kind.has_attention)


def _cache(out: Path, arch: str, limit: int | None) -> Path:
    """One job's rows; the subset size is in the name, so another ``--limit`` recomputes."""
    return out / f"{arch}-n{limit or 'all'}.json"


def _job(args: tuple[str, str, int | None, str, str]) -> tuple[str, float, int]:
    """Every mode and block set of one demo model in this worker process; rows cached."""
    arch, data, limit, out, models = args
    import torch

    torch.set_num_threads(1)
    from simam_viz.studies.interventions import intervention_study, write_rows
    from simam_viz.weights.checkpoints import load_model

    start = time.perf_counter()
    model = load_model(Path(models) / f"{arch}.safetensors")
    rows = intervention_study([model], data, limit=limit, progress=True)
    write_rows(rows, _cache(Path(out), arch, limit))
    return arch, time.perf_counter() - start, rows[0]["images"]


def run_jobs(data: str, limit: int | None, out: Path, jobs: int, models: Path) -> None:
    """Every arch without a cached result, ``jobs`` processes at a time, SimAM first (it
    takes one mode more)."""
    todo = [(arch, data, limit, str(out), str(models)) for arch in reversed(attention_archs())
            if not _cache(out, arch, limit).is_file()]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
    run_pool(_job, todo, jobs, lambda r: f"{r[0]}: {r[1] / 60:.1f} min, {r[2]} scenes, "
                                         f"{r[1] / r[2]:.2f} s per scene")


def load_rows(out: Path, limit: int | None) -> list[dict[str, Any]]:
    """Every arch's cached rows, the model named by its arch's title."""
    from simam_viz.studies.interventions import read_rows

    rows = []
    for arch in attention_archs():
        path = _cache(out, arch, limit)
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run without --from-cache first")
        for row in read_rows(path):
            row["model"] = TITLES[arch]
            rows.append(row)
    return rows


def report(rows: Sequence[dict[str, Any]], out: Path) -> str:
    """The two tables (means per mode and stage, paired differences with verdicts) as
    ``OUT/table.md``, and the rows, differences and per-scene values as CSV."""
    from simam_viz.studies.interventions import (
        format_intervention_table,
        format_paired_interventions,
        paired_interventions,
        write_intervention_csv,
        write_paired_csv,
        write_per_image_csv,
    )

    diffs = paired_interventions(rows)
    text = format_intervention_table(rows) + "\n\n" + format_paired_interventions(diffs) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text, encoding="utf-8")
    write_intervention_csv(rows, out / "rows.csv")
    write_paired_csv(diffs, out / "paired.csv")
    write_per_image_csv(rows, out / "per_image.csv")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "build" / "scenes"))
    parser.add_argument("--limit", type=int, help="even subset of the test split (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--out", default=str(ROOT / "build" / "intervention_study"))
    parser.add_argument("--models", default=str(ROOT / "checkpoints" / "demo"),
                        help="folder of the demo checkpoints")
    parser.add_argument("--from-cache", action="store_true", help="only redraw the tables")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    out, start = Path(args.out), time.perf_counter()
    if not args.from_cache:
        run_jobs(args.data, args.limit, out, args.jobs, Path(args.models))
    text = report(load_rows(out, args.limit), out)
    print(text)
    print(f"wrote {out / 'table.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
