"""The deployment's promises, checked without an engine (`make deploy-smoke` runs them).

Replicas only work behind a proxy with session affinity (a Streamlit session's websocket,
uploads and media files live in one process), with the same cookie secret everywhere, liveness
on Streamlit's health endpoint and readiness on the app's /readyz (warm), and hardened,
bounded containers. A public demo also needs per-client limits at the proxy, no internal
addresses in answers, a Secure cookie over TLS, no download panel, replicas spread over nodes
with a disruption budget, and a GPU autoscaler that sees GPU load. These tests read
deploy/compose.yaml, the proxy's nginx.conf, entrypoint and Dockerfile, and the Kubernetes
manifests (schema-validated when kubernetes-validate is installed), and check that CI runs the
deploy smoke test. tests/test_proxy.py runs the proxy's nginx itself, where nginx is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from helpers import ROOT

yaml = pytest.importorskip("yaml", reason="needs PyYAML")

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
NGINX = (DEPLOY / "proxy" / "nginx.conf").read_text()
HEALTH = "/_stcore/health"
READY = "/readyz"
FETCH_VAR = "SIMAM_VIZ_FETCH"  # "0": no checkpoint-download panel (public deployments)
UPSTREAM_HEADER = "X-Simam-Viz-Upstream"
SECRET_VAR = "STREAMLIT_SERVER_COOKIE_SECRET"
CHECKPOINTS = "/app/checkpoints/official"  # where the app looks for official weights


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _nginx_directives(text: str) -> list[str]:
    """Directives with comments dropped and whitespace collapsed."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [" ".join(d.split()) for d in re.split(r"[;{}]", body) if d.strip()]


def _strategic_merge(base, patch):
    """Enough of kustomize's strategic merge for our patches: maps merge, lists of named
    items (containers, env, volumes) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _strategic_merge(base[key], value) if key in base else value
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [dict(x) for x in base]
        for item in patch:
            at = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = _strategic_merge(out[at], item)
        return out
    return copy.deepcopy(patch)


def _deployment() -> dict:
    return _load(K8S / "deployment.yaml")


def _gpu_deployment() -> dict:
    kust = _load(K8S / "gpu" / "kustomization.yaml")
    merged = _deployment()
    for patch in kust["patches"]:
        doc = _load(K8S / "gpu" / patch["path"])
        if doc["kind"] == "Deployment":
            merged = _strategic_merge(merged, doc)
    return merged


def _app_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _gpu_hpa() -> dict:
    return _strategic_merge(_load(K8S / "hpa.yaml"), _load(K8S / "gpu" / "hpa-gpu.yaml"))


# --- compose -------------------------------------------------------------------------------

def test_compose_replicas_share_secret_health_restart_and_weights() -> None:
    compose = _load(DEPLOY / "compose.yaml")
    app = compose["services"]["app"]
    # one service scaled to N replicas: every replica gets this same environment
    secret = app["environment"][SECRET_VAR]
    assert secret.startswith("${") and ":?" in secret  # required, one value, not baked in
    # healthy = warm: the proxy's `depends_on: service_healthy` waits for the warm-up
    assert READY in " ".join(app["healthcheck"]["test"])
    assert app["restart"] in ("always", "unless-stopped")
    assert app.get("init") is True
    assert "ports" not in app  # replicas publish nothing, so `--scale app=N` cannot collide
    (weights,) = app["volumes"]
    assert weights.endswith(f":{CHECKPOINTS}:ro")
    assert app["read_only"] is True
    assert app["cap_drop"] == ["ALL"]
    proxy = compose["services"]["proxy"]
    assert proxy["depends_on"]["app"]["condition"] == "service_healthy"
    assert proxy["restart"] in ("always", "unless-stopped") and proxy["healthcheck"]["test"]
    assert any(str(p).endswith(":8080") for p in proxy["ports"])
    assert (DEPLOY / proxy["build"] / "Dockerfile").is_file()


def test_compose_builds_the_cpu_image_by_default() -> None:
    args = _load(DEPLOY / "compose.yaml")["services"]["app"]["build"]["args"]
    assert "requirements-cpu.txt" in args["TORCH_REQUIREMENTS"]


def _size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text.lower()).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


@pytest.mark.parametrize("service", ["app", "proxy"])
def test_compose_bounds_tmp_and_processes(service: str) -> None:
    """A visitor cannot fill the host's memory through /tmp nor its process table."""
    svc = _load(DEPLOY / "compose.yaml")["services"][service]
    assert svc["read_only"] is True
    (tmp,) = svc["tmpfs"]
    path, _, options = tmp.partition(":")
    opts = dict(o.partition("=")[::2] for o in options.split(","))
    assert path == "/tmp" and 0 < _size_bytes(opts["size"]) <= 2**30, tmp
    assert opts.get("mode") == "1777"  # the non-root user writes there
    assert 64 <= int(svc["pids_limit"]) <= 4096


def _compose_probe() -> str:
    """The Python code of the app service's healthcheck (``CMD python -c CODE``)."""
    test = _load(DEPLOY / "compose.yaml")["services"]["app"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4, test
    return test[3]


@pytest.mark.parametrize(
    ("routes", "healthy"),
    [
        ({READY: b"ready", HEALTH: b"ok"}, True),
        ({READY: (503, b"warming up"), HEALTH: b"ok"}, False),  # alive, still loading models
        ({READY: (503, b"warm-up failed"), HEALTH: b"ok"}, False),
        ({HEALTH: b"ok"}, False),  # an app without /readyz is not taken as warm
    ],
    ids=["ready", "warming-up", "warm-up-failed", "no-readyz"],
)
def test_compose_healthcheck_is_readiness(routes: dict, healthy: bool) -> None:
    """The probe, run against a local server in place of the replica: healthy exactly when
    /readyz answers 200, so `depends_on: service_healthy` starts the proxy once warm."""
    import subprocess
    import sys

    from localhttp import local_server, routes_handler

    handler = routes_handler(routes)
    with local_server(handler) as url:
        code, count = re.subn(r"127\.0\.0\.1:8501\b", url.split("//", 1)[1], _compose_probe())
        assert count == 1
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert handler.requested == [READY]
    assert probe.returncode == (0 if healthy else 1), probe.stderr.decode()[-300:]


def test_public_mode_hides_the_download_panel_everywhere() -> None:
    """The image, compose and both Kubernetes variants run without the fetch panel."""
    assert re.search(rf"^ENV {FETCH_VAR}=0$", (ROOT / "Dockerfile").read_text(), re.M)
    env = _load(DEPLOY / "compose.yaml")["services"]["app"]["environment"]
    assert str(env[FETCH_VAR]) == "0"
    for deployment in (_deployment(), _gpu_deployment()):
        values = {e["name"]: e.get("value") for e in _app_container(deployment)["env"]}
        assert values[FETCH_VAR] == "0"


# --- proxy -----------------------------------------------------------------------------------

def test_proxy_upgrades_websockets_with_long_timeouts() -> None:
    d = _nginx_directives(NGINX)
    assert "proxy_http_version 1.1" in d
    assert "proxy_set_header Upgrade $http_upgrade" in d
    assert "proxy_set_header Connection $connection_upgrade" in d
    assert "map $http_upgrade $connection_upgrade" in d
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = [x.split()[1] for x in d if x.startswith(name + " ")]
        assert int(value.rstrip("s")) >= 3600, (name, value)


def test_proxy_affinity_is_by_cookie_over_all_replicas() -> None:
    d = _nginx_directives(NGINX)
    assert not any(x.startswith("ip_hash") for x in d)  # one NAT'd address = one replica
    (upstream,) = [x for x in d if x.startswith("upstream ")]
    group = upstream.split()[1]
    # a request goes to the replica its cookie names, if that is a current replica (the map
    # lists exactly those), else to the round-robin group
    (route,) = [x for x in d if x.startswith("map $cookie_")]
    cookie, backend = route.split()[1:3]
    assert f"proxy_pass http://{backend}" in d
    i = d.index(route)
    assert f"default {group}" in d[i + 1:i + 3] and "include /tmp/nginx/replicas.map" in d
    assert "include /tmp/nginx/upstream-servers.conf" in d  # the group: every replica
    assert "include /tmp/nginx/pinned.conf" in d  # one group per replica (written at start)
    assert "zone" in " ".join(d)  # failure state shared by the workers
    # the browser is (re)pinned to the replica that answered
    name = cookie[len("$cookie_"):]
    (set_cookie,) = [x for x in d if x.startswith("add_header Set-Cookie ")]
    assert f"{name}=$simam_viz_replica" in NGINX and set_cookie.split()[2].startswith("$")
    # a pinned replica that does not answer is passed over within the group (its backups),
    # soon: a vanished host drops packets, and every request of its pages waits this long once
    assert "proxy_next_upstream error timeout" in d
    (connect,) = [x.split()[1] for x in d if x.startswith("proxy_connect_timeout ")]
    assert int(connect.rstrip("s")) <= 2


def test_proxy_follows_the_replicas_dns_name() -> None:
    entry = (DEPLOY / "proxy" / "proxy-entrypoint.sh").read_text()
    assert entry.startswith("#!/bin/sh") and "set -eu" in entry
    assert "UPSTREAM=${UPSTREAM:-app:8501}" in entry  # compose's service, podman's alias
    assert "READY_PATH=${READY_PATH:-/readyz}" in entry
    assert "getent ahostsv4" in entry
    assert "nginx -e stderr -s reload" in entry
    dockerfile = (DEPLOY / "proxy" / "Dockerfile").read_text()
    assert 'CMD ["/usr/local/bin/proxy-entrypoint.sh"]' in dockerfile
    assert (DEPLOY / "proxy" / "proxy-entrypoint.sh").stat().st_mode & 0o111  # executable


ENTRYPOINT = DEPLOY / "proxy" / "proxy-entrypoint.sh"


def _entry(tmp_path: Path, script: str, port: int = 8501, **env: str):
    """Run ``script`` in sh after sourcing the entrypoint as a library (its functions only),
    with its generated files going to ``tmp_path``."""
    import os
    import subprocess

    full = {**os.environ, "PROXY_ENTRYPOINT_LIB": "1", "PROXY_CONFIG_DIR": str(tmp_path),
            "UPSTREAM": f"app:{port}", **env}
    for name in ("PROXY_DEBUG_UPSTREAM", "PROXY_TRUSTED_FRONTS"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(["sh", "-c", f'. "{ENTRYPOINT}"\n{script}'], env=full,
                          capture_output=True, text=True, timeout=60)


def _write_config(tmp_path: Path, addresses: str, *ready: str) -> dict[str, str]:
    """Run the entrypoint's own write_config (a POSIX sh function) for these addresses (and
    these ready ones: all when not given)."""
    args = " ".join(f"'{a}'" for a in (addresses, *ready))
    done = _entry(tmp_path, f"write_config {args}")
    assert done.returncode == 0, done.stderr
    return {p.name: p.read_text() for p in tmp_path.iterdir()}


def test_proxy_writes_a_group_per_replica_with_the_others_as_backups(tmp_path) -> None:
    files = _write_config(tmp_path, "10.89.0.2 10.89.0.3 ")
    assert sorted(files) == ["pinned.conf", "replicas.map", "upstream-servers.conf"]
    # the cookie (the replica's address, as $upstream_addr writes it) -> that replica's group
    assert files["replicas.map"].splitlines() == [
        "10.89.0.2:8501 pin_10_89_0_2;", "10.89.0.3:8501 pin_10_89_0_3;"]
    d = _nginx_directives(files["pinned.conf"])
    assert d == [
        "upstream pin_10_89_0_2", "zone pin_10_89_0_2 64k",
        "server 10.89.0.2:8501 max_fails=2 fail_timeout=10s", "server 10.89.0.3:8501 backup",
        "upstream pin_10_89_0_3", "zone pin_10_89_0_3 64k",
        "server 10.89.0.3:8501 max_fails=2 fail_timeout=10s", "server 10.89.0.2:8501 backup"]
    assert _nginx_directives(files["upstream-servers.conf"]) == [
        "server 10.89.0.2:8501 max_fails=2 fail_timeout=10s",
        "server 10.89.0.3:8501 max_fails=2 fail_timeout=10s"]
    # one replica: its group has no backup; no temporary files left behind
    files = _write_config(tmp_path, "10.89.0.7 ")
    assert _nginx_directives(files["pinned.conf"]) == [
        "upstream pin_10_89_0_7", "zone pin_10_89_0_7 64k",
        "server 10.89.0.7:8501 max_fails=2 fail_timeout=10s"]
    assert not [name for name in files if name.endswith(".new")]


def test_proxy_sends_new_browsers_only_to_ready_replicas(tmp_path) -> None:
    files = _write_config(tmp_path, "10.89.0.2 10.89.0.3 10.89.0.4 ", "10.89.0.3")
    # new browsers: the one warm replica
    assert _nginx_directives(files["upstream-servers.conf"]) == [
        "server 10.89.0.3:8501 max_fails=2 fail_timeout=10s"]
    # browsers already pinned keep their replica's group, warm or not; backups are warm ones
    assert len(files["replicas.map"].splitlines()) == 3
    d = _nginx_directives(files["pinned.conf"])
    group = d[d.index("upstream pin_10_89_0_2"):d.index("upstream pin_10_89_0_3")]
    assert group[2:] == ["server 10.89.0.2:8501 max_fails=2 fail_timeout=10s",
                         "server 10.89.0.3:8501 backup"]
    # the warm one's own group: no warm backup, so the others (a cold replica beats none)
    group = d[d.index("upstream pin_10_89_0_3"):d.index("upstream pin_10_89_0_4")]
    assert group[3:] == ["server 10.89.0.2:8501 backup", "server 10.89.0.4:8501 backup"]
    # none warm yet (all starting, or every warm-up failed): all take new browsers
    files = _write_config(tmp_path, "10.89.0.2 10.89.0.3 ", "")
    assert len(_nginx_directives(files["upstream-servers.conf"])) == 2


class _Replica:
    """A fake replica on ADDRESS:PORT answering /readyz with a fixed status."""

    def __init__(self, address: str, port: int, status: int) -> None:
        import http.server
        import threading

        from localhttp import QuietHandler

        replica = self
        self.asked: list[str] = []

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                replica.asked.append(self.path)
                body = b"ready" if status == 200 else b"warming up"
                self.send_response(status if self.path == "/readyz" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_proxy_asks_each_new_replica_for_readiness(tmp_path) -> None:
    """The entrypoint's own readiness check, against fake replicas on loopback addresses:
    200 on /readyz is ready; 503, no answer and nothing listening are not; a replica found
    ready before is not asked again (the app's readiness never goes back)."""
    from localhttp import closed_port

    port = closed_port()
    warm = _Replica("127.0.0.2", port, 200)
    cold = _Replica("127.0.0.3", port, 503)
    try:
        everyone = "127.0.0.2 127.0.0.3 127.0.0.4"  # .4: nothing listens there
        done = _entry(tmp_path, f"ready_among '{everyone}' ''", port)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["127.0.0.2"]
        assert warm.asked == ["/readyz"] and cold.asked == ["/readyz"]
        # ready before and still resolving: kept without asking; gone from DNS: dropped
        done = _entry(tmp_path, "ready_among '127.0.0.3 127.0.0.4' '127.0.0.2 127.0.0.3'",
                      port)
        assert done.stdout.split() == ["127.0.0.3"]
        assert cold.asked == ["/readyz"] and warm.asked == ["/readyz"]
        # nobody to ask: no probe at all
        done = _entry(tmp_path, "ready_among '127.0.0.2' '127.0.0.2'", port)
        assert done.stdout.split() == ["127.0.0.2"] and warm.asked == ["/readyz"]
    finally:
        warm.close()
        cold.close()


def test_proxy_debug_header_and_trusted_fronts_come_from_the_environment(tmp_path) -> None:
    d = _nginx_directives(NGINX)
    # nginx.conf never names the header itself: the entrypoint writes it only on request
    assert not [x for x in d if UPSTREAM_HEADER.lower() in x.lower()]
    assert "include /tmp/nginx/debug-upstream.conf" in d
    done = _entry(tmp_path, "write_settings")
    assert done.returncode == 0, done.stderr
    assert _nginx_directives((tmp_path / "debug-upstream.conf").read_text()) == []
    assert _nginx_directives((tmp_path / "realip.conf").read_text()) == []
    assert _nginx_directives((tmp_path / "trusted-fronts.geo").read_text()) == []
    done = _entry(tmp_path, "write_settings", PROXY_DEBUG_UPSTREAM="1",
                  PROXY_TRUSTED_FRONTS="10.0.0.0/8 fd00::/8")
    assert done.returncode == 0, done.stderr
    assert _nginx_directives((tmp_path / "debug-upstream.conf").read_text()) == [
        f"add_header {UPSTREAM_HEADER} $simam_viz_replica"]
    assert _nginx_directives((tmp_path / "realip.conf").read_text()) == [
        "set_real_ip_from 10.0.0.0/8", "set_real_ip_from fd00::/8"]
    assert _nginx_directives((tmp_path / "trusted-fronts.geo").read_text()) == [
        "10.0.0.0/8 1", "fd00::/8 1"]
    # anything but addresses is refused (it would be pasted into nginx's config)
    done = _entry(tmp_path, "write_settings", PROXY_TRUSTED_FRONTS="10.0.0.1; evil")
    assert done.returncode == 2 and "not an address" in done.stderr


def test_proxy_cookie_is_secure_over_tls_only() -> None:
    d = _nginx_directives(NGINX)
    (set_cookie,) = [x for x in d if x.startswith("add_header Set-Cookie ")]
    variable = set_cookie.split()[2]
    # the cookie's attributes end with a variable that is "; Secure" exactly for TLS
    assert re.search(r'SameSite=Lax\$simam_viz_cookie_secure";', NGINX)
    assert variable == "$simam_viz_set_cookie"
    (secure_map,) = [x for x in d if x.startswith("map $simam_viz_https $simam_viz_cookie_secure")]
    i = d.index(secure_map)
    assert d[i + 1:i + 3] == ['1 "', 'Secure"'] or '1 "; Secure"' in NGINX
    # TLS: the server's own scheme, or X-Forwarded-Proto from a trusted front only
    (https,) = [x for x in d if x.startswith("map ") and x.endswith("$simam_viz_https")]
    assert "$scheme" in https and "$simam_viz_trusted_front" in https
    assert "$http_x_forwarded_proto" in https
    assert any(x.startswith("geo $realip_remote_addr $simam_viz_trusted_front") for x in d)


def _limit(d: list[str], prefix: str) -> list[str]:
    return [x for x in d if x.startswith(prefix)]


def test_proxy_limits_each_client_address() -> None:
    """Per address: requests in progress (websockets too), the request rate, uploads; 429."""
    d = _nginx_directives(NGINX)
    zones = {}
    for x in _limit(d, "limit_req_zone "):
        key, zone, rate = x.split()[1:4]
        assert key == "$binary_remote_addr", x
        zones[zone.split("=")[1].split(":")[0]] = int(re.fullmatch(r"rate=(\d+)r/s", rate)[1])
    (conn_zone,) = _limit(d, "limit_conn_zone ")
    assert conn_zone.split()[1] == "$binary_remote_addr"
    assert "limit_req_status 429" in d and "limit_conn_status 429" in d
    # at server level (every location without its own limit_req inherits it)
    server = d.index("listen 8080")
    (conn,) = _limit(d[server:], "limit_conn ")
    assert 16 <= int(conn.split()[2]) <= 256
    general = next(x for x in d[server:] if x.startswith("limit_req "))
    assert d.index(general) < d.index("location = /proxy-health")
    general_zone = general.split()[1].split("=")[1]
    assert zones[general_zone] >= 10 and int(re.search(r"burst=(\d+)", general)[1]) >= 100
    # uploads: their own, lower rate, and still the general one
    at = d.index("location ^~ /_stcore/upload_file")
    upload = _limit(d[at + 1:at + 4], "limit_req ")
    assert len(upload) == 2 and f"zone={general_zone}" in " ".join(upload)
    (own,) = [x for x in upload if f"zone={general_zone}" not in x]
    assert zones[own.split()[1].split("=")[1]] <= 10
    assert int(re.search(r"burst=(\d+)", own)[1]) <= 50
    # the client address behind a trusted front, from X-Forwarded-For
    assert "include /tmp/nginx/realip.conf" in d and "real_ip_header X-Forwarded-For" in d


def test_proxy_does_not_publish_the_replicas_metrics() -> None:
    d = _nginx_directives(NGINX)
    at = d.index("location = /metrics")
    assert d[at + 1] == "return 404"


def test_proxy_image_is_local_base_unprivileged_and_healthchecked() -> None:
    text = (DEPLOY / "proxy" / "Dockerfile").read_text()
    lines = [x.strip() for x in re.sub(r"\\\n", " ", text).splitlines()
             if x.strip() and not x.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"  # the app's base: nothing else to pull
    users = [x.split()[1] for x in lines if x.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(x.startswith("HEALTHCHECK") and "/proxy-health" in x for x in lines)
    assert "listen 8080" in _nginx_directives(NGINX)


# --- Kubernetes ------------------------------------------------------------------------------

def test_deployment_probes_liveness_health_and_readiness_warm() -> None:
    app = _app_container(_deployment())
    ports = {p["containerPort"] for p in app["ports"]}
    paths = {"startupProbe": HEALTH, "livenessProbe": HEALTH, "readinessProbe": READY}
    for probe, path in paths.items():
        get = app[probe]["httpGet"]
        # a port number: podman kube play (4.3) turns a port name into port 0
        assert get["path"] == path and get["port"] in ports, probe
    startup = app["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # a slow start
    # readiness is the warm-up's own answer, not a guessed delay
    assert "initialDelaySeconds" not in app["readinessProbe"]
    text = (K8S / "deployment.yaml").read_text()
    assert "readiness waits out the warm-up" not in text  # the old claim, /_stcore/health


def test_deployment_is_scraped_by_prometheus() -> None:
    deployment = _deployment()
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) in {
        p["containerPort"] for p in _app_container(deployment)["ports"]}


def test_pods_spread_over_nodes_and_zones() -> None:
    for deployment in (_deployment(), _gpu_deployment()):
        template = deployment["spec"]["template"]
        spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
        for c in spread.values():
            assert c["maxSkew"] == 1
            selector = c["labelSelector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items()


def test_disruption_budget_keeps_replicas_serving() -> None:
    pdb = _load(K8S / "pdb.yaml")
    assert pdb["kind"] == "PodDisruptionBudget"
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1
    # with at least two pods, a drain never takes the last one
    assert _load(K8S / "hpa.yaml")["spec"]["minReplicas"] >= 2
    assert _gpu_hpa()["spec"]["minReplicas"] >= 2


def test_gpu_autoscaler_reads_the_pods_busy_slots() -> None:
    """On a GPU the CPU stays low while every analysis slot is taken: the GPU autoscaler
    also scales on a Pods metric from the pods' /metrics (served by prometheus-adapter)."""
    hpa = _gpu_hpa()
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Pods", "Resource"}
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = pods["metric"]["name"]
    assert name in ("simam_viz_slots_busy", "simam_viz_queue_wait_seconds_mean")
    assert pods["target"]["type"] == "AverageValue"
    # the adapter rule that serves it, in the overlay's README, is valid YAML naming it
    doc = (K8S / "gpu" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    rules = [r for b in blocks if "rules" in (y := yaml.safe_load(b) or {})
             for r in y["rules"]["custom"]]
    served = {r["name"]["as"] for r in rules}
    assert name in served
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_deployment_is_non_root_read_only_with_limits() -> None:
    deployment = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    app = _app_container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    ctx = app["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the app's only writable place
    weights = mounts[CHECKPOINTS]
    assert weights["readOnly"] is True
    assert volumes[weights["name"]]["persistentVolumeClaim"]["readOnly"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(app["resources"][kind]), kind


def test_deployment_cookie_secret_comes_from_one_secret() -> None:
    env = {e["name"]: e for e in _app_container(_deployment())["env"]}
    ref = env[SECRET_VAR]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]  # one Secret for all pods, not a per-pod value


def test_service_ingress_and_hpa_point_at_the_deployment() -> None:
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _load(K8S / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _app_container(deployment)["ports"]}

    ingress = _load(K8S / "ingress.yaml")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert notes["nginx.ingress.kubernetes.io/session-cookie-name"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    # a public demo: limits per client address, HTTPS with a Secure affinity cookie
    assert 16 <= int(notes["nginx.ingress.kubernetes.io/limit-connections"]) <= 256
    assert int(notes["nginx.ingress.kubernetes.io/limit-rps"]) >= 10
    assert notes["nginx.ingress.kubernetes.io/session-cookie-secure"] == "true"
    assert ingress["spec"]["tls"][0]["secretName"]
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"]
                for p in r["http"]["paths"]]
    assert backends and all(b["name"] == service["metadata"]["name"] for b in backends)

    hpa = _load(K8S / "hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"  # CPU nodes: an analysis is CPU-bound
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kustomization_lists_every_manifest() -> None:
    kust = _load(K8S / "kustomization.yaml")
    assert set(kust["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    gpu = _load(K8S / "gpu" / "kustomization.yaml")
    assert gpu["resources"] == ["../"]
    for patch in gpu["patches"]:
        assert (K8S / "gpu" / patch["path"]).is_file()


def test_gpu_variant_requests_one_gpu_and_the_cuda_image() -> None:
    merged = _gpu_deployment()
    app = _app_container(merged)  # the patch merged into the base's one container
    for kind in ("requests", "limits"):
        assert app["resources"][kind]["nvidia.com/gpu"] == 1, kind
    assert app["image"].endswith(":cuda")
    # the base's hardening and probes survive the patch
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["livenessProbe"]["httpGet"]["path"] == HEALTH
    assert app["startupProbe"]["httpGet"]["path"] == HEALTH
    assert app["readinessProbe"]["httpGet"]["path"] == READY
    assert any(e["name"] == SECRET_VAR for e in app["env"])


def _validator():
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    return kv, kv.utils.latest_version()


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "ingress.yaml",
                                  "hpa.yaml", "pdb.yaml", "weights-pvc.yaml"])
def test_manifests_match_the_kubernetes_schema(name: str) -> None:
    kv, version = _validator()
    kv.validate(_load(K8S / name), version, strict=True)


def test_every_manifest_is_schema_checked() -> None:
    """A new manifest in the kustomization joins the schema test's list above."""
    text = Path(__file__).read_text()
    start = text.index('@pytest.mark.parametrize("name", ["deployment.yaml"')
    names = re.findall(r'"([\w.-]+\.yaml)"', text[start:text.index("def ", start)])
    assert set(names) == set(_load(K8S / "kustomization.yaml")["resources"])


def test_gpu_deployment_matches_the_kubernetes_schema() -> None:
    kv, version = _validator()
    kv.validate(_gpu_deployment(), version, strict=True)
    kv.validate(_gpu_hpa(), version, strict=True)


def test_schema_validation_catches_a_typo() -> None:
    kv, version = _validator()
    broken = _deployment()
    _app_container(broken)["readinesProbe"] = _app_container(broken).pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, version, strict=True)


# --- images and CI ---------------------------------------------------------------------------

def test_cpu_requirements_pin_the_cpu_torch_pair() -> None:
    pins = [x.strip() for x in (ROOT / "requirements-cpu.txt").read_text().splitlines()
            if x.strip() and not x.startswith("#")]
    assert pins == ["torch==2.13.0+cpu", "torchvision==0.28.0"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_REQUIREMENTS=requirements.txt" in dockerfile  # CUDA stays the default
    assert "!requirements-cpu.txt" in (ROOT / ".dockerignore").read_text().splitlines()


def test_ci_runs_deploy_smoke_after_docker_smoke() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^deploy-smoke:.*\n\tbash scripts/deploy-smoke\.sh$", makefile, re.M)
    steps = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()
             if x.strip().startswith("make ")]
    assert "make deploy-smoke" in steps
    assert steps.index("make deploy-smoke") > steps.index("make docker-smoke")


def test_deploy_smoke_is_strict_cleans_up_and_reuses_the_smoke_image() -> None:
    script = (ROOT / "scripts" / "deploy-smoke.sh").read_text()
    assert "set -euo pipefail" in script
    assert "trap cleanup EXIT" in script
    assert "IMG=${IMG:-localhost/simam-viz:smoke}" in script
    assert "IMG=${IMG:-localhost/simam-viz:smoke}" in (
        ROOT / "scripts" / "docker-smoke.sh").read_text()
    assert "--network-alias app" in script  # the name nginx.conf proxies to
    # the public configuration is what it tests: no debug header, replicas warm first, and
    # the containers bounded as in compose.yaml
    assert "PROXY_DEBUG_UPSTREAM=1" not in script and "--allow-upstream-header" not in script
    assert "/readyz" in script and "--pids-limit" in script
    probe = (ROOT / "scripts" / "deploy_probe.py").read_text()
    assert "LOST_UPLOAD" in probe and "please upload it again" in probe
