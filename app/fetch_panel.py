"""The app's "Official ImageNet weights" panel: fetch a registered checkpoint in one click.

Without it a user who wants the published weights has to leave the browser, run
``simam-viz fetch NAME`` and restart. The panel runs exactly that download
(:func:`simam_viz.weights.fetch.fetch`: sha256-verified, written under a temporary name and renamed
only when verified), shows its progress, and on success asks the app to forget its cached
catalog and reruns, so the new model is offered at once. Every failure is the fetch error's
one line, which already says which URL to open and where to save the file by hand; the
traceback goes to the log, not the page.

The page may be public, so it never shows a server path: the folder is "the checkpoints
folder" and files are named by their file name alone. ``SIMAM_VIZ_FETCH=0``
(:func:`~simam_viz.weights.fetch.fetch_enabled`)
removes the panel altogether, and a download takes one
of the server's admission slots (``shared_service().admit("fetch", session)``), so it counts
against the same bound as analyses; a busy server is one line, as anywhere else.

Kept in its own module (not in ``streamlit_app.py``) so it can be tested on its own with
``AppTest`` and a registry whose URLs point at a local server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from simam_viz.errors import SimamVizError
from simam_viz.weights.fetch import fetch, fetch_enabled
from simam_viz.weights.registry import (
    RegistryEntry,
    find_present,
    load_registry,
    redistribution_refusal,
)

__all__ = ["fetch_panel"]

LOG = logging.getLogger("simam_viz.app")
TITLE = "Official ImageNet weights"
FOLDER_LABEL = "the checkpoints folder"  # what the page calls the folder: never its path
# The success message must outlive the st.rerun() that makes the new file show up.
_FLASH_KEY = "_fetch_panel_flash"


def fetch_panel(
    folder: Path,
    *,
    on_fetched: Callable[[], None] | None = None,
    redistributable_only: bool = False,
) -> None:
    """Render the expander listing every registered checkpoint missing from ``folder``.

    ``on_fetched`` runs after a verified file has been written and before the rerun; the app
    passes a function that clears its cached catalog (its ``list_checkpoints.clear``), which
    is narrower than ``st.cache_data.clear()``. ``redistributable_only`` applies the rule of
    ``simam-viz fetch --redistributable-only`` for deployments whose checkpoints folder ends
    up in a published image: entries whose licence forbids it get the reason instead of a
    button. By default, as with ``simam-viz fetch NAME``, everything may be fetched: a user
    downloading for their own use at run time is what the licences allow.

    With ``$SIMAM_VIZ_FETCH=0`` it draws nothing at all (the app calls it unconditionally).
    """
    if not fetch_enabled():
        return
    folder = Path(folder)
    flash = st.session_state.pop(_FLASH_KEY, None)
    with st.expander(TITLE, expanded=flash is not None):
        if flash is not None:
            st.success(flash)
        st.caption(f"Files are saved to {FOLDER_LABEL}, verified against the published sha256.")
        try:
            registry = load_registry()
        except SimamVizError:
            LOG.exception("cannot read the checkpoint registry")  # its path is in the log only
            st.error("The checkpoint registry cannot be read; the server log says why.")
            return
        missing = [e for e in registry.values() if find_present(e, folder) is None]
        if not missing:
            st.write(f"All {len(registry)} registered checkpoints are already in the folder.")
            return
        for entry in missing:
            _entry_row(entry, folder, on_fetched, redistributable_only)


def _describe(entry: RegistryEntry) -> str:
    """One markdown line: title, top-1, licence, size hint, and whether it may be shared."""
    parts = [f"**{entry.title}**"]
    if entry.top1 is not None:
        parts.append(f"top-1 {entry.top1:.2f}%")
    parts.append(f"licence: {entry.licence}")
    if entry.size_mb is not None:
        parts.append(f"≈ {entry.size_mb:.0f} MB")
    if not entry.redistributable:
        parts.append("not redistributable")
    if entry.source != "http":
        parts.append("from Google Drive")
    return " · ".join(parts)


def _entry_row(
    entry: RegistryEntry,
    folder: Path,
    on_fetched: Callable[[], None] | None,
    redistributable_only: bool,
) -> None:
    text, action = st.columns([5, 1], vertical_alignment="center")
    text.markdown(_describe(entry))
    refusal = redistribution_refusal(entry) if redistributable_only else None
    if refusal is not None:
        text.caption(refusal)
        return
    if action.button("Fetch", key=f"fetch_{entry.name}"):
        _run_fetch(entry, folder, on_fetched)


def _run_fetch(
    entry: RegistryEntry, folder: Path, on_fetched: Callable[[], None] | None
) -> None:
    """Download with a progress bar; on success flash, call back and rerun; else one error."""
    bar = st.progress(0.0, text=f"Downloading {entry.filename}…")
    shown = [-1]  # last percentage drawn: one update per percent, not per 1 MiB chunk

    def on_progress(received: int, total: int | None) -> None:
        if total:
            percent = min(100, received * 100 // total)
            if percent != shown[0]:
                shown[0] = percent
                bar.progress(percent / 100, text=f"Downloading {entry.filename}: "
                             f"{received / 1e6:.1f} of {total / 1e6:.1f} MB")
        else:  # no Content-Length: say how much, once per MB
            megabytes = received // 1_000_000
            if megabytes != shown[0]:
                shown[0] = megabytes
                bar.progress(0.0, text=f"Downloading {entry.filename}: {megabytes} MB")

    try:
        with st.spinner(f"Fetching {entry.title}…"):
            path = fetch(entry, folder, progress=False, on_progress=on_progress,
                         folder_label=FOLDER_LABEL, admission=_admission)
    except (SimamVizError, OSError) as exc:
        # SimamVizError: FetchError (already one line naming no path) or BusyError.
        # OSError: the folder could not even be read; its message may hold paths.
        LOG.exception("fetching %s into %s failed", entry.name, folder)
        bar.empty()
        st.error(_public_line(entry, folder, exc))
        return
    bar.empty()
    st.session_state[_FLASH_KEY] = (
        f"Fetched {entry.title}: saved and verified as {path.name} in {FOLDER_LABEL}.")
    if on_fetched is not None:
        on_fetched()
    st.rerun()


def _admission() -> AbstractContextManager[Any]:
    """One of the server's admission slots for the download (not for waiting on another
    session's download of the same file: ``fetch`` enters this only when it downloads)."""
    from simam_viz.serving.service import shared_service

    ctx = get_script_run_ctx()  # the session: one heavy job per session
    return shared_service().admit("fetch", None if ctx is None else ctx.session_id)


def _public_line(entry: RegistryEntry, folder: Path, exc: Exception) -> str:
    """The failure as one line fit for a public page: no server path in it."""
    if isinstance(exc, SimamVizError):
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else entry.name
    else:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        message = f"{entry.name}: cannot use {FOLDER_LABEL} ({reason})"
    # a last guard: whatever a message says, the folder's path is not shown
    for path in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
        message = message.replace(path, FOLDER_LABEL)
    return message
