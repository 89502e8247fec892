"""The app's fetch panel (``app/fetch_panel.py``) with Streamlit's AppTest.

The registry is a temporary file named by ``SIMAM_VIZ_REGISTRY`` whose URLs point at a local
HTTP server on 127.0.0.1 (or at a closed port there), so nothing leaves the machine. Every
failure must leave the checkpoints folder untouched and show one error line.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
from pathlib import Path

import pytest
from localhttp import closed_port, local_server

from simam_viz.registry import load_registry

APP_DIR = Path(__file__).resolve().parents[1] / "app"
PAYLOAD = bytes(range(256)) * (3 * 4096)  # 3 MiB: several chunks, so progress is reported
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ROUTES = {"/tiny.pth": PAYLOAD, "/wrong.pth": b"not the published weights" * 1000}
PREP = {"resize": 256, "crop": 224, "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    with local_server(_Handler) as url:
        yield url



def _entry(name: str, url: str, **extra) -> dict:
    return {"name": name, "title": f"Tiny {name}", "arch": "resnet50",
            "resnet_variant": "v1.5", "filename": f"{name}.pth", "source": "http",
            "urls": [url], "sha256": DIGEST, "sha256_prefix": None, "preprocessing": PREP,
            "simam_lambda": None, "top1": 70.5, "licence": "MIT", "redistributable": True,
            "notes": "", **extra}


@pytest.fixture
def use_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a registry of the given entries and point ``SIMAM_VIZ_REGISTRY`` at it."""

    def write(*entries: dict) -> Path:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"format": "simam-viz-registry", "version": 1,
                                    "entries": list(entries)}), encoding="utf-8")
        monkeypatch.setenv("SIMAM_VIZ_REGISTRY", str(path))
        assert set(load_registry()) == {e["name"] for e in entries}  # valid entries
        return path

    return write


SCRIPT = """
import sys
from pathlib import Path

import streamlit as st

if {app_dir!r} not in sys.path:
    sys.path.insert(0, {app_dir!r})
from fetch_panel import fetch_panel

st.session_state.setdefault("fetched", 0)


def on_fetched():
    st.session_state["fetched"] += 1


fetch_panel(Path({folder!r}), on_fetched=on_fetched, redistributable_only={closed_only!r})
"""


def _app(folder: Path, *, closed_only: bool = False):
    from streamlit.testing.v1 import AppTest

    script = SCRIPT.format(app_dir=str(APP_DIR), folder=str(folder), closed_only=closed_only)
    at = AppTest.from_string(script, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.label for e in at.expander] == ["Official ImageNet weights"]
    assert any(str(folder) in c.value for c in at.caption)  # where files go
    return at


def _buttons(at) -> list[str]:
    return [b.key for b in at.button]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_success_shows_the_file_and_drops_the_entry(
    server: str, tmp_path: Path, use_registry
) -> None:
    use_registry(_entry("tiny", f"{server}/tiny.pth"),
                 _entry("other", f"{server}/tiny.pth", licence="Apache-2.0", size_mb=97.8))
    folder = tmp_path / "ckpts"
    at = _app(folder)
    assert _buttons(at) == ["fetch_tiny", "fetch_other"]
    rows = [m.value for m in at.markdown]
    assert any("Tiny tiny" in r and "top-1 70.50%" in r and "licence: MIT" in r for r in rows)
    assert any("Apache-2.0" in r and "≈ 98 MB" in r for r in rows)

    at.button(key="fetch_tiny").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (folder / "tiny.pth").read_bytes() == PAYLOAD
    assert _files(folder) == ["tiny.pth"]  # no .part temp file left behind
    assert [s.value for s in at.success] == [
        f"Fetched Tiny tiny: saved and verified as {folder / 'tiny.pth'}."]
    assert at.session_state["fetched"] == 1  # the app's cache was told, once
    assert _buttons(at) == ["fetch_other"]  # the rerun already lists it as present

    at.run()  # and it stays gone; the one-off success message does not repeat
    assert _buttons(at) == ["fetch_other"] and not at.success and not at.exception


def test_all_present_is_one_line(server: str, tmp_path: Path, use_registry) -> None:
    use_registry(_entry("tiny", f"{server}/tiny.pth"))
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "tiny.pth").write_bytes(PAYLOAD)
    at = _app(folder)
    assert not at.button and not at.error
    assert [m.value for m in at.markdown] == [
        "All 1 registered checkpoints are already in the folder."]


def _failed_fetch(folder: Path, caplog: pytest.LogCaptureFixture):
    """Click Fetch on the one entry; the page must show exactly one one-line error and the
    server log its traceback. Returns the app and that line."""
    at = _app(folder)
    with caplog.at_level(logging.ERROR, logger="simam_viz.app"):
        at.button(key="fetch_tiny").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert any(r.name == "simam_viz.app" and r.exc_info for r in caplog.records)
    return at, errors[0]


def test_hash_mismatch_is_one_error_and_writes_nothing(
    server: str, tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture
) -> None:
    use_registry(_entry("tiny", f"{server}/wrong.pth"))
    folder = tmp_path / "ckpts"
    at, error = _failed_fetch(folder, caplog)
    assert "sha256 mismatch" in error
    assert _files(folder) == []
    assert at.session_state["fetched"] == 0 and _buttons(at) == ["fetch_tiny"]


def test_offline_names_the_url_and_the_folder(
    tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/tiny.pth"
    use_registry(_entry("tiny", url))
    folder = tmp_path / "ckpts"
    _, error = _failed_fetch(folder, caplog)
    assert "cannot reach the server" in error
    assert f"download {url} by hand and save it as {folder / 'tiny.pth'}" in error
    assert _files(folder) == []


def test_redistributable_only_gives_the_reason_instead_of_a_button(
    server: str, tmp_path: Path, use_registry
) -> None:
    use_registry(_entry("tiny", f"{server}/tiny.pth"),
                 _entry("closed", f"{server}/tiny.pth", redistributable=False,
                        licence="none published"))
    at = _app(tmp_path / "ckpts", closed_only=True)
    assert _buttons(at) == ["fetch_tiny"]
    assert any("'closed' may not be redistributed" in c.value for c in at.caption)
    assert any("not redistributable" in m.value for m in at.markdown)
    assert _buttons(_app(tmp_path / "ckpts")) == ["fetch_tiny", "fetch_closed"]  # default
