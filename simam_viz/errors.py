"""Error types the product raises for bad input.

Every failure a user can cause (a broken image, a wrong checkpoint, a bad flag) maps to one of
these, each a ``ValueError`` carrying a single short line, so the CLI and the app can show the
message as-is instead of a traceback.
"""

from __future__ import annotations


class SimamVizError(ValueError):
    """Base class: a user-facing problem described in one line."""


class CheckpointError(SimamVizError):
    """A checkpoint file cannot be loaded (empty, truncated, unsafe, wrong architecture...)."""


class ImageError(SimamVizError):
    """An image cannot be used (unsupported format, too large, truncated, not an image...)."""


class FetchError(SimamVizError):
    """A download of an official checkpoint failed or needs a manual step."""
