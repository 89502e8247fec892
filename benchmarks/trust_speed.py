"""``faithfulness`` and ``sanity_check`` against the issue's targets (<= 3 s each, 2-core CPU).

The demo figures use one shipped demo model (``checkpoints/demo/<arch>.safetensors``, default
SimAM-ResNet-50) on the app's default example at its own preprocessing (161 px); the
ImageNet-size figures use full-width ResNet-50 and SimAM-ResNet-50 with random weights
(``build_model``) at 224 px, for which no target is set. Prints medians of interleaved rounds
(single timings on a shared 2-core CPU swing by 2x), each with its ratio to the 3 s target, and
where the time goes: faithfulness's stages (the map, ROAD, drop/increase in confidence, RISE's
42 perturbed inputs) from its ``progress`` callback, and the sanity check's 18 steps (one
``analyze`` of a re-initialised copy each) from its own. The load average is printed too: other
programs on the machine slow every figure here. Usage: ``python benchmarks/trust_speed.py
[--rounds 5] [--imagenet-rounds 2] [--arch simam_resnet50] [--skip-imagenet]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from simam_viz import build_model, load_model
from simam_viz.engine.trust import compare_maps, faithfulness, sanity_check

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "app" / "examples" / "scene_dog_3.png"
TARGET_S = 3.0
# faithfulness's progress marks: after the map (0.1), ROAD (0.5), drop/increase (0.6), RISE (1)
STAGES = {0.1: "map (analyze)", 0.5: "ROAD (8 imputations)", 0.6: "drop/increase in confidence",
          1.0: "RISE deletion + insertion"}


class _Clock:
    """A ``progress`` callback that records when each fraction was reached."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, float]] = []

    def __call__(self, done: float) -> None:
        self.marks.append((done, time.perf_counter() - self.start))

    def spans(self) -> list[tuple[float, float]]:
        """(fraction, seconds since the previous mark) for each mark."""
        out, last = [], 0.0
        for done, at in self.marks:
            out.append((done, at - last))
            last = at
        return out


def _timed(fn: Callable[[Callable[[float], None]], object]) -> tuple[float, _Clock]:
    clock = _Clock()
    fn(clock)
    return time.perf_counter() - clock.start, clock


def _bench(model: nn.Module, x: torch.Tensor, rounds: int) -> dict[str, object]:
    """Interleaved rounds of both calls (order flipped every round); medians and stages."""
    calls: dict[str, Callable[[Callable[[float], None]], object]] = {
        "faithfulness": lambda cb: faithfulness(model, x, progress=cb),
        "sanity_check": lambda cb: sanity_check(model, x, progress=cb),
    }
    for call in calls.values():
        call(lambda _done: None)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in calls}
    stages: dict[float, list[float]] = {}
    steps: list[float] = []
    for r in range(rounds):
        order = list(calls.items())
        if r % 2:
            order.reverse()
        for name, call in order:
            seconds, clock = _timed(call)
            times[name].append(seconds)
            if name == "faithfulness":
                for done, span in clock.spans():
                    stages.setdefault(done, []).append(span)
            else:
                steps += [span for _done, span in clock.spans()[1:]]  # steps 2..18
    return {"times": {k: statistics.median(v) for k, v in times.items()},
            "stages": {k: statistics.median(v) for k, v in stages.items()},
            "step": statistics.median(steps)}


def _compare_cost(x_side: int, rounds: int = 20) -> float:
    """Median time of one ``compare_maps`` (Spearman, SSIM, HOG) of two maps of this size."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(x_side, x_side, generator=g).numpy() for _ in range(2))
    compare_maps(a, b)
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        compare_maps(a, b)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def _report(title: str, result: dict[str, object], side: int, target: float | None) -> None:
    times: dict[str, float] = result["times"]  # type: ignore[assignment]
    print(f"{title}, {side} px")
    for name, seconds in times.items():
        ratio = f"   {seconds / target:.2f}x the {target:.0f} s target" if target else ""
        verdict = (" (ok)" if seconds <= target else " (MISSES)") if target else ""
        print(f"  {name:14s} {seconds:7.2f} s{ratio}{verdict}")
    stages: dict[float, float] = result["stages"]  # type: ignore[assignment]
    total = sum(stages.values())
    for done, span in sorted(stages.items()):
        print(f"    faithfulness: {STAGES.get(done, done):30s} {span:6.2f} s "
              f"({span / total:4.0%})")
    compare = _compare_cost(side)
    step: float = result["step"]  # type: ignore[assignment]
    print(f"    sanity_check: one cascade step {step:.3f} s x 18, of which compare_maps "
          f"{compare:.3f} s ({compare / step:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--imagenet-rounds", type=int, default=2)
    parser.add_argument("--arch", default="simam_resnet50",
                        choices=["resnet50", "se_resnet50", "simam_resnet50"])
    parser.add_argument("--skip-imagenet", action="store_true")
    args = parser.parse_args()
    # pytorch-grad-cam's ROAD calls np.float32 on a torch tensor, which numpy 2 deprecates
    warnings.filterwarnings("ignore", message="__array_wrap__ must accept")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}")
    model = load_model(ROOT / "checkpoints" / "demo" / f"{args.arch}.safetensors")
    with Image.open(EXAMPLE) as image:
        x = model.simam_viz.preprocessing(image.convert("RGB"))
    _report(f"demo {model.simam_viz.title} ({EXAMPLE.name}), medians of {args.rounds} rounds",
            _bench(model, x, args.rounds), x.shape[-1], TARGET_S)
    if args.skip_imagenet:
        return
    torch.manual_seed(0)
    x224 = torch.randn(1, 3, 224, 224)
    for arch in ("resnet50", "simam_resnet50"):
        big = build_model(arch)  # full width, random weights, 1000 classes
        big.simam_viz.class_names = [str(i) for i in range(1000)]
        _report(f"ImageNet-size {big.simam_viz.title} (random weights), medians of "
                f"{args.imagenet_rounds} rounds", _bench(big, x224, args.imagenet_rounds),
                224, None)


if __name__ == "__main__":
    main()
