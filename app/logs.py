"""Logging for the app's server process: the library's and the app's records to stderr."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    """``simam_viz.*`` records to stderr at ``$SIMAM_VIZ_LOG_LEVEL`` (default INFO), once.

    Streamlit configures only its own logger; without this, the tracebacks the page turns
    into one line would be lost instead of reaching the operator's log.
    """
    logger = logging.getLogger("simam_viz")
    if not any(getattr(h, "_simam_viz", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._simam_viz = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("SIMAM_VIZ_LOG_LEVEL", "INFO").upper())
