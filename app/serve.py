"""Serve the app with a warm start: ``streamlit run app/serve.py``.

Streamlit runs a page script only when a visitor connects, so the first visitor used to pay
for importing torch, loading the models and PyTorch's first passes (10-11 s). This wrapper is
an ``st.App`` (Streamlit's ASGI entry point, which ``streamlit run`` detects) whose lifespan
starts that work in a background thread and returns at once: the health endpoint answers
immediately, and the first visitor finds the default models loaded and the default example
already analysed in the process-wide caches that the page uses (``simam_viz.service``).
The page itself is ``streamlit_app.py``; ``streamlit run app/streamlit_app.py`` still works,
cold.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from streamlit.starlette import App

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from logs import setup_logging  # noqa: E402
from paths import DEFAULT_EXAMPLE, EXAMPLES  # noqa: E402

LOG = logging.getLogger("simam_viz.app")


def warm() -> None:
    """Import what the page imports, load the default models, analyse the default example."""
    start = time.perf_counter()
    try:
        import plotly.graph_objects  # noqa: F401  (the Channels view's charts)
        import torch

        from simam_viz import catalog, figures  # noqa: F401
        from simam_viz.images import image_sha256, load_image
        from simam_viz.registry import checkpoints_dir
        from simam_viz.service import shared_models, warm_up

        device = "cuda" if torch.cuda.is_available() else "cpu"
        items = catalog.default_selection(catalog.available(checkpoints_dir()))
        pool = shared_models()
        models = [
            (item.key, pool.get((item.key, catalog.file_version(item.path), device),
                                lambda item=item: catalog.load(item, device)))
            for item in items
        ]
        data = (EXAMPLES / DEFAULT_EXAMPLE).read_bytes()
        warm_up(models, load_image(data), image_sha256(data), device)
        # everything alive now (torch, the models) lives as long as the server: keep it out
        # of the collector's full passes, which would otherwise walk it again and again
        gc.collect()
        gc.freeze()
        LOG.info("warm-up done in %.1f s (%d models)", time.perf_counter() - start, len(models))
    except Exception:  # a failed warm-up only means a slower first visit
        LOG.warning("warm-up failed; the first visitor will load everything", exc_info=True)


@asynccontextmanager
async def lifespan(_app: App) -> AsyncIterator[None]:
    setup_logging()
    if os.environ.get("SIMAM_VIZ_WARM", "1") != "0":
        threading.Thread(target=warm, name="simam-viz-warm-up", daemon=True).start()
    yield


app = App(str(HERE / "streamlit_app.py"), lifespan=lifespan)
