"""The app's fetch panel (``app/fetch_panel.py``) with Streamlit's AppTest.

The registry is a temporary file named by ``SIMAM_VIZ_REGISTRY`` whose URLs point at a local
HTTP server on 127.0.0.1 (or at a closed port there), so nothing leaves the machine. Every
failure must leave the checkpoints folder untouched and show one error line, and no page may
show a server path (the folder is "the checkpoints folder").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
from pathlib import Path

import pytest
from helpers import APP_DIR, file_names, registry_entry
from localhttp import closed_port

from simam_viz.errors import BusyError
from simam_viz.weights import fetch as fetch_module

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


@pytest.fixture(autouse=True)
def _no_earlier_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without another test's failed fetch cooling down."""
    monkeypatch.setattr(fetch_module, "_FAILURES", {})


def _app(folder: Path, *, closed_only: bool = False):
    from streamlit.testing.v1 import AppTest

    script = SCRIPT.format(app_dir=str(APP_DIR), folder=str(folder), closed_only=closed_only)
    at = AppTest.from_string(script, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.label for e in at.expander] == ["Official ImageNet weights"]
    assert [c.value for c in at.caption][:1] == [
        "Files are saved to the checkpoints folder, verified against the published sha256."]
    _assert_no_server_path(at, folder)
    return at


def _page_text(at) -> str:
    """Everything the page holds (every element's protobuf as text): labels, captions,
    messages, progress texts."""
    parts: list[str] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def _assert_no_server_path(at, folder: Path) -> None:
    text = _page_text(at)
    assert "Official ImageNet weights" in text or not at.expander  # the walk sees the page
    for path in {str(folder), str(folder.resolve()), str(folder.parent)}:
        assert path not in text


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
        "Fetched Tiny tiny: saved and verified as tiny.pth in the checkpoints folder."]
    _assert_no_server_path(at, folder)
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
    _assert_no_server_path(at, folder)
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


def test_offline_names_the_url_and_the_folder_not_its_path(
    tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/tiny.pth"
    use_registry(_entry("tiny", url))
    folder = tmp_path / "ckpts"
    at, error = _failed_fetch(folder, caplog)
    assert "by hand and save it as tiny.pth in" in _page_text(at)  # the walk sees the error
    assert "cannot reach the server" in error
    assert f"download {url} by hand and save it as tiny.pth in the checkpoints folder" in error
    assert file_names(folder) == []


def test_read_only_folder_is_one_line_without_paths(
    tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Docker image and the Kubernetes mount keep the folder read-only: say that, not
    mkstemp's error with its path. (Tests run as root, where chmod cannot make a folder
    read-only, so the refusal is the kernel's, raised where the temporary file is made.)"""
    def read_only(folder: Path, entry) -> Path:
        raise OSError(errno.EROFS, "Read-only file system", str(folder / ".tiny.pth.x.part"))

    monkeypatch.setattr(fetch_module, "_temp_path", read_only)
    use_registry(_entry("tiny", f"http://127.0.0.1:{closed_port()}/tiny.pth"))
    folder = tmp_path / "ckpts"
    _, error = _failed_fetch(folder, caplog)
    assert error == ("tiny: the checkpoints folder is read-only on this server; an operator "
                     "can add tiny.pth to it (`simam-viz fetch tiny`)")
    assert file_names(folder) == []


def test_busy_server_is_one_line_and_not_a_failure(
    http_server: str, tmp_path: Path, use_registry, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetch takes one of the server's admission slots; none free is "busy, retry", and
    the next click downloads (a busy server is not the upstream's failure: no cooldown)."""
    from simam_viz.serving.service import shared_service

    asked: list[tuple[str, object]] = []

    @contextlib.contextmanager
    def busy(what: str, session=None):
        asked.append((what, session))
        raise BusyError("the server is busy with other analyses; please retry in a moment")
        yield  # pragma: no cover

    use_registry(_entry("tiny", f"{http_server}/tiny.pth"))
    folder = tmp_path / "ckpts"
    with monkeypatch.context() as patch:
        patch.setattr(shared_service(), "admit", busy)
        at, error = _failed_fetch(folder, caplog)
    assert error == "the server is busy with other analyses; please retry in a moment"
    assert [what for what, _ in asked] == ["fetch"] and file_names(folder) == []

    at.button(key="fetch_tiny").click().run()  # the real admission control: a slot is free
    assert not at.error and file_names(folder) == ["tiny.pth"]


@pytest.mark.parametrize(("value", "shown"), [("0", False), ("1", True), (None, True)])
def test_public_switch_hides_the_whole_panel(
    http_server: str, tmp_path: Path, use_registry, monkeypatch: pytest.MonkeyPatch,
    value: str | None, shown: bool,
) -> None:
    """SIMAM_VIZ_FETCH=0: no expander, no title, no button; the app calls the panel anyway."""
    from streamlit.testing.v1 import AppTest

    if value is None:
        monkeypatch.delenv("SIMAM_VIZ_FETCH", raising=False)
    else:
        monkeypatch.setenv("SIMAM_VIZ_FETCH", value)
    use_registry(_entry("tiny", f"{http_server}/tiny.pth"))
    script = SCRIPT.format(app_dir=str(APP_DIR), folder=str(tmp_path), closed_only=False)
    at = AppTest.from_string(script, default_timeout=60)
    at.run()
    assert not at.exception
    assert bool(at.expander) is shown and bool(at.button) is shown
    assert ("Official ImageNet weights" in _page_text(at)) is shown
    if not shown:
        assert not at.caption and not at.markdown and not at.error


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


def test_unreadable_registry_is_one_line_without_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SIMAM_VIZ_REGISTRY", str(tmp_path / "missing" / "registry.json"))
    with caplog.at_level(logging.ERROR, logger="simam_viz.app"):
        at = _app(tmp_path / "ckpts")  # no path anywhere on the page, checked there
    assert [e.value for e in at.error] == [
        "The checkpoint registry cannot be read; the server log says why."]
    assert any("cannot read checkpoint registry" in str(r.exc_info[1]) for r in caplog.records
               if r.exc_info)
