"""The Trust view: how far the map on screen can be believed (faithfulness + sanity check).

A check costs one to three seconds of model work, so it runs only when asked (a button),
shows a progress bar, and goes through the shared service: it takes one of the server's
concurrency slots like an analysis, runs once when two sessions ask together, and is cached
by the analysis key plus (block, map, method). A check already in the cache is shown at
once, without a button. Everything drawn is a pure function of the cached result
(``simam_viz.rendering.trust_figures``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image
from torch import nn
from widgets import kept, remember, session_id

from simam_viz.engine.analysis import Analysis, analyze
from simam_viz.engine.cam_methods import METHODS
from simam_viz.engine.trust import (
    BASELINES,
    SANITY_FLAT_RULE,
    SANITY_MODES,
    SANITY_SCORES,
    SanityStep,
    faithfulness,
    sanity_check,
)
from simam_viz.rendering import figures, pictures, trust_charts, trust_figures
from simam_viz.serving.service import shared_service

__all__ = ["TrustCheck", "trust_key", "view_trust"]

WHERE_LABELS = {"output": "block output", "before": "before the attention module",
                "after": "after the attention module",
                "attention": "the attention weights themselves"}
MODE_LABELS = {"cascade": "cascade (cumulative, logits down)",
               "independent": "independent (one layer at a time)"}
IDENTITY_BLOCKS = (
    "Reading it in a ResNet: a re-initialised batch norm in eval mode is the identity (running "
    "mean 0, variance 1, weight 1, bias 0) and the skip path carries the trained features past "
    "a randomised block, so a randomised identity bottleneck leaves the map nearly as it was. "
    "Spearman therefore plateaus within a stage and drops at the downsampling blocks "
    "(layerN.0), whose skip path is randomised too; the independent mode shows each block's "
    "own effect."
)


def method_title(name: str) -> str:
    """A CAM method as the sidebar names it ("Grad-CAM", not "gradcam")."""
    return METHODS[name].title


@dataclass(frozen=True, eq=False)
class TrustCheck:
    """One finished check: what was checked, its scores and its cascade."""

    model_name: str
    block: str
    where: str
    method: str
    faith: dict[str, Any]
    steps: list[SanityStep]
    image: np.ndarray
    reference: np.ndarray
    mode: str = "cascade"  # the sanity check's

    @property
    def stem(self) -> str:
        suffix = "" if self.mode == "cascade" else f"_{self.mode}"
        return f"trust_{self.model_name}_{self.block}_{self.where}_{self.method}{suffix}".replace(
            " ", "-")

    def report(self, **context: Any) -> dict[str, Any]:
        return trust_figures.report(self.faith, self.steps, mode=self.mode,
                                    model=self.model_name, **context)

    def png(self, style: dict) -> bytes:
        fig = trust_figures.trust_figure(
            self.image, self.reference, self.faith, self.steps,
            title=(f"{self.model_name}: {self.block} {WHERE_LABELS[self.where]}, "
                   f"{method_title(self.method)}"),
            colormap=style["colormap"], alpha=style["alpha"], mode=self.mode)
        return figures.figure_to_png(fig, dpi=150)


def trust_key(analysis_key: str, block: str, where: str, method: str,
              mode: str = "cascade") -> tuple[str, ...]:
    """The cache key of a check: it depends on everything the analysis does, plus the map and
    the sanity check's mode (a cascade check's key is what it was before modes existed)."""
    return ("trust", analysis_key, block, where, method, *(() if mode == "cascade" else (mode,)))


def run_check(model: nn.Module, image: Image.Image, result: Analysis, block: str, where: str,
              method: str, progress: Callable[[float], None],
              mode: str = "cascade", faith: dict[str, Any] | None = None) -> TrustCheck:
    """Faithfulness then the sanity check in ``mode``, for the class and lambda the analysis
    explains. ``faith``: the scores of a check of the same map in the other mode, reused
    (faithfulness does not depend on the mode)."""
    settings = {"target": result.target, "block": block, "where": where, "method": method,
                "simam_lambda": result.simam_lambda}
    if faith is None:
        faith = faithfulness(model, image, **settings, baselines=True,
                             progress=lambda f: progress(0.4 * f))
    steps = sanity_check(model, image, **settings, mode=mode,
                         progress=lambda f: progress(0.4 + 0.6 * f))
    if method == result.method:  # the map on screen is the check's reference
        reference = result.cam(block, where)
    else:
        reference = analyze(model, image, target=result.target, blocks=(block,), method=method,
                            simam_lambda=result.simam_lambda).cam(block, where)
    return TrustCheck(result.model_name, block, where, method, faith, steps, result.image,
                      reference, mode)


def finished_checks(keys: Sequence[str]) -> list[TrustCheck]:
    """Checks this session ran for the current analyses that are still cached (for export)."""
    service = shared_service()
    found = []
    for key in st.session_state.get("_trust_keys", []):
        if key[1] in keys:
            check = service.caches["trust"].get(key)
            if check is not None:
                found.append(check)
    return found


def view_trust(results: Sequence[Analysis], models: Sequence[nn.Module], keys: Sequence[str],
               image: Callable[[], Image.Image], block: str, default_method: str,
               style: dict) -> None:
    """Pick a model, map and method; check on demand; show scores, curves and the cascade."""
    st.subheader("Can this map be trusted?")
    names = [r.model_name for r in results]
    kept("trust_model", 0)
    if st.session_state["trust_model"] >= len(results):
        st.session_state["trust_model"] = 0
    c1, c2, c3 = st.columns(3)
    i = c1.selectbox("Model", range(len(results)), format_func=names.__getitem__,
                     key="trust_model", on_change=remember, args=("trust_model",))
    result, model = results[i], models[i]
    wheres = [w for w in result.wheres(block)]
    kept("trust_where", "output")
    if st.session_state["trust_where"] not in wheres:
        st.session_state["trust_where"] = "output"
    where = c2.selectbox("Map", wheres, format_func=WHERE_LABELS.__getitem__, key="trust_where",
                         on_change=remember, args=("trust_where",))
    kept("trust_method", default_method)
    method = c3.selectbox("CAM method", list(METHODS), format_func=method_title,
                          key="trust_method", on_change=remember, args=("trust_method",))
    kept("trust_mode", "cascade")
    mode = st.radio("Sanity check", SANITY_MODES, format_func=MODE_LABELS.__getitem__,
                    horizontal=True, key="trust_mode", on_change=remember, args=("trust_mode",),
                    help="Adebayo et al. 2018 define both: cascade re-initialises the layers "
                         "cumulatively from the logits down; independent re-initialises one "
                         "layer at a time with every other layer trained, which separates a "
                         "block's own effect from that of the layers above it.")
    key = trust_key(keys[i], block, where, method, mode)
    st.caption(f"{result.model_name} · {block} · {WHERE_LABELS[where]} · "
               f"{method_title(method)} · explaining '{result.target_name}'. Perturbs the "
               "input where the map points (faithfulness) and re-initialises the model's "
               "layers from the logits down, cumulatively or one at a time (sanity check, "
               "Adebayo et al. 2018).")
    service = shared_service()
    check = service.caches["trust"].get(key)
    other = service.caches["trust"].get(trust_key(  # the same map in the other mode
        keys[i], block, where, method, next(m for m in SANITY_MODES if m != mode)))
    if check is None:
        if not st.button("Check this map", key="trust_run", type="primary"):
            st.info("About 5-15 s of model work on a CPU (the map and two baseline maps are "
                    "scored); the result is kept for every session.")
            return
        bar = st.progress(0.0, text="Checking the map…")
        check, _ = service.compute(
            key, lambda: run_check(model, image(), result, block, where, method,
                                   lambda f: bar.progress(min(1.0, f), text="Checking the map…"),
                                   mode, other.faith if other is not None else None),
            what="trust", session=session_id())
        bar.empty()
    seen = st.session_state.setdefault("_trust_keys", [])
    if key not in seen:
        seen.append(key)
    show_check(check, style)


def show_baselines(faith: dict[str, Any]) -> None:
    """Each score beside the same score of two maps that know nothing, and a one-line reading
    (nothing for a check cached without baselines)."""
    rows = trust_figures.baseline_rows(faith)
    if not rows:
        return
    titles = trust_figures.BASELINE_TITLES
    lines = [f"| score | this map | {titles['random']} | {titles['center']} |",
             "|---|---|---|---|"]
    lines += [f"| {title} {'↑' if d.startswith('higher') else '↓'} | **{v:.3f}** | {r:.3f} | "
              f"{c:.3f} |" for title, d, v, r, c in rows]
    st.markdown("\n".join(lines))
    st.caption(f"{trust_figures.baseline_reading(faith)} Random map: "
               f"{BASELINES['random']}; centre map: {BASELINES['center']}.")


def show_check(check: TrustCheck, style: dict) -> None:
    """The five scores with meaning and direction, the curves and the cascade."""
    faith = check.faith
    cols = st.columns(5)
    for col, (title, value, direction, meaning) in zip(
            cols, trust_figures.score_lines(faith), strict=True):
        col.metric(title, f"{value:.3f}", help=meaning)
        col.caption(("↑ " if direction.startswith("higher") else "↓ ") + direction)
    st.caption(f"Target '{faith['target_name']}', probability on the unperturbed input "
               f"{faith['probability']:.3f}. Hover a score for what it measures.")
    show_baselines(faith)
    left, right = st.columns(2)
    left.plotly_chart(trust_charts.curves_chart(faith), width="stretch")
    right.plotly_chart(trust_charts.sanity_chart(check.steps, mode=check.mode),
                       width="stretch")
    first, last = check.steps[0], check.steps[-1]
    flat = sum(s.flat for s in check.steps)
    end = "with every layer randomised" if check.mode == "cascade" else "with the stem alone"
    st.caption(
        f"Spearman {first.spearman:.2f} after randomising fc, {last.spearman:.2f} {end} ("
        + SANITY_SCORES["spearman"][1].split(";")[0] + "). A map that stays similar while the "
        f"weights are destroyed explains the image, not the model. {flat} of "
        f"{len(check.steps)} maps flat: {SANITY_FLAT_RULE}.")
    st.caption(IDENTITY_BLOCKS)
    strip = pictures.sanity_strip(check.image, check.reference, check.steps,
                                       colormap=style["colormap"], alpha=style["alpha"])
    st.image(pictures.jpeg_bytes(strip),
             caption=trust_figures.SANITY_MODE_LABELS[check.mode]["strip"], width="stretch",
             output_format="JPEG")
