"""Logging set-up for the two shells (app and CLI); the library itself only logs.

Every module of the package logs to its own ``logging.getLogger(__name__)`` and never prints
or installs handlers: that is the caller's choice. The app's server and the ``simam-viz``
command call :func:`setup_logging` once, so the tracebacks they turn into one line for the
user still reach a log. Importing this module is cheap (no torch), so the app's server can
configure logging before anything heavy loads.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["LEVEL_VARIABLE", "setup_logging"]

LEVEL_VARIABLE = "SIMAM_VIZ_LOG_LEVEL"
_MARK = "_simam_viz_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record.

    A handler holding the stream it was created with keeps writing to a replaced one (a test
    harness's capture, a redirected stream), and records go missing.
    """

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(default_level: str = "INFO",
                  fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Send ``simam_viz.*`` records to stderr at ``$SIMAM_VIZ_LOG_LEVEL`` (else the default).

    Idempotent: Streamlit re-runs the page script on every interaction, and a second handler
    would print every record twice. An unknown level name falls back to the default rather
    than failing the start of a server over a typo in an environment variable.
    """
    logger = logging.getLogger("simam_viz")
    handler = next((h for h in logger.handlers if getattr(h, _MARK, False)), None)
    if handler is None:
        handler = _StderrHandler()
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt))
    level = os.environ.get(LEVEL_VARIABLE, default_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        level = default_level
    logger.setLevel(level)
