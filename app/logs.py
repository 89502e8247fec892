"""Logging for the app's server process: the library's and the app's records to stderr.

The set-up itself lives in :mod:`simam_viz.logs` (shared with the CLI); this name stays for
the app's modules that import it.
"""

from __future__ import annotations

from simam_viz.logs import setup_logging

__all__ = ["setup_logging"]
