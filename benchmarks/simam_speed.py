"""SimAM-ResNet-50 inference time versus plain ResNet-50 (goal: <= 1.05x).

Prints medians of interleaved runs (single timings on a shared 2-core CPU swing by 2x):
plain ResNet-50, SimAM-ResNet-50 with the authors' formulation of the module, and with
``simam_viz.SimAM``; the ratios come from one run. Also checks that both SimAM variants agree
to 1e-5. Usage: ``python benchmarks/simam_speed.py [--rounds 15] [--batches 1 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from simam_viz import SimAM, build_model


class AuthorsSimAM(nn.Module):
    """The module as the paper's Figure 3 and the authors' repository compute it."""

    def __init__(self, e_lambda: float) -> None:
        super().__init__()
        self.e_lambda = e_lambda
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda)) + 0.5
        return x * self.sigmoid(y)


def _with_authors_module(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], SimAM):
            module[1] = AuthorsSimAM(module[1].e_lambda)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = build_model("resnet50")
    ours = build_model("simam_resnet50")
    authors = _with_authors_module(build_model("simam_resnet50"))
    authors.load_state_dict(ours.state_dict())
    models = {"resnet50": plain, "simam (authors)": authors, "simam (simam_viz)": ours}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size)
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            diff = (authors(x) - ours(x)).abs().max().item()
            for _ in range(2):  # warm-up
                for model in models.values():
                    model(x)
            for r in range(args.rounds):
                order = list(models.items())
                if r % 2:
                    order.reverse()
                for name, model in order:
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(v) for name, v in times.items()}
        base = med["resnet50"]
        print(f"batch {batch}: max |authors - simam_viz| logits = {diff:.2e}")
        for name, value in med.items():
            print(f"  {name:20s} {value * 1000:8.1f} ms   {value / base:.3f}x")


if __name__ == "__main__":
    main()
