"""Fetch and compile the browser's chart library while the visitor looks at the first page.

Streamlit's front end loads its plotly component (one 4.7 MB JavaScript chunk in Streamlit
1.67) only when a page first draws a plotly chart. The Compare view draws none, so the first
switch to a view with charts (Attention shapes, Channels, Trust...) waited about a second for
the chunk to download and compile (``benchmarks/app_latency.py``: 1.07 s against 0.15 s for
later switches). :func:`preload_chart_library` adds an empty element at the end of the page whose
script imports that chunk when the page is idle, into the page's own module map, so the
component is ready by the time a chart view opens. It changes nothing else: no chart is
drawn, a failure is silent, and a browser that cannot run it loads the chunk as before.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import streamlit as st

__all__ = ["chart_chunk", "preload_chart_library", "preload_script"]

LOG = logging.getLogger("simam_viz.app")
_DONE = "_charts_preloaded"  # session state: this session's page has the preload

# Runs in the page itself (``st.html`` with JavaScript; no frame). The chunk's URL is taken
# relative to the page's own entry script, so it holds behind any path prefix a proxy adds;
# the module map is the page's, so the component's later lazy import finds the chunk loaded.
# Nothing in it comes from a visitor: the only value filled in is a file name of Streamlit's.
_SCRIPT = """<script>
(function () {
  try {
    if (window.__simamVizChartsPreloaded) return;
    window.__simamVizChartsPreloaded = true;
    var entry = Array.prototype.map.call(document.querySelectorAll("script[src]"),
      function (s) { return s.src; }).filter(function (u) {
        return /\\/static\\/js\\/index\\.[^\\/]+\\.js(\\?|$)/.test(u); })[0];
    if (!entry) return;
    var url = new URL(CHUNK, entry).href;
    var load = function () { import(url).catch(function () {}); };
    if (window.requestIdleCallback) window.requestIdleCallback(load, {timeout: 4000});
    else window.setTimeout(load, 1000);
  } catch (e) { /* an old browser: the chart component loads when first drawn */ }
})();
</script>"""


@lru_cache(maxsize=1)
def chart_chunk() -> str | None:
    """The file name of Streamlit's plotly component chunk, or None if this version has none
    (then nothing is preloaded)."""
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    found = sorted(p.name for p in folder.glob("PlotlyChart.*.js"))
    if len(found) != 1:
        LOG.info("chart preload off: %d plotly chunks in Streamlit's static files", len(found))
        return None
    return found[0]


def preload_script(chunk: str) -> str:
    """The element's HTML for ``chunk`` (a file name beside the page's entry script)."""
    return _SCRIPT.replace("CHUNK", json.dumps("./" + chunk))


def preload_chart_library() -> None:
    """Add the preload element at the end of the page in a session's first full run only:
    later runs send nothing (the element leaves the page, its import already started), and
    a reloaded page is a new session that preloads again."""
    chunk = chart_chunk()
    if chunk is not None and not st.session_state.get(_DONE):
        st.session_state[_DONE] = True
        st.html(preload_script(chunk), unsafe_allow_javascript=True)
