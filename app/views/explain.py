"""The "Explain SimAM" view: why one neuron got its weight, with the module's own numbers.

It explains 3-D weights that come from an energy with a λ (SimAM's Eqns 2-6): the model is
chosen by what its attention kind has, never by its name.

One forward pass per (analysis, block) records what the block's SimAM module saw and
produced (``simam_viz.engine.neuron.record_simam``), through the shared service like any model
work. Everything after that (choosing a channel, clicking a neuron, moving the display
lambda) is arithmetic on the recorded arrays (``explain_from_arrays``) and redraws of pure
charts (``simam_viz.rendering.neuron_charts``): no model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image
from screen import Pictures
from torch import nn
from widgets import kept, remember, session_id

from simam_viz.engine.analysis import Analysis
from simam_viz.engine.neuron import SimAMRecord, explain_from_arrays, record_simam
from simam_viz.rendering import figures, neuron_charts, neuron_figures, panels
from simam_viz.serving.service import shared_service

__all__ = ["explained", "recorded", "show_numbers", "view_explain"]

DISPLAY_LAMBDAS = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0]
PICKS = 5  # highest and lowest weights offered in the picker


def explained(results: Sequence[Analysis]) -> int | None:
    """The first model whose weights this view explains: 3-D weights from an energy with λ."""
    return next((i for i, r in enumerate(results)
                 if r.kind.has_lambda and "full" in r.kind.shapes), None)


def recorded(key: str, model: nn.Module, image: Callable[[], Image.Image], block: str,
             lam: float | None) -> SimAMRecord:
    """The block's SimAM input and weights for this analysis: one pass, shared and cached."""
    record, _ = shared_service().compute(
        ("simam-record", key, block),
        lambda: record_simam(model, image(), block=block, simam_lambda=lam),
        what="recording", session=session_id())
    return record


def _channel_label(means: np.ndarray) -> Callable[[int], str]:
    rank = {int(c): r + 1 for r, c in enumerate(np.argsort(-means, kind="stable"))}
    return lambda c: f"channel {c} · mean weight {means[c]:.4f} (#{rank[c]})"


def _picked_from_map(state_key: str, shape: tuple[int, int]) -> None:
    """A click on the channel map: its (y, x) becomes the chosen neuron."""
    event = st.session_state.get(state_key)
    yx = neuron_charts.neuron_from_selection(event, shape) if event else None
    if yx is not None:
        st.session_state["neuron_yx"] = yx


def _picked_from_list(state_key: str, options: dict[str, tuple[int, int]]) -> None:
    choice = st.session_state.get(state_key)
    if choice in options:
        st.session_state["neuron_yx"] = options[choice]


def view_explain(results: Sequence[Analysis], models: Sequence[nn.Module], keys: Sequence[str],
                 image: Callable[[], Image.Image], block: str, pics: Pictures) -> None:
    """The chosen neuron's numbers, its channel's energy curve and the block's 3-D weights."""
    st.subheader("Explain SimAM, neuron by neuron (Eqns 2-6)")
    simam = explained(results)
    if simam is None:
        st.info("Select a SimAM-ResNet-50 in the sidebar to see why each neuron gets its weight.")
        return
    result = results[simam]
    rec = recorded(keys[simam], models[simam], image, block, result.simam_lambda)
    weights, values = rec.weights, rec.values
    means = weights.mean(axis=(1, 2))
    c, h, w = weights.shape
    # state that names a channel or neuron of another block's grid is dropped, not trusted
    if st.session_state.get("_neuron_block") != block:
        st.session_state["_neuron_block"] = block
        for name in ("neuron_channel", "neuron_yx"):
            st.session_state.pop(name, None)
    kept("neuron_channel", int(np.argmax(means)))
    if not 0 <= st.session_state["neuron_channel"] < c:
        st.session_state["neuron_channel"] = int(np.argmax(means))
    c1, c2, c3 = st.columns([3, 3, 2])
    order = [int(i) for i in np.argsort(-means, kind="stable")]
    channel = c1.selectbox("Channel (by mean weight)", order, format_func=_channel_label(means),
                           key="neuron_channel", on_change=remember, args=("neuron_channel",))
    ch_w = weights[channel]
    if "neuron_yx" not in st.session_state or not _inside(st.session_state["neuron_yx"], (h, w)):
        st.session_state["neuron_yx"] = tuple(int(v) for v in np.unravel_index(
            int(np.argmax(ch_w)), ch_w.shape))
    y, x = st.session_state["neuron_yx"]
    pick_key = f"neuron_pick_{block}_{channel}"  # its options are this channel's
    extremes = _extremes(ch_w)
    c2.selectbox("…or a neuron with the highest / lowest weight", list(extremes), index=None,
                 key=pick_key, on_change=_picked_from_list, args=(pick_key, extremes),
                 placeholder="click the map, or pick here")
    lam_model = float(rec.lam)
    options = sorted({*DISPLAY_LAMBDAS, lam_model})
    kept("neuron_lambda", lam_model)
    lam_shown = c3.select_slider("λ for the curve (display only)", options, key="neuron_lambda",
                                 on_change=remember, args=("neuron_lambda",))
    ex = explain_from_arrays(values, channel=channel, y=y, x=x, lam=lam_model, weights=weights,
                             block=block)

    left, right = st.columns([2, 3])  # the numbers' column: their lines fit at 1100 px
    map_key = f"neuron_map_{block}_{channel}"
    left.plotly_chart(
        neuron_charts.channel_map(ch_w, chosen=(y, x),
                                  title=f"channel {channel} weights: click a neuron"),
        key=map_key, on_select=lambda: _picked_from_map(map_key, (h, w)),
        selection_mode="points", width="stretch")
    with right:
        show_numbers(ex)
    left, right = st.columns(2)
    left.plotly_chart(neuron_charts.separating_line_chart(ex), width="stretch")
    right.plotly_chart(neuron_charts.weight_curve_chart(
        values[channel], ex["mean"], ex["variance"], float(lam_shown), ex["t"],
        lam_model=lam_model), width="stretch")

    st.markdown(f"**The block's 3-D weights** ({c} × {h} × {w}) beside Figure 6's channel mean")
    left, right = st.columns([3, 1])
    kept("neuron_topk", min(8, c))
    k = left.slider("Channels in 3-D (top-k by mean weight)", 1, min(32, c), key="neuron_topk",
                    on_change=remember, args=("neuron_topk",))
    left.plotly_chart(neuron_charts.weights_3d(weights, means, top_k=k), width="stretch")
    mean_panel = next(p for p in panels.figure6_panels(result.kind) if p.is_weights)
    right.image(pics.figure6(simam, block, mean_panel), caption=f"{mean_panel.title} · {block}",
                width="stretch", output_format="JPEG")
    right.download_button(
        "These panels (PNG)", lambda: figures.figure_to_png(
            neuron_figures.explain_figure(ex, lam=float(lam_shown)), dpi=200),
        f"simam_neuron_{block}_c{channel}_y{y}_x{x}.png", "image/png", key="dl_neuron")


def _inside(yx: Any, shape: tuple[int, int]) -> bool:
    try:
        return 0 <= int(yx[0]) < shape[0] and 0 <= int(yx[1]) < shape[1]
    except (TypeError, ValueError, IndexError):
        return False


def _extremes(ch_w: np.ndarray) -> dict[str, tuple[int, int]]:
    """The channel's highest and lowest weights: label -> (y, x)."""
    flat = np.argsort(-ch_w, axis=None, kind="stable")
    picks = [("highest", i) for i in flat[:PICKS]] + [("lowest", i) for i in flat[::-1][:PICKS]]
    options = {}
    for kind, i in picks:
        yy, xx = (int(v) for v in np.unravel_index(int(i), ch_w.shape))
        options[f"{kind}: ({yy}, {xx}) weight {ch_w[yy, xx]:.4f}"] = (yy, xx)
    return options


def tex_number(value: float, digits: int | None = None) -> str:
    """``value`` for LaTeX: fixed ``digits`` decimals, or ``:g`` with a power of ten instead
    of ``e-04`` (which KaTeX would typeset as a subtraction)."""
    text = f"{value:.{digits}f}" if digits is not None else f"{value:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = rf"{mantissa}\times 10^{{{int(exponent)}}}"
    return text


def tex_difference(a: float, b: float, digits: int = 4) -> str:
    """``a − b`` with ``b``'s sign folded in: ``0.3063 + 0.4038``, never ``0.3063 − −0.4038``."""
    sign = "-" if b >= 0 else "+"
    return f"{a:.{digits}f} {sign} {abs(b):.{digits}f}"


def aligned(*lines: str) -> str:
    """Lines of one display, aligned at ``&``: a long substituted equation broken into short
    lines, since KaTeX never wraps and the numbers sit in half of a 1100 px page."""
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"


def show_numbers(ex: dict[str, Any]) -> None:
    """Eqns (5), (6) and (2) with this neuron's numbers substituted, a few symbols a line."""
    t, mu, var, lam = ex["t"], ex["mean"], ex["variance"], ex["lambda"]
    lam_tex = tex_number(lam)
    st.markdown(f"**Neuron** ({ex['y']}, {ex['x']}) of channel {ex['channel']}, "
                f"{ex['block']}: value **t = {t:.4f}**, one of M = {ex['M']} neurons "
                f"({ex['grid'][0]} × {ex['grid'][1]}); weight rank {ex['weight_rank']} of "
                f"{ex['M']}.")
    st.latex(aligned(
        rf"\hat\mu &= \tfrac{{1}}{{M}}\textstyle\sum_i x_i = {mu:.4f}",
        rf"\hat\sigma^2 &= \tfrac{{1}}{{M-1}}\textstyle\sum_i (x_i-\hat\mu)^2 = {var:.4f}",
        rf"\lambda &= {lam_tex}"))
    st.latex(aligned(
        rf"(t-\hat\mu)^2 &= ({tex_difference(t, mu)})^2 = {(t - mu) ** 2:.4f}",
        r"e_t^* &= \frac{4(\hat\sigma^2+\lambda)}{(t-\hat\mu)^2+2\hat\sigma^2+2\lambda}",
        rf"&= \frac{{4\,({var:.4f}+{lam_tex})}}{{{(t - mu) ** 2:.4f}+2\,({var:.4f}+{lam_tex})}}",
        rf"&= {ex['energy']:.4f}"))
    st.latex(aligned(
        rf"1/e_t^* &= {ex['importance']:.4f}",
        rf"\mathrm{{sigmoid}}(1/e_t^*) &= {ex['weight']:.6f}",
        rf"\text{{module}} &= {ex['module_weight']:.6f}"))
    st.latex(aligned(  # Eqn 2 over the other M - 1 neurons, minimised exactly
        rf"\textstyle\min_{{w_t,b_t}} e_t &= {ex['energy_exact']:.4f}",
        rf"\text{{at}}\; w_t &= {tex_number(ex['w'], 4)},\; b_t = {tex_number(ex['b'], 4)}"))
    st.caption(
        f"Eqn (5) uses the whole channel's statistics (the paper's 'same distribution' "
        f"shortcut): {ex['energy']:.4f} vs the exact minimum {ex['energy_exact']:.4f}, a gap "
        f"of {ex['approximation_gap']:+.4f}. Eqns (3)-(4) as printed give w = "
        f"{ex['paper_w']:.4f}, b = {ex['paper_b']:.4f}: the opposite sign, where Eqn (2) "
        f"is {ex['energy_at_paper']:.4f}, not its minimum. The line w·x + b crosses 0 at "
        f"{ex['threshold']:.4f} and puts {ex['separated']:.0%} of the other neurons on the "
        "other side from t: the lower the energy, the better t stands apart, the higher "
        "its weight.")
