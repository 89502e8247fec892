"""Serve the app with a warm start: ``streamlit run app/serve.py``.

Streamlit runs a page script only when a visitor connects, so the first visitor used to pay
for importing torch, loading the models and PyTorch's first passes (10-11 s). This wrapper is
an ``st.App`` (Streamlit's ASGI entry point, which ``streamlit run`` detects) whose lifespan
starts that work in a background thread and returns at once: the health endpoint answers
immediately, and the first visitor finds the default models loaded and the default example
already analysed in the process-wide caches that the page uses (``simam_viz.serving.service``).
The page itself is ``streamlit_app.py``; ``streamlit run app/streamlit_app.py`` still works,
cold.

Besides the page, the app serves what an orchestrator and an operator need:

- ``/readyz``: 503 until the warm-up has succeeded, then 200. A replica that is alive but
  cold must not get visitors (``/_stcore/health`` answers 0.6 s after start, long before the
  models are loaded), and one whose warm-up failed stays out (503, reason in the log).
- ``/metrics``: the admission control's state in Prometheus' text format (slots busy, queue
  wait, busy replies, jobs and their seconds, cache bytes), for dashboards and autoscalers.
- :class:`upload_guard.UploadCap`: at most a few uploaded files held per browser session.
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

# torch's threads per analysis: the CPUs this process may use, shared by the analyses that
# run at once (SIMAM_VIZ_MAX_CONCURRENT). More threads than free CPUs make OpenMP's threads
# spin against each other: on 2 CPUs with 2 threads per analysis, an upload of the demo
# models cost 0.4-1.35 s of server CPU instead of 0.16-0.2 s (serving.py capacity).
# Set before anything loads torch; an explicit OMP_NUM_THREADS is kept.
if "OMP_NUM_THREADS" not in os.environ:
    _CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _SLOTS = max(1, int(os.environ.get("SIMAM_VIZ_MAX_CONCURRENT", "2")))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (_CPUS or 1) // _SLOTS))

from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from streamlit.starlette import App  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from logs import setup_logging  # noqa: E402
from paths import DEFAULT_EXAMPLE, EXAMPLES  # noqa: E402
from upload_guard import UploadCap  # noqa: E402

LOG = logging.getLogger("simam_viz.app")
# "warming up" until warm() ends; then "ready" or "warm-up failed" (what /readyz answers)
READINESS = {"state": "warming up"}


def warm() -> None:
    """Import what the page imports, load the default models, analyse the default example."""
    start = time.perf_counter()
    try:
        # a drill for operators and tests: how the orchestrator treats a slow start
        time.sleep(float(os.environ.get("SIMAM_VIZ_WARM_DELAY_S", "0")))
        from simam_viz.preload import preload_libraries

        preload_libraries()  # one thread at a time: the first page imports them too
        import torch

        from simam_viz.images import image_sha256, load_image
        from simam_viz.serving.service import shared_models, warm_up
        from simam_viz.weights import catalog  # noqa: F401
        from simam_viz.weights.registry import checkpoints_dir

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
        if not models:
            raise RuntimeError("no checkpoint to serve")
        LOG.info("warm-up done in %.1f s (%d models)", time.perf_counter() - start, len(models))
        READINESS["state"] = "ready"
    except Exception:  # the replica stays alive (liveness) but never ready: no visitor here
        READINESS["state"] = "warm-up failed"
        LOG.error("warm-up failed; /readyz answers 503 and no visitor is sent here",
                  exc_info=True)


async def readyz(_request: Request) -> PlainTextResponse:
    """200 once the warm-up has succeeded; 503 while warming up or after it failed."""
    state = READINESS["state"]
    return PlainTextResponse(state, status_code=200 if state == "ready" else 503,
                             headers={"Cache-Control": "no-store"})


async def metrics(_request: Request) -> PlainTextResponse:
    """The admission control and caches in Prometheus' text format, plus readiness.

    Runs on the event loop: it must never import the engine (torch takes seconds to import,
    and would stall every connection); until the warm-up has imported it, only the readiness
    gauge is there.
    """
    service = getattr(sys.modules.get("simam_viz.serving.service"), "shared_service", None)
    ready = int(READINESS["state"] == "ready")
    text = (service().metrics() if service is not None else "") + (
        "# HELP simam_viz_ready 1 once the warm-up has succeeded.\n"
        f"# TYPE simam_viz_ready gauge\nsimam_viz_ready {ready}\n")
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4",
                             headers={"Cache-Control": "no-store"})


@asynccontextmanager
async def lifespan(_app: App) -> AsyncIterator[None]:
    setup_logging()
    if os.environ.get("SIMAM_VIZ_WARM", "1") != "0":
        threading.Thread(target=warm, name="simam-viz-warm-up", daemon=True).start()
    else:  # the operator chose a cold start: ready as soon as it listens
        READINESS["state"] = "ready"
    yield


app = App(str(HERE / "streamlit_app.py"), lifespan=lifespan,
          routes=[Route("/readyz", readyz), Route("/metrics", metrics)],
          middleware=[Middleware(UploadCap)])
