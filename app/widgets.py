"""Widgets shared by several views, whose values survive views that do not show them."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from simam_viz.networks.models import STAGE_BLOCKS

__all__ = ["DEFAULT_STAGE", "choose_block", "default_index", "kept", "remember", "session_id"]


def session_id() -> str | None:
    """This browser session's id: the admission control allows one heavy job per session.

    None outside a script run (AppTest without a session, a background thread).
    """
    ctx = get_script_run_ctx()
    return None if ctx is None else ctx.session_id


def remember(key: str) -> None:
    st.session_state[f"_keep_{key}"] = st.session_state[key]


def kept(key: str, default):
    """Restore a widget's value after a view that did not show it (Streamlit drops it)."""
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(f"_keep_{key}", default)


DEFAULT_STAGE = 4


def default_index(stage: int) -> int:
    """A stage's last block: where the paper's Figure 6 looks (layer4.2 for stage 4)."""
    return STAGE_BLOCKS[stage - 1] - 1


def choose_block() -> str:
    """Stage and block pickers, shared by every view that shows one block (state survives)."""
    c1, c2 = st.columns(2)
    kept("stage", DEFAULT_STAGE)
    # radio, not a select box: one click is the change (a drop-down costs a second step and
    # ~100 ms of its own before the rerun is even sent)
    stage = c1.radio("Stage", [1, 2, 3, 4], key="stage", horizontal=True, on_change=remember,
                     args=("stage",))
    key = f"block{stage}"
    kept(key, default_index(stage))
    index = c2.select_slider("Block", list(range(STAGE_BLOCKS[stage - 1])), key=key,
                             on_change=remember, args=(key,))
    return f"layer{stage}.{index}"

