"""The sidebar: which models to compare, where they run, and the settings that change numbers.

Everything chosen here may run the models again (a new model, device, CAM method, λ or
class); display settings live with the views instead, where a change reruns only the open
view. Loading goes through the process-wide model pool, one admission slot per load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import streamlit as st
import torch
from fetch_panel import fetch_panel
from widgets import session_id

from simam_viz.engine.cam_methods import METHODS
from simam_viz.errors import SimamVizError
from simam_viz.networks.attention import paper_lambda_note
from simam_viz.serving.service import shared_models, shared_service
from simam_viz.weights import catalog
from simam_viz.weights.registry import checkpoints_dir

__all__ = ["TOP1", "analysis_settings", "choose_device", "choose_models", "load_models"]

LOG = logging.getLogger("simam_viz.app")
LAMBDAS = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0]
TOP1 = "Each model's top-1"


@st.cache_data(ttl=20, show_spinner=False)
def list_checkpoints(folder: str) -> list[catalog.CatalogItem]:
    """The catalog, re-read every 20 s so files dropped into checkpoints/ appear."""
    return catalog.available(folder)


@st.cache_resource
def loaded_versions() -> dict[tuple[str, str], tuple[int, ...]]:
    """The file version each (checkpoint path, device) was last loaded from, for all sessions.

    A file deleted after it was loaded keeps serving the loaded model (looked up under this
    version) until the catalog, re-read every 20 s, stops offering it.
    """
    return {}


def choose_models() -> list[catalog.CatalogItem]:
    st.sidebar.header("Models")
    items = list_checkpoints(str(checkpoints_dir()))
    compare = st.sidebar.container()
    with st.sidebar:
        fetch_panel(checkpoints_dir(), on_fetched=list_checkpoints.clear)
    if not items:
        raise SimamVizError("no checkpoints found: add files to checkpoints/ (see README)")
    labels = {item.key: item.label for item in items}
    default = [i.key for i in catalog.default_selection(items)]
    keys = compare.multiselect("Compare", list(labels), default=default,
                               format_func=labels.get, key="models", max_selections=5)
    if not keys:
        st.info("Choose at least one model in the sidebar.")
        st.stop()
    by_key = {i.key: i for i in items}
    return [by_key[k] for k in keys]


def load_models(
    items: list[catalog.CatalogItem], device: str
) -> tuple[list[catalog.CatalogItem], list[torch.nn.Module], list[str]]:
    """The items that loaded, their models, and one line per checkpoint that did not.

    A missing or corrupt file must not take the other models off the page.
    """
    known = loaded_versions()
    pool = shared_models()
    kept, models, problems = [], [], []
    for item in items:
        try:
            version = catalog.file_version(item.path)
        except OSError:
            version = known.get((str(item.path), device))
            if version is None:
                problems.append(f"{item.path.name}: no such checkpoint file")
                continue
        try:
            model = pool.get((item.key, version, device),
                             lambda item=item: _load_in_slot(item, device))
        except SimamVizError as exc:
            LOG.warning("checkpoint %s not loaded: %s", item.path, exc, exc_info=True)
            problems.append(str(exc))
            continue
        except OSError as exc:  # deleted or unreadable between the checks and the read
            LOG.warning("checkpoint %s unreadable", item.path, exc_info=True)
            problems.append(f"{item.path.name}: cannot be read ({type(exc).__name__})")
            continue
        known[(str(item.path), device)] = version
        kept.append(item)
        models.append(model)
    return kept, models, problems


def _load_in_slot(item: catalog.CatalogItem, device: str) -> torch.nn.Module:
    """Load a checkpoint inside one admission slot: a load is heavy work like an analysis."""
    with shared_service().admit("load", session_id()):
        return catalog.load(item, device)


def choose_device() -> str:
    st.sidebar.header("Device")
    choices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    name = st.sidebar.selectbox("Run on", choices, key="device")
    device = "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"
    st.sidebar.markdown(f"Running on **{device.upper()}**")
    return device


def analysis_settings(models: Sequence[torch.nn.Module],
                      items: Sequence[catalog.CatalogItem]) -> dict:
    """Settings that change the numbers (each change may run the models).

    The λ picker belongs to the first model whose attention has a λ (SimAM's energy
    regulariser); one widget state per checkpoint, each starting at its trained λ.
    """
    st.sidebar.header("Analysis")
    methods = {m.name: m.title for m in METHODS.values()}
    method = st.sidebar.selectbox("CAM method", list(methods), format_func=methods.get,
                                  key="method")
    lam = None
    tuned = next((m for m in models if m.simam_viz.kind.has_lambda), None)
    if tuned is not None:
        info = tuned.simam_viz
        own = float(info.simam_lambda or 0.1)
        choices = sorted({*LAMBDAS, own})
        item = items[list(models).index(tuned)]
        lam = st.sidebar.select_slider(f"{info.kind.label} λ (inference-time)", choices,
                                       value=own, key=f"lambda::{item.key}")
        source = paper_lambda_note(own)
        st.sidebar.caption(f"{info.name or info.kind.label} was trained with λ = {own:g}"
                           + (f", {source}." if source else "."))
    names: list[str] = []
    for model in models:
        names += [c for c in model.simam_viz.class_names if c not in names]
    target = st.sidebar.selectbox("Explain class", [TOP1, *names], key="target")
    return {"method": method, "lambda": lam, "target": None if target == TOP1 else target}
