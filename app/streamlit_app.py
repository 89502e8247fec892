"""SimAM-Viz web app (thin Streamlit shell over ``simam_viz``)."""

from __future__ import annotations

import streamlit as st

import simam_viz

st.set_page_config(page_title="SimAM-Viz", layout="wide")
st.title("SimAM-Viz")
st.write(
    "Compare what ResNet-50, SE-ResNet-50 and SimAM-ResNet-50 look at. "
    f"simam_viz {simam_viz.__version__}: the interactive views arrive with the analysis engine."
)
st.table({"architecture": [spec.title for spec in simam_viz.ARCHS.values()]})
