"""The compose proxy itself: deploy/proxy/nginx.conf run by nginx, with the files its entrypoint
writes, in front of fake replicas on loopback addresses (127.0.0.2, 127.0.0.3, ...).

What a public demo needs from it: new browsers go only to warm replicas (the entrypoint asks
their /readyz) while pinned browsers keep theirs; no internal address in any answer unless
PROXY_DEBUG_UPSTREAM=1; the affinity cookie is Secure exactly when the browser came over TLS
(a trusted front's X-Forwarded-Proto, never a client's own); per-address limits answer 429;
the replicas' /metrics stays inside. Skipped where nginx is not installed (`make deploy-smoke`
runs the same nginx in its container against real replicas).
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ROOT
from localhttp import QuietHandler, closed_port

PROXY = ROOT / "deploy" / "proxy"
NGINX_BIN = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
MIME_TYPES = Path("/etc/nginx/mime.types")
pytestmark = pytest.mark.skipif(NGINX_BIN is None or not MIME_TYPES.exists(),
                                reason="needs nginx (apt-get install nginx)")
COOKIE = "simam_viz_affinity"
HEADER = "X-Simam-Viz-Upstream"


class Replica:
    """A fake replica on ADDRESS:PORT: every answer names it; /readyz answers 200 when warm,
    503 otherwise; /slow takes a second. It keeps (method, path, headers) of each request."""

    def __init__(self, address: str, port: int, *, warm: bool) -> None:
        replica = self
        self.address = address
        self.seen: list[tuple[str, str, dict[str, str]]] = []

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                replica.seen.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = 200, f"replica {address}".encode()
                if self.path == "/readyz":
                    status, body = (200, b"ready") if warm else (503, b"warming up")
                elif self.path == "/slow":
                    time.sleep(1.0)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_DELETE = answer  # noqa: N815 - http.server API

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def replicas(*warm: bool) -> Iterator[tuple[int, list[Replica]]]:
    """Fake replicas on 127.0.0.2, 127.0.0.3, ... (one port, as compose's replicas)."""
    port = closed_port()
    started = [Replica(f"127.0.0.{2 + i}", port, warm=w) for i, w in enumerate(warm)]
    try:
        yield port, started
    finally:
        for r in started:
            r.close()


@contextmanager
def proxy(tmp_path: Path, port: int, addresses: list[str], **env: str) -> Iterator[int]:
    """nginx with the repository's nginx.conf, the generated files written by the
    entrypoint's own functions (readiness asked of the replicas), on a loopback port."""
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    full = {k: v for k, v in os.environ.items()
            if k not in ("PROXY_DEBUG_UPSTREAM", "PROXY_TRUSTED_FRONTS")}
    full.update(PROXY_ENTRYPOINT_LIB="1", PROXY_CONFIG_DIR=str(conf_dir),
                UPSTREAM=f"app:{port}", **env)
    script = (f'. "{PROXY / "proxy-entrypoint.sh"}"\nwrite_settings\n'
              f'ready=$(ready_among "{" ".join(addresses)}" "")\n'
              f'write_config "{" ".join(addresses)}" "$ready"\n')
    done = subprocess.run(["sh", "-c", script], env=full, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    listen = closed_port()
    conf = (PROXY / "nginx.conf").read_text().replace("/tmp/nginx", str(conf_dir))
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    assert f"127.0.0.1:{listen}" in conf
    (conf_dir / "nginx.conf").write_text(conf)
    log = open(tmp_path / "nginx.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([NGINX_BIN, "-c", str(conf_dir / "nginx.conf"), "-e", "stderr",
                             "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if request(listen, "/proxy-health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "nginx.log").read_text()[-2000:])
            time.sleep(0.05)
        yield listen
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def request(port: int, path: str, method: str = "GET", headers: dict | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def pinned_to(headers: http.client.HTTPMessage) -> str | None:
    """The replica the Set-Cookie of an answer pins the browser to (None: no cookie set)."""
    for value in headers.get_all("Set-Cookie") or []:
        if value.startswith(f"{COOKIE}="):
            return value.split(";", 1)[0].split("=", 1)[1]
    return None


def cookie_attributes(headers: http.client.HTTPMessage) -> list[str]:
    (value,) = [v for v in headers.get_all("Set-Cookie") or [] if v.startswith(f"{COOKIE}=")]
    return [a.strip() for a in value.split(";")[1:]]


def test_new_browsers_go_to_warm_replicas_and_pinned_ones_stay(tmp_path) -> None:
    with replicas(True, False) as (port, (warm, cold)), \
            proxy(tmp_path, port, [warm.address, cold.address]) as listen:
        for _ in range(6):  # round robin over the warm replicas only: always the warm one
            status, headers, body = request(listen, "/")
            assert (status, body) == (200, f"replica {warm.address}")
            assert pinned_to(headers) == f"{warm.address}:{port}"
            assert HEADER not in headers  # no internal address, by default
            assert "Secure" not in cookie_attributes(headers)  # plain HTTP
            assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(cookie_attributes(headers))
        # a browser pinned to the cold replica (it was the only one, or it restarted) stays
        status, headers, body = request(
            listen, "/", headers={"Cookie": f"{COOKIE}={cold.address}:{port}"})
        assert body == f"replica {cold.address}" and pinned_to(headers) is None
        # a cookie naming anything else is not followed: round robin, and re-pinned
        status, headers, body = request(listen, "/", headers={"Cookie": f"{COOKIE}=10.9.9.9:80"})
        assert body == f"replica {warm.address}"
        assert pinned_to(headers) == f"{warm.address}:{port}"
        # the entrypoint asked each replica once for /readyz; the cold one got one browser
        assert [p for _, p, _ in warm.seen].count("/readyz") == 1
        assert [p for _, p, _ in cold.seen] == ["/readyz", "/"]
        # the replicas' metrics are for the scraper, not for visitors
        assert request(listen, "/metrics")[0] == 404
        assert not [p for r in (warm, cold) for _, p, _ in r.seen if p == "/metrics"]


def test_debug_header_names_the_replica_only_on_request(tmp_path) -> None:
    with replicas(True) as (port, (warm,)), \
            proxy(tmp_path, port, [warm.address], PROXY_DEBUG_UPSTREAM="1") as listen:
        status, headers, _ = request(listen, "/")
        assert status == 200 and headers[HEADER] == f"{warm.address}:{port}"


def test_cookie_is_secure_when_a_trusted_front_says_https(tmp_path) -> None:
    https = {"X-Forwarded-Proto": "https"}
    with replicas(True) as (port, (warm,)):
        # no trusted front: a client cannot claim TLS (nor another address)
        with proxy(tmp_path / "a", port, [warm.address]) as listen:
            _, headers, _ = request(listen, "/", headers={**https,
                                                          "X-Forwarded-For": "203.0.113.9"})
            assert "Secure" not in cookie_attributes(headers)
            sent = warm.seen[-1][2]
            assert sent["X-Forwarded-Proto"] == "http" and sent["X-Real-IP"] == "127.0.0.1"
        # the front at 127.0.0.1 is trusted: its word counts, for TLS and the client address
        with proxy(tmp_path / "b", port, [warm.address],
                   PROXY_TRUSTED_FRONTS="127.0.0.1/32") as listen:
            _, headers, _ = request(listen, "/", headers={**https,
                                                          "X-Forwarded-For": "203.0.113.9"})
            assert "Secure" in cookie_attributes(headers)
            sent = warm.seen[-1][2]
            assert sent["X-Forwarded-Proto"] == "https" and sent["X-Real-IP"] == "203.0.113.9"
            for proto in ("http", "HTTPS, http", None):
                extra = {"X-Forwarded-Proto": proto} if proto else {}
                _, headers, _ = request(listen, "/", headers=extra)
                assert ("Secure" in cookie_attributes(headers)) == (proto == "HTTPS, http")


def test_limits_per_client_address_answer_429(tmp_path) -> None:
    with replicas(True) as (port, (warm,)), \
            proxy(tmp_path, port, [warm.address], PROXY_TRUSTED_FRONTS="127.0.0.1") as listen:
        def client(address: str) -> dict:
            return {"X-Forwarded-For": address}

        # uploads: a burst of 20 passes, then 429 (10 a second)
        puts = [request(listen, f"/_stcore/upload_file/s/f{i}", "PUT", client("203.0.113.1"),
                        b"x" * 100)[0] for i in range(40)]
        assert puts[:20] == [200] * 20 and puts.count(429) >= 10, puts
        # a cold page load's ~100 static files from one address: all pass
        static = [request(listen, f"/static/js/{i}.js", headers=client("203.0.113.2"))[0]
                  for i in range(300)]
        assert static == [200] * 300
        # everything else: a generous burst, then 429
        other = [request(listen, f"/media/{i}.png", headers=client("203.0.113.3"))[0]
                 for i in range(320)]
        assert other[:200] == [200] * 200 and 429 in other
        # per address: another client is not affected
        assert request(listen, "/", headers=client("203.0.113.4"))[0] == 200
        # requests in progress (websockets, slow answers): 64 at once, the rest 429
        with ThreadPoolExecutor(80) as pool:
            slow = list(pool.map(lambda _: request(listen, "/slow",
                                                   headers=client("203.0.113.5"))[0],
                                 range(80)))
        assert slow.count(200) <= 64 and slow.count(429) >= 12, slow
        assert set(slow) <= {200, 429}
