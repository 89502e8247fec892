"""Export: every panel on screen as a PNG at native resolution, the composites at 300 dpi,
and everything (figures, manifests, arrays, trust checks) as one zip.

Each payload is built when its button is first clicked, once for everyone (``Exports``),
with the library's exports (:mod:`simam_viz.rendering.export`), which draw their panels
through :mod:`simam_viz.rendering.panels` like the screen does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import streamlit as st
from screen import Exports
from torch import nn

from simam_viz.engine.analysis import Analysis
from simam_viz.errors import SimamVizError
from simam_viz.rendering import figures, panels
from simam_viz.rendering.export import ExportRequest, figure6_figure, render, slug, write_exports
from simam_viz.rendering.pictures import panel_png
from views.trust import TrustCheck

__all__ = ["view_export"]


def view_export(results: Sequence[Analysis], models: Sequence[nn.Module], style: dict,
                opts: dict, block: str, data_sha: str, name: str, keys: Sequence[str],
                checks: Sequence[TrustCheck] = ()) -> None:
    """Download buttons for the current analyses, display settings and block."""
    st.subheader("Export")
    stem = Path(name).stem or "image"
    exports = Exports(keys, style, block, stem)
    blend = {"colormap": style["colormap"], "alpha": style["alpha"]}
    st.markdown("**Panels (PNG, native resolution)**")
    cols = st.columns(max(2, len(results)))
    for i, (col, r) in enumerate(zip(cols, results, strict=False)):
        col.download_button(f"{r.model_name} Grad-CAM", exports(f"panel{i}", lambda i=i: (
                                panel_png(panels.figure1_panel(results, i, blend,
                                                               style["shared"])))),
                            f"{stem}_cam_{i}.png", "image/png", key=f"dl_panel_{i}")
    attention = [i for i, r in enumerate(results) if r.kind.has_attention]
    for i in attention:
        r = results[i]
        st.caption(f"{r.model_name}: Figure 6 panels at {block}")
        for col, panel in zip(st.columns(4), panels.figure6_panels(r.kind), strict=False):
            col.download_button(
                f"{panel.title} · {block}",
                exports(f"fig6-{i}-{panel.key}", lambda r=r, panel=panel: panel_png(
                    panels.figure6_panel(r, block, panel, blend))),
                f"{stem}_fig6_{block}_{slug(r.model_name)}_{panel.key}.png", "image/png",
                key=f"dl_fig6_{i}_{panel.key}")
    request = ExportRequest(block=block, method=opts["method"], simam_lambda=opts["lambda"],
                            colormap=style["colormap"], alpha=style["alpha"],
                            shared_scale=style["shared"], target=results[0].target_name)
    st.markdown("**Composites (300 dpi) and everything as a zip**")
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("Figure 1 (PNG)",
                       exports("figure1", lambda: _composite(results, request, "1")),
                       f"{stem}_figure1.png", "image/png", key="dl_fig1")
    if attention:
        c2.download_button("Figure 6 (PNG)", exports("figure6", lambda: figures.figure_to_png(
                               figure6_figure(results, block, **blend), dpi=300)),
                           f"{stem}_figure6_{block}.png", "image/png", key="dl_fig6")
        c3.download_button("Attention shapes (PNG)",
                           exports("shapes", lambda: _composite(results, request, "shapes")),
                           f"{stem}_shapes_{block}.png", "image/png", key="dl_shapes")
    checked = "|".join(check.stem for check in checks)
    c4.download_button("All figures + manifest + arrays (zip)",
                       exports(f"zip|{checked}", lambda: _zip(results, models, request, stem,
                                                              data_sha, checks, style)),
                       f"{stem}_simam_viz.zip", "application/zip", key="dl_zip")
    if checks:
        st.caption(f"The zip also holds {len(checks)} trust check(s) of the Trust view "
                   "(PNG + JSON each).")
    st.caption("Each file is built when its button is first clicked (a few seconds for the "
               "zip) and then kept for everyone; a busy server may ask you to click again.")


def _composite(results: Sequence[Analysis], request: ExportRequest, figure: str) -> bytes:
    """One of the library's export figures (``"1"``, ``"shapes"``) as a 300 dpi PNG."""
    drawn = render(results, dataclasses.replace(request, figures=(figure,)))
    if not drawn:
        raise SimamVizError(f"no {figure} figure for these models")
    return figures.figure_to_png(next(iter(drawn.values())), dpi=300)


def _zip(results: Sequence[Analysis], models: Sequence[nn.Module], request: ExportRequest,
         stem: str, sha: str, checks: Sequence[TrustCheck] = (),
         style: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_exports(results, models, request, Path(tmp), stem, sha, npz=True)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files + sorted(Path(tmp).glob("*.json")):
                zf.write(path, path.name)
            for check in checks:
                zf.writestr(f"{stem}_{check.stem}.png", check.png(style or {}))
                zf.writestr(f"{stem}_{check.stem}.json", json.dumps(
                    check.report(image_sha256=sha), indent=2, default=str))
    return buf.getvalue()
