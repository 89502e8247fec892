"""Inside the attention: the paper's Figure 6 for every selected model with attention.

One row per model, with the panels its attention kind has
(:func:`simam_viz.rendering.panels.figure6_panels`): Grad-CAM before and after the module,
its weights as a map where it weighs positions (SimAM's channel mean, CBAM's spatial gate),
and Grad-CAM on the weights where they have the features' shape (SimAM). Below, the depth
strip of one model: Grad-CAM after its module at every block.

Where the weights are 3-D (SimAM), Figure 6's claim that the attention agrees with the
Grad-CAM is measured at the chosen block (:mod:`simam_viz.engine.attention_agreement`): the
Spearman correlation of the channel-mean attention with the Grad-CAM after the module, at
once (both maps are in the analysis), beside the same correlation with the attention of the
other bundled example images. That null needs those images analysed by the same model; the
analyses go through the shared service and its cache (the keys the page itself would use), so
it is drawn at once when all are cached and otherwise waits for a button: a few seconds of
model work, not paid on every visit to the view.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import replace

import streamlit as st
from input import decoded
from paths import EXAMPLES
from screen import Pictures
from torch import nn
from widgets import kept, remember, session_id

from simam_viz.engine.analysis import Analysis
from simam_viz.engine.attention_agreement import WHERE, Agreement, analysis_agreement
from simam_viz.images import image_sha256
from simam_viz.networks.kinds import SHAPES
from simam_viz.rendering import panels
from simam_viz.serving.service import AnalysisKey, shared_service

__all__ = ["agreement_text", "panel_caption", "view_inside", "weights_text"]

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


def view_inside(results: Sequence[Analysis], pics: Pictures, block: str,
                models: Sequence[nn.Module] = (),
                analysis_keys: Sequence[AnalysisKey] = ()) -> None:
    """Figure 6 at ``block``, one row per model with attention, then one depth strip.

    ``models`` and ``analysis_keys`` (the page's, one per result) let a model with 3-D
    weights measure its attention against other images' (without them, only its own
    agreement is shown)."""
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
        if r.kind.cam_weights is not None and WHERE in r.wheres(block):
            _consistency(r, i, block, models[i] if i < len(models) else None,
                         analysis_keys[i] if i < len(analysis_keys) else None)
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


@functools.cache
def _example_shas() -> tuple[tuple[str, str], ...]:
    """(file name, sha256 of its bytes) of every bundled example, as the input lists them."""
    names = sorted(p.name for p in EXAMPLES.glob("*") if p.suffix in (".png", ".jpg"))
    return tuple((name, image_sha256((EXAMPLES / name).read_bytes())) for name in names)


def agreement_text(own: Agreement, null: Agreement | None) -> str:
    """The measured line: own agreement, then the other images' mean (or why there is none)."""
    if not math.isfinite(own.spearman):
        return ("Spearman(attention, Grad-CAM after): not defined here, the Grad-CAM after "
                "the module is flat at this block")
    text = f"Spearman(attention, Grad-CAM after) = {own.spearman:.2f}"
    if null is None:
        return text
    if null.n == 0:
        return text + "; with other images' attention: no other image to compare with"
    return (f"{text}; with other images' attention: mean {null.null_mean:.2f} "
            f"({null.n} images, ±{null.null_std:.2f}; this image's attention ranks "
            f"{null.rank} of {null.n + 1})")


def _consistency(r: Analysis, i: int, block: str, model: nn.Module | None,
                 key: AnalysisKey | None) -> None:
    """Figure 6's agreement at ``block``, measured; the null from the other examples' attention.

    The other examples are analysed by the same model with the page's own settings (the same
    cache keys a visitor choosing them would use), all 16 blocks at once as every analysis, so
    another block or a later visit costs nothing; only the attention of those analyses is used.
    """
    own = analysis_agreement(r, block)
    if model is None or key is None:
        st.caption(agreement_text(own, None))
        return
    service = shared_service()
    others = [(name, replace(key, image_sha256=sha)) for name, sha in _example_shas()
              if sha != key.image_sha256]
    found = [service.cache.get(k) for _, k in others]
    missing = [(name, k) for (name, k), a in zip(others, found, strict=True) if a is None]
    line = st.empty()  # one line: "not measured yet" until the button, then the numbers
    if missing and math.isfinite(own.spearman):
        line.caption(agreement_text(own, None) + f"; with other images' attention: not "
                     f"measured yet ({len(missing)} of the {len(others)} other example "
                     "images to analyse)")
        holder = st.empty()
        if not holder.button(
                "Compare with other images' attention", key=f"agreement_{i}",
                help="Analyses the other bundled example images with this model (a few "
                     "seconds of model work on a CPU, kept for every session) and correlates "
                     "this image's Grad-CAM with their attention at the same block: the "
                     "agreement an attention map that knows nothing of this image has."):
            return
        holder.empty()
        ran = {}
        with st.spinner(f"Analysing {len(missing)} example images with {r.model_name}…"):
            for name, k in missing:
                picture = decoded(k.image_sha256, (EXAMPLES / name).read_bytes())
                ran[k] = service.analysis(k, model, picture, session_id())[0]
        found = [ran.get(k, a) for (_, k), a in zip(others, found, strict=True)]
    null = analysis_agreement(r, block, [a for a in found if a is not None])
    line.caption(agreement_text(own, null))
