"""Channels: every model's per-channel weights at one block, and SimAM's top channels.

Every module with attention weighs channels, directly (SE's and ECA's gate, CBAM's channel
gate) or implicitly (SimAM's 3-D weights averaged over positions): one bar chart per model.
Where the weights are 3-D, the channels with the largest mean weight are also shown as
maps, with their own top-k slider.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st
from widgets import kept, remember

from simam_viz.engine.analysis import Analysis
from simam_viz.rendering import charts

__all__ = ["bars_title", "view_channels"]

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # one per model (at most 5)


def bars_title(r: Analysis, block: str) -> str:
    """What the bars of ``r`` are: a channel gate's weights or 3-D weights' channel means."""
    what = "channel gate" if "channel" in r.attention_weights(block) else "channel means"
    return f"{r.model_name}: {r.kind.label} {what} · {block}"


def view_channels(results: Sequence[Analysis], block: str) -> None:
    """Bars for each model with channel weights at ``block``; top-k maps for 3-D weights."""
    st.subheader("Channels")
    shown = [(i, r) for i, r in enumerate(results) if r.has_channel_weights(block)]
    if not shown:
        st.info("Per-channel weights need a model with attention (SE, ECA, CBAM or SimAM).")
        return
    full = [(r.model_name, r.attention_weights(block)["full"], r.channel_weights(block))
            for _, r in shown if "full" in r.attention_weights(block)]
    if full:
        top_channels(full)
    cols = st.columns(2)
    for j, (i, r) in enumerate(shown):
        cols[j % 2].plotly_chart(
            charts.channel_bars(r.channel_weights(block), bars_title(r, block),
                                color=COLOURS[i % len(COLOURS)]),
            width="stretch", key=f"channel_bars_{i}")


@st.fragment
def top_channels(models: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """The top-k slider and its charts (model name, 3-D weights, channel means each): a
    top-k change redraws these charts only, not the bars."""
    channels = min(len(means) for _, _, means in models)
    most = min(16, channels)
    kept("topk", min(8, channels))
    if not 1 <= st.session_state["topk"] <= most:  # kept from models with more channels
        st.session_state["topk"] = min(8, channels)
    k = st.slider("Top-k channels", 1, most, key="topk", on_change=remember,
                  args=("topk",))
    for name, weights, means in models:
        if len(models) > 1:
            st.markdown(f"**{name}**")
        st.plotly_chart(charts.channel_maps(weights, means, top_k=k), width="stretch")
