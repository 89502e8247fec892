"""Inside the attention: the paper's Figure 6 for every selected model with attention.

One row per model, with the panels its attention kind has
(:func:`simam_viz.rendering.panels.figure6_panels`): Grad-CAM before and after the module,
its weights as a map where it weighs positions (SimAM's channel mean, CBAM's spatial gate),
and Grad-CAM on the weights where they have the features' shape (SimAM). Below, the depth
strip of one model: Grad-CAM after its module at every block.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from screen import Pictures
from widgets import kept, remember

from simam_viz.engine.analysis import Analysis
from simam_viz.networks.kinds import SHAPES
from simam_viz.rendering import panels

__all__ = ["panel_caption", "view_inside", "weights_text"]

COLUMNS = 4  # the most panels a kind has: every row's panels get the same width


def weights_text(r: Analysis, block: str) -> str:
    """The module's weights at ``block`` by shape, e.g. ``1-D (64,), 2-D (2, 2)``."""
    return ", ".join(f"{SHAPES[shape].split(':')[0]} {tuple(values.shape)}"
                     for shape, values in r.attention_weights(block).items())


def panel_caption(r: Analysis, block: str, panel: panels.Panel) -> str:
    """A panel's title; a weights map also gives its range (it is drawn on its own scale)."""
    if panel.is_weights:
        values = panels.weights_map(r.attention_weights(block))
        if values is not None:
            return f"{panel.title} ({values.min():.3f}–{values.max():.3f})"
    return panel.title


def view_inside(results: Sequence[Analysis], pics: Pictures, block: str) -> None:
    """Figure 6 at ``block``, one row per model with attention, then one depth strip."""
    st.subheader("Inside the attention (the paper's Figure 6)")
    shown = [i for i, r in enumerate(results) if r.kind.has_attention]
    if not shown:
        st.info("Select a model with attention (SE, ECA, CBAM or SimAM) in the sidebar to "
                "look inside it.")
        return
    for i in shown:
        r = results[i]
        st.markdown(f"**{r.model_name}** · {r.kind.label}, {r.kind.site_text}")
        for col, panel in zip(st.columns(COLUMNS), panels.figure6_panels(r.kind),
                              strict=False):
            col.image(pics.figure6(i, block, panel),
                      caption=f"{panel_caption(r, block, panel)} · {block}", width="stretch",
                      output_format="JPEG")
        lam = f" · λ = {r.simam_lambda}" if r.kind.has_lambda else ""
        st.caption(f"{r.model_name} · {block}{lam} · explaining '{r.target_name}' · "
                   f"weights {weights_text(r, block)}")
    st.markdown("**Depth strip** — Grad-CAM after the attention module, block by block")
    i = _depth_model(results, shown)
    st.image(pics.depth(i), caption=f"{results[i].model_name}: Grad-CAM after "
             f"{results[i].kind.label}", width="stretch", output_format="JPEG")


def _depth_model(results: Sequence[Analysis], shown: list[int]) -> int:
    """Which model's depth strip to draw: one strip (16 overlays) per rerun, not one per model."""
    if len(shown) == 1:
        return shown[0]
    kept("depth_model", shown[0])
    if st.session_state["depth_model"] not in shown:
        st.session_state["depth_model"] = shown[0]
    return st.radio("Depth strip of", shown, format_func=lambda i: results[i].model_name,
                    key="depth_model", horizontal=True, on_change=remember,
                    args=("depth_model",))
