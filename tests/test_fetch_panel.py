"""The app's fetch panel (``app/fetch_panel.py``) with Streamlit's AppTest.

The registry is a temporary file named by ``SIMAM_VIZ_REGISTRY`` whose URLs point at a local
HTTP server on 127.0.0.1 (or at a closed port there), so nothing leaves the machine. Every
failure must leave the checkpoints folder untouched and show one error line.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from helpers import APP_DIR, file_names, registry_entry
from localhttp import closed_port

PAYLOAD = bytes(range(256)) * (3 * 4096)  # 3 MiB: several chunks, so progress is reported
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def http_routes() -> dict[str, bytes]:
    return {"/tiny.pth": PAYLOAD, "/wrong.pth": b"not the published weights" * 1000}


def _entry(name: str, url: str, **extra) -> dict:
    return registry_entry(name, f"{name}.pth", url, **{
        "title": f"Tiny {name}", "sha256": DIGEST, "top1": 70.5, **extra})


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


def test_fetch_success_shows_the_file_and_drops_the_entry(
    http_server: str, tmp_path: Path, use_registry
) -> None:
    use_registry(_entry("tiny", f"{http_server}/tiny.pth"),
                 _entry("other", f"{http_server}/tiny.pth", licence="Apache-2.0", size_mb=97.8))
    folder = tmp_path / "ckpts"
    at = _app(folder)
    assert _buttons(at) == ["fetch_tiny", "fetch_other"]
    rows = [m.value for m in at.markdown]
    assert any("Tiny tiny" in r and "top-1 70.50%" in r and "licence: MIT" in r for r in rows)
    assert any("Apache-2.0" in r and "≈ 98 MB" in r for r in rows)

    at.button(key="fetch_tiny").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (folder / "tiny.pth").read_bytes() == PAYLOAD
    assert file_names(folder) == ["tiny.pth"]  # no .part temp file left behind
    assert [s.value for s in at.success] == [
        f"Fetched Tiny tiny: saved and verified as {folder / 'tiny.pth'}."]
    assert at.session_state["fetched"] == 1  # the app's cache was told, once
    assert _buttons(at) == ["fetch_other"]  # the rerun already lists it as present

    at.run()  # and it stays gone; the one-off success message does not repeat
    assert _buttons(at) == ["fetch_other"] and not at.success and not at.exception


def test_all_present_is_one_line(http_server: str, tmp_path: Path, use_registry) -> None:
    use_registry(_entry("tiny", f"{http_server}/tiny.pth"))
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
    http_server: str, tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture
) -> None:
    use_registry(_entry("tiny", f"{http_server}/wrong.pth"))
    folder = tmp_path / "ckpts"
    at, error = _failed_fetch(folder, caplog)
    assert "sha256 mismatch" in error
    assert file_names(folder) == []
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
    assert file_names(folder) == []


def test_redistributable_only_gives_the_reason_instead_of_a_button(
    http_server: str, tmp_path: Path, use_registry
) -> None:
    use_registry(_entry("tiny", f"{http_server}/tiny.pth"),
                 _entry("closed", f"{http_server}/tiny.pth", redistributable=False,
                        licence="none published"))
    at = _app(tmp_path / "ckpts", closed_only=True)
    assert _buttons(at) == ["fetch_tiny"]
    assert any("'closed' may not be redistributed" in c.value for c in at.caption)
    assert any("not redistributable" in m.value for m in at.markdown)
    assert _buttons(_app(tmp_path / "ckpts")) == ["fetch_tiny", "fetch_closed"]  # default
