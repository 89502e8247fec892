"""Where the files that ship with simam-viz live: registry, demo models, the app.

In a source checkout they are the repository's top-level ``checkpoints/`` and ``app/``
folders. A wheel carries copies of them inside the package (``simam_viz/_bundle/``, written by
``setup.py`` at build time) and they are read with :mod:`importlib.resources`, so an installed
``simam-viz`` finds its registry and demo models from any working directory.

Weights a user fetches go elsewhere: ``$SIMAM_VIZ_CHECKPOINTS`` when set; in a source checkout
the repository's ``checkpoints/`` (what ``make run`` and the Docker image have always used);
otherwise a per-user data folder, since an installed package's own folder may not be writable
and is replaced on every upgrade.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path

__all__ = [
    "BUNDLED",
    "bundled",
    "bundled_app",
    "bundled_checkpoints",
    "is_source_checkout",
    "streamlit_config",
    "user_checkpoints_dir",
]

_SOURCE_ROOT = Path(__file__).resolve().parents[1]

BUNDLED: dict[str, str] = {"checkpoints": "checkpoints", "app": "app", "streamlit": ".streamlit"}
"""What a wheel carries in ``simam_viz/_bundle/<name>``: name -> the checkout's folder.

``setup.py`` copies these at build time; :func:`bundled` finds them at run time.
"""


def bundled(name: str) -> Path:
    """The shipped folder ``name`` (a key of :data:`BUNDLED`).

    The packaged copy wins when present (an installed wheel); otherwise the source checkout's
    folder. Wheels install as plain files, so the resource is a real path on disk.
    """
    packaged = files("simam_viz") / "_bundle" / name
    if packaged.is_dir():
        return Path(str(packaged))
    return _SOURCE_ROOT / BUNDLED[name]


def bundled_checkpoints() -> Path:
    """The shipped ``checkpoints/`` folder: ``registry.json`` and the ``demo/`` models."""
    return bundled("checkpoints")


def bundled_app() -> Path:
    """The shipped Streamlit app folder (``serve.py``, ``streamlit_app.py``, examples)."""
    return bundled("app")


def streamlit_config() -> Path:
    """The app's Streamlit settings (``.streamlit/config.toml`` in a checkout).

    Streamlit reads that file only from the working directory, so ``simam-viz app`` passes
    its settings as command-line flags instead: the app behaves the same from any folder.
    """
    return bundled("streamlit") / "config.toml"


def is_source_checkout() -> bool:
    """True when running from the repository (editable install or ``PYTHONPATH``)."""
    return not (files("simam_viz") / "_bundle").is_dir() and (
        _SOURCE_ROOT / "checkpoints" / "registry.json"
    ).is_file()


def user_checkpoints_dir() -> Path:
    """The per-user folder for fetched weights, following each platform's convention.

    ``$XDG_DATA_HOME/simam-viz/checkpoints`` (default ``~/.local/share``) on Linux,
    ``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows.
    """
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "simam-viz" / "checkpoints"
