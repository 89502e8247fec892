"""Rendering: pure pictures, matplotlib figures, plotly charts and exports, all from arrays."""
