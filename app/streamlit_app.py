"""SimAM-Viz web app: a thin Streamlit shell over ``simam_viz``, and a router over its views.

A full script run happens only when the analyses may change (image, models, device, CAM
method, lambda, class). It runs or recalls one analysis per model in
``simam_viz.serving.service`` and hands the results to ``explore``, a fragment: everything a
user does there (colour map, alpha, shared scale, tabs, block, top-k) reruns only the
fragment, and only the open tab is drawn. The input is read in ``input``, the sidebar in
``sidebar``; each view is one module of ``views/`` and gets everything it shows as arguments,
never from another view's state. On-screen pictures and downloads are cached in ``screen``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from simam_viz.preload import preload_libraries

preload_libraries()  # before any app module: the warm-up thread imports the same libraries
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # app/ modules (views, sidebar...)

from chart_preload import preload_chart_library  # noqa: E402
from input import decoded, mark_upload, read_input, rerun_on_reconnect  # noqa: E402
from logs import setup_logging  # noqa: E402
from screen import Pictures  # noqa: E402
from sidebar import (  # noqa: E402
    analysis_settings,
    choose_device,
    choose_models,
    load_models,
)
from views.about import view_about  # noqa: E402
from views.attention_shapes import view_attention_shapes  # noqa: E402
from views.channels import view_channels  # noqa: E402
from views.compare import view_compare  # noqa: E402
from views.explain import explained, view_explain  # noqa: E402
from views.export import view_export  # noqa: E402
from views.inside import view_inside  # noqa: E402
from views.interventions import view_interventions  # noqa: E402
from views.trust import finished_checks, view_trust  # noqa: E402
from widgets import (  # noqa: E402
    DEFAULT_STAGE,
    choose_block,
    default_index,
    kept,
    remember,
    session_id,
)

from simam_viz.engine.analysis import Analysis  # noqa: E402
from simam_viz.errors import SimamVizError  # noqa: E402
from simam_viz.images import image_sha256  # noqa: E402
from simam_viz.rendering.panels import FIGURE1_BLOCK  # noqa: E402
from simam_viz.serving.guidance import unfamiliar_image_note  # noqa: E402
from simam_viz.serving.service import AnalysisKey, analysis_key, shared_service  # noqa: E402
from simam_viz.weights.catalog import CatalogItem  # noqa: E402

LOG = logging.getLogger("simam_viz.app")
COLORMAPS = ["jet", "turbo", "inferno", "viridis", "magma"]
VIEWS = ["Compare models", "Inside attention", "Attention shapes", "Explain SimAM",
         "What SimAM adds", "Channels", "Trust", "Export", "About"]


def run(items: list[CatalogItem], models: list[torch.nn.Module], data: bytes, sha: str,
        device: str, opts: dict
        ) -> tuple[list[tuple[Analysis, bool]], list[str], list[AnalysisKey]]:
    """One analysis per model, recalled from the shared cache or run once (all 16 blocks),
    each one's cache key as text (the on-screen pictures are cached under it) and as the key
    itself (the Inside view analyses other images with the same settings under it)."""
    service = shared_service()
    results, keys, analysis_keys = [], [], []
    for item, model in zip(items, models, strict=True):
        key = analysis_key(sha, item.key, model, device, opts["target"], opts["method"],
                           opts["lambda"])
        keys.append(repr(key))
        analysis_keys.append(key)
        cached = service.cache.get(key)  # checked here too so a hit never decodes the image
        if cached is not None:
            results.append((cached, True))
            continue
        with st.spinner(f"Analysing with {model.simam_viz.name}…"):
            results.append(service.analysis(key, model, decoded(sha, data), session_id()))
    return results, keys, analysis_keys


def show_timings(results: list[tuple[Analysis, bool]], device: str) -> None:
    parts = []
    for result, cached in results:
        ms = result.timings.get("total", 0.0) * 1000
        parts.append(f"{result.model_name}: {'cached' if cached else f'{ms:.0f} ms'}")
    st.caption(f"Device **{device}** · " + " · ".join(parts))


@st.fragment
def explore(results: list[Analysis], keys: list[str], models: list[torch.nn.Module],
            opts: dict, data_sha: str, name: str, data: bytes,
            analysis_keys: list[AnalysisKey]) -> None:
    """Display settings and the open view; every widget here reruns only this fragment.

    A fragment rerun does not pass through ``main``'s error handling, so it has its own.
    """
    guarded(lambda: _explore(results, keys, models, opts, data_sha, name, data, analysis_keys))


def _style() -> dict:
    """The display settings (colour map, alpha, one scale), which no model depends on."""
    c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
    kept("colormap", COLORMAPS[0])
    kept("alpha", 0.5)
    kept("shared", False)
    return {
        "colormap": c1.selectbox("Colour map", COLORMAPS, key="colormap", on_change=remember,
                                 args=("colormap",)),
        "alpha": c2.slider("Overlay alpha", 0.0, 1.0, step=0.05, key="alpha",
                           on_change=remember, args=("alpha",)),
        "shared": c3.checkbox("One colour scale for all models", key="shared",
                              on_change=remember, args=("shared",)),
    }


def _explore(results: list[Analysis], keys: list[str], models: list[torch.nn.Module],
             opts: dict, data_sha: str, name: str, data: bytes,
             analysis_keys: list[AnalysisKey]) -> None:
    style = _style()
    pics = Pictures(results, keys, style)
    attention = any(r.kind.has_attention for r in results)
    simam = explained(results)

    def block(shown: bool) -> str:
        """The stage and block pickers where the view has something per block to show."""
        return choose_block() if shown else FIGURE1_BLOCK

    def image():
        return decoded(data_sha, data)

    tabs = st.tabs(VIEWS, key="view", on_change="rerun")
    shown = [view for view, tab in zip(VIEWS, tabs, strict=True) if tab.open]
    LOG.debug("render view %s", shown[0] if shown else VIEWS[0])
    draw: dict[str, Callable[[], None]] = {
        "Compare models": lambda: view_compare(results, pics),
        "Inside attention": lambda: view_inside(results, pics, block(attention), models,
                                                analysis_keys),
        "Attention shapes": lambda: view_attention_shapes(results, block(attention)),
        "Explain SimAM": lambda: view_explain(results, models, keys, image,
                                              block(simam is not None), pics),
        "What SimAM adds": lambda: view_interventions(results, models, keys, image, style),
        "Channels": lambda: view_channels(results, block(attention)),
        "Trust": lambda: view_trust(results, models, keys, image, choose_block(),
                                    opts["method"], style),
        "Export": lambda: view_export(results, models, style, opts, _export_block(attention),
                                      data_sha, name, keys, finished_checks(keys)),
        "About": view_about,
    }
    for view, tab in zip(VIEWS, tabs, strict=True):
        with tab:
            if tab.open:
                draw[view]()


def _export_block(attention: bool) -> str:
    """The block the per-block views last showed (their stage and block pickers)."""
    stage = st.session_state.get("_keep_stage", DEFAULT_STAGE)
    index = st.session_state.get(f"_keep_block{stage}", default_index(stage))
    return f"layer{stage}.{index}" if attention else FIGURE1_BLOCK


def main() -> None:
    st.set_page_config(page_title="SimAM-Viz", layout="wide")
    rerun_on_reconnect()
    st.title("SimAM-Viz")
    st.caption("What do ResNet-50 and its SE, ECA, CBAM and SimAM variants look at?")
    picked = read_input()
    items = choose_models()
    device = choose_device()
    if picked is None:
        return
    data, name, fresh_upload = picked
    items, models, problems = load_models(items, device)
    for problem in problems:
        st.error(problem)
    if not models:
        return
    opts = analysis_settings(models, items)
    sha = image_sha256(data)
    results, keys, analysis_keys = run(items, models, data, sha, device, opts)
    if fresh_upload:
        st.session_state["_last_upload"] = (data, name)  # analysed fine: worth keeping
        mark_upload(sha)
    res = [r for r, _ in results]
    note = unfamiliar_image_note(res, [i.source for i in items],
                                 models[0].simam_viz.class_names)
    if note:
        st.info(note)
    shown_name = name.replace("`", "'")
    st.caption(f"Image: `{shown_name}`")
    show_timings(results, device)
    explore(res, keys, models, opts, sha, name, data, analysis_keys)


def guarded(body: Callable[[], None]) -> None:
    """Run ``body``; a failure is one line on the page and a traceback in the server log."""
    try:
        body()
    except SimamVizError as exc:
        LOG.warning("shown to the user: %s", exc, exc_info=True)
        st.error(str(exc))
    except Exception as exc:  # never a traceback in the page; the session stays usable
        LOG.exception("unexpected error in a script run")
        st.error(f"Something went wrong ({type(exc).__name__}); please try again.")


setup_logging()
guarded(main)
guarded(preload_chart_library)  # last: after everything the visitor sees
