"""A cap on the uploaded files one browser session holds in the server's memory.

Streamlit keeps every file PUT to ``/_stcore/upload_file/{session}/{file_id}`` in memory until
the uploader deletes it or the session ends, with no limit per session: a script can PUT
hundreds of 10 MB files into one session and exhaust the replica. The page's uploader takes
one file and deletes the old one when a new one is chosen, so a person never holds more than
one or two. This ASGI middleware (installed by ``serve.py`` through ``st.App``) answers a PUT
beyond ``MAX_FILES`` held files with 429, remembers why, and asks the session to rerun so the
page says it in words (the uploader itself shows only the status code).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["MAX_FILES", "UploadCap", "refusal_for"]

LOG = logging.getLogger("simam_viz.app")
MAX_FILES = int(os.environ.get("SIMAM_VIZ_MAX_UPLOADS", "3"))
REFUSED = ("Upload refused: this page already holds {n} uploaded files on the server. "
           "Remove one from the uploader (×), then upload again.")
_MARKER = "/_stcore/upload_file/"
_lock = threading.Lock()
_refused: OrderedDict[str, str] = OrderedDict()  # session id -> message, bounded


def refusal_for(session_id: str | None) -> str | None:
    """The message of an upload refused in this session since the page last asked, if any."""
    if session_id is None:
        return None
    with _lock:
        return _refused.pop(session_id, None)


def _held_files(session_id: str) -> dict[str, Any]:
    from streamlit.runtime import Runtime

    manager = Runtime.instance().uploaded_file_mgr
    return dict(getattr(manager, "file_storage", {}).get(session_id, {}))


def _rerun(session_id: str) -> None:
    """Ask the session's page to run again, so it shows the refusal (best effort)."""
    from streamlit.runtime import Runtime

    try:
        info = Runtime.instance()._session_mgr.get_active_session_info(session_id)
        if info is not None:
            info.session.request_rerun(None)
    except Exception:  # an internal API: if it moves, the message waits for the next run
        LOG.debug("could not ask session %s to rerun", session_id, exc_info=True)


class UploadCap:
    """Pure ASGI middleware: at most ``max_files`` uploaded files held per session."""

    def __init__(self, app: Any, max_files: int | None = None) -> None:
        self.app = app
        self.max_files = max_files or MAX_FILES

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if scope.get("method") == "PUT" and _MARKER in path:
            session_id, _, file_id = path.split(_MARKER, 1)[1].partition("/")
            try:
                held = _held_files(session_id)
            except Exception:  # no runtime (tests of the bare app): let Streamlit decide
                held = {}
            if file_id not in held and len(held) >= self.max_files:
                message = REFUSED.format(n=len(held))
                LOG.warning("upload refused: session %s already holds %d files",
                            session_id[:8], len(held))
                with _lock:
                    _refused[session_id] = message
                    while len(_refused) > 1024:
                        _refused.popitem(last=False)
                _rerun(session_id)
                await _plain(send, 429, message)
                return
        await self.app(scope, receive, send)


async def _plain(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"5")]})
    await send({"type": "http.response.body", "body": body})
