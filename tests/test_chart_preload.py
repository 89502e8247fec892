"""The idle-time preload of Streamlit's chart chunk (app/chart_preload.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import streamlit as st
from helpers import run_page

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
from chart_preload import chart_chunk, preload_script  # noqa: E402


def test_the_installed_streamlit_has_one_chart_chunk_to_preload() -> None:
    chunk = chart_chunk()
    assert chunk is not None, "Streamlit renamed its plotly chunk: preloading is off"
    assert (Path(st.__file__).parent / "static" / "static" / "js" / chunk).is_file()
    assert chunk.startswith("PlotlyChart.") and chunk.endswith(".js")


def test_script_names_the_chunk_beside_the_entry_script_and_nothing_else() -> None:
    html = preload_script('PlotlyChart.x"y.js')
    assert json.dumps('./PlotlyChart.x"y.js') in html  # quoted as a JS string literal
    assert html.count("<script>") == 1 and html.rstrip().endswith("</script>")
    assert "import(url)" in html and "requestIdleCallback" in html


def _preloads(at) -> list[str]:
    return [e.proto.body for e in at.get("html") if "PlotlyChart." in e.proto.body]


def test_only_a_sessions_first_run_sends_the_preload() -> None:
    at = run_page()
    assert not at.exception
    first = _preloads(at)
    assert len(first) == 1 and chart_chunk() in first[0]
    at.run()  # a later full run of the same session
    assert _preloads(at) == []
