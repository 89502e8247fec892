"""The Attention shapes view: every selected model's attention weights in their own shape.

The paper's Figure 2, live on the uploaded image: SE and ECA weigh channels (1-D), CBAM
channels and then positions, SimAM every neuron (3-D). For the chosen block the view puts each
model's weights on one scale, then says in one bar per model how much of their variance the
channel means, the position means and neither explain (``simam_viz.weight_variance``): how 3-D
the weights really are on this image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from simam_viz.engine.analysis import Analysis
from simam_viz.engine.attention_shapes import ShapeSummary
from simam_viz.networks.kinds import SHAPES
from simam_viz.rendering.shape_charts import channel_profiles, position_maps, variance_bars
from simam_viz.rendering.shape_figures import summaries

INTRO = ("Each attention module multiplies the features by weights in (0, 1). SE and ECA give "
         "one weight per channel, CBAM one per channel and then one per position, SimAM one per "
         "neuron. The bars split each model's weights' variance at this block into what channel "
         "means explain (all SE or ECA can do), what position means explain, and the rest, "
         "which only 3-D weights can have.")


def _line(name: str, r: Analysis, s: ShapeSummary) -> str:
    shapes = "; ".join(SHAPES[k] for k in s.shapes)
    shares = s.variance
    split = ("all weights equal" if np.isnan(shares["channel"]) else
             f"channel {shares['channel']:.0%} · spatial {shares['spatial']:.0%} · "
             f"interaction {shares['interaction']:.0%}")
    return (f"**{name}** ({r.kind.label}, {r.kind.site_text}): {shapes}; weights "
            f"{s.low:.3f}–{s.high:.3f}; variance: {split}")


def view_attention_shapes(results: Sequence[Analysis], block: str) -> None:
    """Weights of every model with attention at ``block``, on comparable scales."""
    st.subheader("Attention shapes (the paper's Figure 2)")
    st.caption(INTRO)
    shown = [r for r in results if r.attention_weights(block)]
    rows = summaries([(r.model_name, r.attention_weights(block)) for r in shown])
    if not rows:
        st.info("None of the selected models has an attention module: add SE, ECA, CBAM or "
                "SimAM in the sidebar.")
        return
    st.markdown("\n".join(f"- {_line(name, r, s)}"
                          for r, (name, s) in zip(shown, rows, strict=True)))
    plain = [r.model_name for r in results if not r.kind.has_attention]
    if plain:
        st.caption(f"{', '.join(plain)}: no attention module, nothing to show here.")
    st.plotly_chart(variance_bars(rows), width="stretch", key="shapes_variance")
    st.plotly_chart(channel_profiles(rows), width="stretch", key="shapes_channels")
    maps = position_maps(rows)
    if maps is None:
        st.caption("No selected model weighs positions (SE and ECA weigh whole channels).")
    else:
        st.plotly_chart(maps, width="stretch", key="shapes_maps")
    st.caption(f"Block {block}. Weights as the modules computed them in the analysis pass "
               "(recorded, not recomputed).")
