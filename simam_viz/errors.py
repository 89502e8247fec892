"""Every error type the product raises for a request it cannot serve.

Each failure a user can cause (a broken image, a wrong checkpoint, a bad flag, a busy server)
maps to one of these, each a ``ValueError`` carrying a single short line, so the CLI and the
app can show the message as-is instead of a traceback. They live together so that a caller
catches ``SimamVizError`` and knows it has them all; the modules that raise them re-export
their own (``simam_viz.engine.analysis.AnalysisError`` and so on) so
older import paths keep working.
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "BusyError",
    "CheckpointError",
    "DeviceError",
    "FetchError",
    "ImageError",
    "ServiceError",
    "SimamVizError",
]


class SimamVizError(ValueError):
    """Base class: a user-facing problem described in one line."""


class CheckpointError(SimamVizError):
    """A checkpoint file cannot be loaded (empty, truncated, unsafe, wrong architecture...)."""


class ImageError(SimamVizError):
    """An image cannot be used (unsupported format, too large, truncated, not an image...)."""


class FetchError(SimamVizError):
    """A download of an official checkpoint failed or needs a manual step."""


class AnalysisError(SimamVizError):
    """A request the engine cannot serve (bad target, block, method or input)."""


class DeviceError(SimamVizError):
    """A device was asked for that this machine does not have."""


class ServiceError(SimamVizError):
    """A request the server could not serve (out of memory, failed analysis)."""


class BusyError(ServiceError):
    """Too many analyses are running; the user should retry in a moment."""
