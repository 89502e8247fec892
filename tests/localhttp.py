"""A throwaway HTTP server on 127.0.0.1 for download tests (tests never reach the internet)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from harness.apphost import free_port


@contextmanager
def local_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` served by ``handler`` in a thread for the block's duration."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (a download there fails like being offline)."""
    return free_port()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log)."""

    def log_message(self, *args) -> None:
        pass


def routes_handler(routes: Mapping[str, bytes | tuple[int, bytes]]) -> type[QuietHandler]:
    """A handler answering GET ``path`` with ``routes[path]`` (a body, or (status, body)),
    and 404 for any other path. The paths asked for are kept in its ``requested`` list."""

    class Handler(QuietHandler):
        requested: list[str] = []

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            type(self).requested.append(self.path)
            answer = routes.get(self.path)
            if answer is None:
                self.send_error(404)
                return
            status, body = answer if isinstance(answer, tuple) else (200, answer)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
