"""Import the heavy libraries once, one thread at a time.

The app server imports torch, torchvision, pytorch-grad-cam and matplotlib in its warm-up
thread while the first visitor's script thread imports the same modules. torchvision's
packages import each other (``torchvision.transforms`` and ``torchvision.models`` through
``transforms._presets``); when two threads enter such a cycle from different ends, Python's
deadlock avoidance hands one of them a partially initialised module and the import fails
("cannot import name 'InterpolationMode' from partially initialized module"), so the page
never renders. Both threads call :func:`preload_libraries` first: the first one imports
everything under the lock, the other waits, then finds every module complete.
"""

from __future__ import annotations

import importlib
import threading

__all__ = ["HEAVY_MODULES", "preload_libraries"]

HEAVY_MODULES = (
    "torch",
    "torchvision",
    "torchvision.models",
    "torchvision.transforms",
    "pytorch_grad_cam",
    "pytorch_grad_cam.metrics.road",
    "cv2",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "scipy.stats",
    "skimage.feature",
    "skimage.metrics",
    "plotly.graph_objects",
)
"""Libraries that take seconds to import and import each other internally."""

_LOCK = threading.Lock()
_DONE = threading.Event()


def preload_libraries() -> None:
    """Import :data:`HEAVY_MODULES` under one lock (idempotent, cheap once done)."""
    if _DONE.is_set():
        return
    with _LOCK:
        if _DONE.is_set():
            return
        for name in HEAVY_MODULES:
            importlib.import_module(name)
        _DONE.set()
