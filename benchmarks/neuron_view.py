"""The 3-D SimAM weights view: build + ``to_json`` time per block against a 1 s target.

``simam_viz.rendering.neuron_charts.weights_3d`` is what the app's "Explain SimAM" view sends to the
browser for a block's C x h x w weights (top-k channels as stacked slices). The target is
well under a second for every block of the demo SimAM model (width 0.25, 161-pixel input,
on a bundled example scene) and of a full-width SimAM-ResNet-50 at 224 pixels (random
weights: only the shapes matter for the cost). The weights of all 16 blocks come from one
forward pass (hooks on each SimAM module's sigmoid); each block's time is the median of
``--rounds`` builds plus serialisations, after one warm-up figure (plotly loads its
validators on first use). Also times the three per-neuron charts for layer4.2.
With ``--browser`` each block's figure is also drawn in Debian's chromium (headless, WebGL on
SwiftShader, plotly.js from the plotly package): the time from ``Plotly.newPlot`` to the
second animation frame after it resolves, i.e. to pixels, median of ``--rounds``.
Usage: ``python benchmarks/neuron_view.py [--rounds 5] [--top-k 8] [--browser]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from simam_viz import build_model
from simam_viz.engine.neuron import explain_from_arrays
from simam_viz.images import load_image
from simam_viz.networks.models import BLOCKS, attention_module
from simam_viz.rendering.neuron_charts import (
    channel_map,
    separating_line_chart,
    weight_curve_chart,
    weights_3d,
)
from simam_viz.weights.checkpoints import load_model

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def _block_tensors(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[np.ndarray, ...]]:
    """(SimAM input, SimAM weights) of every block, C x h x w float32, from one forward."""
    seen: dict[str, list[np.ndarray]] = {}
    handles = []
    for block in BLOCKS:
        module = attention_module(model, block)
        handles.append(module.register_forward_pre_hook(
            lambda m, a, b=block: seen.setdefault(b, []).append(a[0][0].float().numpy())))
        handles.append(module.sigmoid.register_forward_hook(
            lambda m, a, out, b=block: seen[b].append(out[0].float().numpy())))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {block: tuple(seen[block]) for block in BLOCKS}


def _median_s(fn, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


CHROMIUM = "/usr/bin/chromium"
# SwiftShader gives headless chromium WebGL without a GPU (Scatter3d needs WebGL)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic"]
DRAW = """async (fig) => {
  const div = document.getElementById('plot');
  Plotly.purge(div);
  const start = performance.now();
  await Plotly.newPlot(div, fig.data, fig.layout);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const canvas = div.querySelector('canvas');
  return {ms: performance.now() - start, webgl: !!canvas};
}"""


class Browser:
    """One chromium page with plotly.js loaded, drawing figures and timing them to pixels."""

    def __init__(self) -> None:
        import plotly
        from playwright.sync_api import sync_playwright

        js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1200, "height": 800})
        self.page.set_content("<div id='plot' style='width:900px;height:520px'></div>")
        self.page.add_script_tag(path=str(js))

    def draw_ms(self, fig_json: str, rounds: int) -> float:
        import json

        fig = json.loads(fig_json)
        times = []
        for _ in range(rounds):
            out = self.page.evaluate(DRAW, fig)
            if not out["webgl"]:
                raise RuntimeError("chromium drew no WebGL canvas: the 3-D view did not render")
            times.append(out["ms"] / 1e3)
        return statistics.median(times)

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def _report(title: str, tensors: dict[str, tuple[np.ndarray, ...]], rounds: int,
            top_k: int, browser: Browser | None = None) -> float:
    print(f"\n{title}")
    print(f"  {'block':9s} {'C x h x w':>14s} {'points':>7s} {'ms':>7s} {'of 1 s':>7s} "
          f"{'JSON kB':>8s}" + (f" {'draw ms':>8s} {'total/1 s':>9s}" if browser else ""))
    worst = 0.0
    for block, (_, weights) in tensors.items():
        means = weights.mean(axis=(1, 2))
        seconds, text = _median_s(lambda w=weights, m=means: weights_3d(w, m, top_k=top_k)
                                  .to_json(), rounds)
        fig_points = len(weights_3d(weights, means, top_k=top_k).data[0].x)
        shape = "x".join(map(str, weights.shape))
        line = (f"  {block:9s} {shape:>14s} {fig_points:7d} {seconds * 1e3:7.1f} "
                f"{seconds / TARGET_S:7.3f} {len(text) / 1e3:8.1f}")
        if browser is not None:
            draw = browser.draw_ms(text, rounds)
            seconds += draw
            line += f" {draw * 1e3:8.1f} {seconds / TARGET_S:9.3f}"
        worst = max(worst, seconds)
        print(line)
    print(f"  slowest: {worst * 1e3:.1f} ms = {worst / TARGET_S:.3f} of the 1 s target")
    return worst


def _neuron_charts(values: np.ndarray, weights: np.ndarray, rounds: int) -> None:
    """The per-neuron charts for one neuron of layer4.2: what a click or a slider redraws."""
    c = int(np.argmax(weights.mean(axis=(1, 2))))
    y, x = np.unravel_index(np.argmax(weights[c]), weights[c].shape)
    exp = explain_from_arrays(values, channel=c, y=int(y), x=int(x), lam=0.1, weights=weights)
    charts = {
        "explain_from_arrays": lambda: explain_from_arrays(values, channel=c, y=int(y),
                                                           x=int(x), lam=0.1),
        "channel_map": lambda: channel_map(weights[c], chosen=(int(y), int(x))).to_json(),
        "separating_line_chart": lambda: separating_line_chart(exp).to_json(),
        "weight_curve_chart": lambda: weight_curve_chart(
            values[c], exp["mean"], exp["variance"], 0.3, exp["t"], lam_model=0.1).to_json(),
    }
    print(f"\nper-neuron charts, demo layer4.2 channel {c} neuron ({y}, {x}):")
    for name, fn in charts.items():
        seconds, _ = _median_s(fn, rounds)
        print(f"  {name:22s} {seconds * 1e3:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--browser", action="store_true",
                        help="also time drawing each figure in chromium, to pixels")
    args = parser.parse_args()
    browser = Browser() if args.browser else None
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; target "
          f"{TARGET_S:g} s per block (build + fig.to_json())")
    weights_3d(np.random.default_rng(0).random((4, 8, 8)), np.zeros(4)).to_json()  # warm-up

    demo = load_model(ROOT / "checkpoints" / "demo" / "simam_resnet50.safetensors")
    image = load_image(ROOT / "app" / "examples" / "scene_dog_3.png")
    demo_tensors = _block_tensors(demo, demo.simam_viz.preprocessing(image))
    worst_demo = _report("demo SimAM-ResNet-50 (width 0.25, 161 px, scene_dog_3):",
                         demo_tensors, args.rounds, args.top_k, browser)

    full = build_model("simam_resnet50").eval()
    full_tensors = _block_tensors(full, torch.randn(1, 3, 224, 224))
    worst_full = _report("full-width SimAM-ResNet-50 (random weights, 224 px):", full_tensors,
                         args.rounds, args.top_k, browser)
    if browser is not None:
        browser.close()

    _neuron_charts(*demo_tensors["layer4.2"], args.rounds)
    worst = max(worst_demo, worst_full)
    what = "build + JSON + draw" if browser is not None else "build + JSON"
    print(f"\nslowest block overall ({what}): {worst * 1e3:.1f} ms "
          f"({worst / TARGET_S:.3f} of 1 s): {'OK' if worst < TARGET_S else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
