"""About: what SimAM computes, what each map shows, and what every attention kind does."""

from __future__ import annotations

import streamlit as st

from simam_viz.networks.kinds import KINDS, SHAPES

__all__ = ["ABOUT", "view_about"]

ABOUT = """
**SimAM** gives every neuron of a feature map its own weight, with no parameters to learn.
For a neuron *t* in a channel, it asks how well *t* can be told apart from the other neurons
of that channel by a straight line: the paper writes this as an energy function whose minimum
has a closed form, `e* = 4(σ² + λ) / ((t − μ)² + 2σ² + 2λ)`, where μ and σ² are the channel's
mean and variance. A neuron that stands out from its neighbours has a *low* energy, so
`1/e*` measures its importance. Since `1/e* = (t − μ)² / (4(σ² + λ)) + 1/2` is at least 1/2,
the sigmoid puts every weight in (sigmoid(0.5), 1), about (0.62, 1); the features are
multiplied by these weights. λ regularises: larger λ flattens the weights.

**The maps.** *Grad-CAM* weights each channel of a layer by the mean gradient of the class
score and sums them: where the layer's evidence for the class lies.
*Before* an attention module uses the features entering it, *after* the refined features.
Where the module weighs positions, Figure 6 also shows its weights as a map: SimAM's 3-D
weights averaged over channels (*Attention (channel mean)*), CBAM's *Spatial gate*.
*Grad-CAM on attention* treats SimAM's weights themselves as the layer.
"""


def kinds_text() -> str:
    """One line per attention kind: what it is, where it acts and its weights' shapes."""
    lines = []
    for kind in KINDS.values():
        if not kind.has_attention:
            continue
        shapes = "; ".join(SHAPES[s] for s in kind.shapes)
        lines.append(f"- **{kind.label}**: {kind.summary}; acts {kind.site_text}; "
                     f"weights {shapes}.")
    return "**The attention kinds.**\n\n" + "\n".join(lines)


def view_about() -> None:
    st.markdown(ABOUT)
    st.markdown(kinds_text())
