"""Full analysis versus the compute floor and versus one pytorch-grad-cam pass per panel.

The full analysis is what the app shows for one image: Figure 1 (one Grad-CAM per model for
ResNet-50, SE-ResNet-50 and SimAM-ResNet-50) plus, for SimAM, the four Figure 6 maps and the
channel weights of one block. The floor is one forward and one backward per model (input
gradient only, as the analysis needs). The straightforward way is one pytorch-grad-cam object
and one pass per panel. Medians of interleaved rounds; ratios from this one run.
Usage: ``python benchmarks/analysis_speed.py [--rounds 7] [--size 224]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from simam_viz import build_model
from simam_viz.engine.analysis import analyze

BLOCK = "layer4.2"


def _floor(models: list[torch.nn.Module], x: torch.Tensor) -> None:
    for model in models:
        for p in model.parameters():
            p.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        logits = model(xi)
        logits[0, int(logits[0].argmax())].backward()
        for p in model.parameters():
            p.requires_grad_(True)


def _ours(models: list[torch.nn.Module], x: torch.Tensor) -> None:
    for model in models:
        result = analyze(model, x, blocks=(BLOCK,))
        for where in result.wheres(BLOCK):
            result.cam(BLOCK, where)
        if model.simam_viz.attention == "simam":
            result.attention(BLOCK)
            result.channel_weights(BLOCK)


def _naive(models: list[torch.nn.Module], x: torch.Tensor) -> None:
    for model in models:
        block = model.get_submodule(BLOCK)
        layers = [block]
        if model.simam_viz.attention == "simam":
            layers += [block.conv2[0], block.conv2[1], block.conv2[1].sigmoid]
        for layer in layers:
            with GradCAM(model, [layer]) as cam:
                cam(x, [ClassifierOutputTarget(0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = [build_model(a) for a in ("resnet50", "se_resnet50", "simam_resnet50")]
    for m in models:
        m.simam_viz.class_names = [str(i) for i in range(1000)]
    x = torch.randn(1, 3, args.size, args.size)
    runs: dict[str, Callable[[list[torch.nn.Module], torch.Tensor], None]] = {
        "floor (1 fwd + 1 bwd per model)": _floor,
        "simam_viz.analyze (all panels)": _ours,
        "pytorch-grad-cam, 1 pass per panel": _naive,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn(models, x)  # warm-up
    for r in range(args.rounds):
        order = list(runs.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            start = time.perf_counter()
            fn(models, x)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["floor (1 fwd + 1 bwd per model)"]
    ours = med["simam_viz.analyze (all panels)"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}px")
    for name, value in med.items():
        print(f"  {name:38s} {value * 1000:8.1f} ms   {value / floor:.2f}x floor")
    print(f"  speed-up of analyze over one pass per panel: {med[list(runs)[2]] / ours:.2f}x")


if __name__ == "__main__":
    main()
