"""What the views put on screen and offer as downloads, cached for every session.

On-screen pictures are JPEG (or PNG) bytes cached by the analysis keys plus the display
settings they depend on, so a rerun that changes nothing visible decodes nothing and draws
nothing. Downloads are built when clicked, once per key, inside one admission slot. Every
panel is drawn by :mod:`simam_viz.rendering.panels`, the same code the exports use, so a
panel on screen and its download have the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st
from widgets import session_id

from simam_viz.engine.analysis import Analysis
from simam_viz.networks.models import BLOCKS
from simam_viz.rendering import panels, pictures
from simam_viz.rendering.panels import Panel
from simam_viz.serving.service import shared_service

__all__ = ["Exports", "Pictures", "screen_jpeg", "screen_png"]


@st.cache_data(max_entries=512, show_spinner=False)
def screen_jpeg(key: str, _picture: Callable[[], np.ndarray]) -> bytes:
    """On-screen JPEG of a picture, cached by ``key`` (analysis keys + display settings)."""
    return pictures.jpeg_bytes(_picture())


@st.cache_data(max_entries=64, show_spinner=False)
def screen_png(key: str, _picture: np.ndarray) -> bytes:
    """Lossless on-screen PNG (the analysed crop, whose pixels users compare); zlib level 1:
    the same pixels, encoded in a third of the time."""
    return pictures.panel_png(_picture, compress_level=1)


class Pictures:
    """On-screen overlays for one set of results and display settings, cached by key."""

    def __init__(self, results: Sequence[Analysis], keys: Sequence[str], style: dict) -> None:
        self.results, self.keys, self.style = list(results), list(keys), style
        self._tag = f"{style['colormap']}|{style['alpha']}"

    @property
    def blend(self) -> dict:
        """The overlay settings every CAM panel is drawn with."""
        return {"colormap": self.style["colormap"], "alpha": self.style["alpha"]}

    def figure1(self, i: int) -> bytes:
        """Model ``i``'s Figure 1 overlay; with ``shared`` it depends on every model's map."""
        shared = self.style["shared"]
        scope = "|".join(self.keys) if shared else self.keys[i]
        return screen_jpeg(f"fig1|{scope}|{i}|{shared}|{self._tag}",
                           lambda: panels.figure1_panel(self.results, i, self.blend, shared))

    def figure6(self, i: int, block: str, panel: Panel) -> bytes:
        """One of model ``i``'s Figure 6 panels; the weights panel ignores the CAM style."""
        tag = panels.WEIGHTS_COLORMAP if panel.is_weights else self._tag
        return screen_jpeg(f"{self.keys[i]}|{block}|fig6-{panel.key}|{tag}",
                           lambda: panels.figure6_panel(self.results[i], block, panel,
                                                        self.blend))

    def depth(self, i: int) -> bytes:
        """Model ``i``'s Grad-CAM after its attention module at every block, as one image."""
        r = self.results[i]
        return screen_jpeg(f"{self.keys[i]}|depth|{self._tag}", lambda: pictures.mosaic(
            [pictures.overlay(r.image, r.cam(b, "after"), **self.blend) for b in BLOCKS],
            list(BLOCKS), per_row=8))


class Exports:
    """Download payloads, each built once per key inside one admission slot.

    Streamlit builds a download button's payload when it is clicked, on its own thread
    pool; without this every click of every visitor rebuilt a 300 dpi composite or a zip at
    once, outside the limit on heavy work. Here each payload is built by the shared service
    (one slot, one job per session, single flight) and kept in its byte-bounded export
    cache under everything it depends on.
    """

    def __init__(self, keys: Sequence[str], style: dict, block: str, stem: str) -> None:
        # the analysis keys already hold image, models, method, lambda and class
        self.scope = "|".join([*keys, style["colormap"], str(style["alpha"]),
                               str(style["shared"]), block, stem])
        self.session = session_id()  # the click runs outside the script thread

    def __call__(self, name: str, build: Callable[[], bytes]) -> Callable[[], bytes]:
        """A payload callable for ``st.download_button`` that builds ``name`` at most once."""
        def payload() -> bytes:
            data, _ = shared_service().compute(("export", self.scope, name), build,
                                               what="export", session=self.session)
            return data
        return payload
