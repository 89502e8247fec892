"""``intervene(..., per_block=True)`` over all 16 blocks against the issue's goals (CPU).

Issue 23's cost goals: a demo model (``checkpoints/demo/simam_resnet50.safetensors``, 161 px,
on the app's default example) within 1 s, and a full-size SimAM-ResNet-50 (``build_model``,
random weights, 224 px) within 5 s, for one call that changes each of the 16 blocks alone.
One call is the reference and the all-blocks Grad-CAM passes (a forward and a backward each)
plus 16 forward-only passes, one per block; the split comes from the result's ``timings``
(``passes``, ``per_block``). ``--whole`` also times the block-alone passes run from the
image instead of from the first changed block's cached input (the speed-up of the latter).
Modes: ``channel_mean`` (what the "What SimAM adds" view shows first) and ``exact`` (the
dearest: float64 leave-one-out statistics). Medians of interleaved rounds after a warm-up
round (single timings on a shared 2-core CPU swing by 2x), each with its ratio to the goal,
measured in this one run; the load average is printed, since other programs slow every
figure. ``--threads 1`` pins torch to one thread: on a CPU that other programs keep busy, a
two-thread pass spends much of its time waiting for the core another program holds.
Usage: ``python benchmarks/intervention_cost.py [--rounds 5] [--full-rounds 3]
[--modes channel_mean exact] [--threads N] [--whole] [--skip-full]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from simam_viz import build_model, intervene, load_model
from simam_viz.engine.intervention import MODES, attention_blocks

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "demo" / "simam_resnet50.safetensors"
EXAMPLE = ROOT / "app" / "examples" / "scene_dog_3.png"
DEMO_GOAL_S = 1.0
FULL_GOAL_S = 5.0


def _whole_passes(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A do-nothing forward hook on the model: ``intervene`` then runs every block-alone pass
    from the image (a shortened pass would skip the hook), as before passes started at the
    first changed block. Remove it to go back."""
    return model.register_forward_hook(lambda module, args, output: None)


def _bench(model: nn.Module, x: torch.Tensor, modes: list[str], rounds: int,
           whole: bool = False) -> dict[str, dict[str, float]]:
    """Per mode: median seconds of the whole call, of its two Grad-CAM passes and of the 16
    block-alone passes, over ``rounds`` interleaved rounds (order flipped each round).
    ``whole`` adds each mode once more with every block-alone pass run from the image."""
    runs = [(m, False) for m in modes] + ([(m, True) for m in modes] if whole else [])
    seen: dict[tuple[str, bool], dict[str, list[float]]] = {
        run: {"call": [], "passes": [], "per_block": []} for run in runs}
    for r in range(rounds + 1):  # round 0 warms up
        for mode, from_image in (runs if r % 2 == 0 else runs[::-1]):
            handle = _whole_passes(model) if from_image else None
            try:
                start = time.perf_counter()
                result = intervene(model, x, mode=mode, per_block=True)
                seconds = time.perf_counter() - start
            finally:
                if handle is not None:
                    handle.remove()
            if r:
                parts = seen[(mode, from_image)]
                parts["call"].append(seconds)
                parts["passes"].append(result.timings["passes"])
                parts["per_block"].append(result.timings["per_block"])
    return {f"{m} (whole passes)" if w else m: {k: statistics.median(v) for k, v in parts.items()}
            for (m, w), parts in seen.items()}


def _report(title: str, model: nn.Module, x: torch.Tensor, times: dict[str, dict[str, float]],
            goal: float) -> None:
    blocks = len(attention_blocks(model))
    print(f"{title}, {x.shape[-1]} px, {blocks} blocks")
    for mode, t in times.items():
        verdict = "ok" if t["call"] <= goal else "MISSES"
        print(f"  {mode:28s} {t['call']:6.2f} s   {t['call'] / goal:.2f}x the {goal:g} s goal "
              f"({verdict});  Grad-CAM passes {t['passes']:.2f} s, {blocks} block-alone "
              f"passes {t['per_block']:.2f} s ({t['per_block'] / blocks * 1e3:.0f} ms each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["channel_mean", "exact"],
                        choices=list(MODES))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--whole", action="store_true",
                        help="also time every block-alone pass run from the image (the "
                             "speed-up of starting at the first changed block)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}")
    model = load_model(CHECKPOINT)
    with Image.open(EXAMPLE) as image:
        x = model.simam_viz.preprocessing(image.convert("RGB"))
    _report(f"demo {model.simam_viz.title} ({EXAMPLE.name}), medians of {args.rounds} rounds",
            model, x, _bench(model, x, args.modes, args.rounds, args.whole), DEMO_GOAL_S)
    if args.skip_full:
        return
    torch.manual_seed(0)
    big = build_model("simam_resnet50")  # full width, random weights, 1000 classes
    big.simam_viz.class_names = [str(i) for i in range(1000)]
    x224 = torch.randn(1, 3, 224, 224)
    _report(f"full-size {big.simam_viz.title} (random weights), medians of "
            f"{args.full_rounds} rounds", big, x224,
            _bench(big, x224, args.modes, args.full_rounds, args.whole), FULL_GOAL_S)


if __name__ == "__main__":
    main()
