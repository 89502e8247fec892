"""Compare models: the paper's Figure 1 on the chosen image, one Grad-CAM per model."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from screen import Pictures, screen_png

from simam_viz.engine.analysis import Analysis
from simam_viz.rendering.panels import FIGURE1_BLOCK, FIGURE1_WHERE

__all__ = ["view_compare"]


def view_compare(results: Sequence[Analysis], pics: Pictures) -> None:
    """The input as the models saw it, then each model's map, top-5 and notes."""
    st.subheader("Compare models (the paper's Figure 1)")
    cols = st.columns(len(results) + 1)
    first = results[0]
    cols[0].image(screen_png(pics.keys[0] + "|input", first.image),
                  caption="Input (as the models see it)", width="stretch",
                  output_format="PNG")  # lossless: "auto" would re-encode it as JPEG
    for i, (col, r) in enumerate(zip(cols[1:], results, strict=True)):
        col.image(pics.figure1(i), caption=f"{r.model_name} → {r.target_name}",
                  width="stretch", output_format="JPEG")
        col.markdown("\n".join(f"{k + 1}. {p.name} — {p.probability:.1%}"
                               for k, p in enumerate(r.predictions)))
        for note in r.notes:
            if note.startswith(f"{FIGURE1_BLOCK}/{FIGURE1_WHERE}"):
                col.caption(note)
    tops = {r.predictions[0].name for r in results}
    if len(tops) > 1:
        st.warning("The models disagree on the top-1 class: " + ", ".join(sorted(tops)))
