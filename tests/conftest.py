"""Fixtures shared by the test modules.

The plain helpers and constants they are built on (tiny models, hook counters, app paths,
registry entries) are in ``helpers.py``; the throwaway HTTP server is in ``localhttp.py``.
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from helpers import demo_or_tiny_checkpoints, save_tiny_checkpoints
from localhttp import local_server, routes_handler

from simam_viz.weights.registry import load_registry

# ---- checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoints folder with three untrained tiny demo models (``demo/<arch>``), classes
    ``helpers.CLASSES``, 64 px: what the app tests serve. One folder per test module."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="module")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped demo models, or the tiny ones where they are absent: what the
    browser tests start a server on."""
    return demo_or_tiny_checkpoints(tmp_path_factory.mktemp("demo_checkpoints"))


# ---- a checkpoint registry --------------------------------------------------------------------


@pytest.fixture
def use_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``use_registry(*entries)`` writes a registry file of those entries (dicts, see
    ``helpers.registry_entry``), points ``SIMAM_VIZ_REGISTRY`` at it and returns its path."""

    def write(*entries: dict) -> Path:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"format": "simam-viz-registry", "version": 1,
                                    "entries": list(entries)}), encoding="utf-8")
        monkeypatch.setenv("SIMAM_VIZ_REGISTRY", str(path))
        assert set(load_registry()) == {e["name"] for e in entries}  # valid, and the one used
        return path

    return write


# ---- a local HTTP server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_routes() -> Mapping[str, bytes]:
    """What ``http_server`` answers: path -> body. A module overrides this fixture (or
    ``http_handler``) with its own routes; every other path is a 404."""
    return {}


@pytest.fixture(scope="module")
def http_handler(http_routes: Mapping[str, bytes]) -> type[http.server.BaseHTTPRequestHandler]:
    return routes_handler(http_routes)


@pytest.fixture(scope="module")
def http_server(http_handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` answering with ``http_handler``, for the whole module."""
    with local_server(http_handler) as url:
        yield url


@pytest.fixture(autouse=True)
def _library_logging_unconfigured():
    """Each test starts with the ``simam_viz`` logger as a user's program finds it.

    The app and the CLI install a stderr handler (``simam_viz.logs.setup_logging``); left in
    place, it would make later tests' library records appear on their captured stderr.
    """
    import logging

    yield
    logger = logging.getLogger("simam_viz")
    for handler in list(logger.handlers):
        if getattr(handler, "_simam_viz_handler", False):
            logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


# ---- the app's shared service ---------------------------------------------------------------


@pytest.fixture()
def tiny_app(tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh AppTest session of the page on the tiny models, the shared caches emptied."""
    from helpers import run_page

    from simam_viz.serving.service import shared_service

    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tiny_checkpoints))
    for cache in shared_service().caches.values():
        cache.clear()
    at = run_page()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


@pytest.fixture()
def service_work(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Keys of model work that really ran through the shared service (cache hits do not)."""
    from simam_viz.serving.service import shared_service

    service = shared_service()
    ran: list[object] = []
    original = service._run

    def counted(key, fn, what, *args):
        ran.append(key)
        return original(key, fn, what, *args)

    monkeypatch.setattr(service, "_run", counted)
    return ran
