"""The deployment's promises, checked without an engine (`make deploy-smoke` runs them).

Replicas only work behind a proxy with session affinity (a Streamlit session's websocket,
uploads and media files live in one process), with the same cookie secret everywhere, probes on
Streamlit's health endpoint, and hardened containers. These tests read deploy/compose.yaml,
the proxy's nginx.conf and Dockerfile, and the Kubernetes manifests (schema-validated when
kubernetes-validate is installed), and check that CI runs the deploy smoke test.
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


# --- compose -------------------------------------------------------------------------------

def test_compose_replicas_share_secret_health_restart_and_weights() -> None:
    compose = _load(DEPLOY / "compose.yaml")
    app = compose["services"]["app"]
    # one service scaled to N replicas: every replica gets this same environment
    secret = app["environment"][SECRET_VAR]
    assert secret.startswith("${") and ":?" in secret  # required, one value, not baked in
    assert HEALTH in " ".join(app["healthcheck"]["test"])
    assert app["restart"] in ("always", "unless-stopped")
    assert app.get("init") is True
    assert "ports" not in app  # replicas publish nothing, so `--scale app=N` cannot collide
    (weights,) = app["volumes"]
    assert weights.endswith(f":{CHECKPOINTS}:ro")
    assert app["read_only"] is True and "/tmp" in app["tmpfs"]
    assert app["cap_drop"] == ["ALL"]
    proxy = compose["services"]["proxy"]
    assert proxy["depends_on"]["app"]["condition"] == "service_healthy"
    assert proxy["restart"] in ("always", "unless-stopped") and proxy["healthcheck"]["test"]
    assert any(str(p).endswith(":8080") for p in proxy["ports"])
    assert (DEPLOY / proxy["build"] / "Dockerfile").is_file()


def test_compose_builds_the_cpu_image_by_default() -> None:
    args = _load(DEPLOY / "compose.yaml")["services"]["app"]["build"]["args"]
    assert "requirements-cpu.txt" in args["TORCH_REQUIREMENTS"]


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
    assert "getent ahostsv4" in entry
    assert "nginx -e stderr -s reload" in entry
    dockerfile = (DEPLOY / "proxy" / "Dockerfile").read_text()
    assert 'CMD ["/usr/local/bin/proxy-entrypoint.sh"]' in dockerfile
    assert (DEPLOY / "proxy" / "proxy-entrypoint.sh").stat().st_mode & 0o111  # executable


def _write_config(tmp_path: Path, addresses: str) -> dict[str, str]:
    """Run the entrypoint's own write_config (a POSIX sh function) for these addresses."""
    import subprocess

    entry = (DEPLOY / "proxy" / "proxy-entrypoint.sh").read_text()
    start = entry.index("write_config() {")
    body = entry[start:entry.index("\n}\n", start) + 3]
    script = f"set -eu\nDIR={tmp_path}\nPORT=8501\n{body}write_config '{addresses}'\n"
    subprocess.run(["sh", "-c", script], check=True)
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

def test_deployment_probes_health_with_a_startup_budget() -> None:
    app = _app_container(_deployment())
    ports = {p["containerPort"] for p in app["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = app[probe]["httpGet"]
        # a port number: podman kube play (4.3) turns a port name into port 0
        assert get["path"] == HEALTH and get["port"] in ports, probe
    startup = app["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model warm-up


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
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"]
                for p in r["http"]["paths"]]
    assert backends and all(b["name"] == service["metadata"]["name"] for b in backends)

    hpa = _load(K8S / "hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
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
    assert any(e["name"] == SECRET_VAR for e in app["env"])


def _validator():
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    return kv, kv.utils.latest_version()


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "ingress.yaml",
                                  "hpa.yaml", "weights-pvc.yaml"])
def test_manifests_match_the_kubernetes_schema(name: str) -> None:
    kv, version = _validator()
    kv.validate(_load(K8S / name), version, strict=True)


def test_gpu_deployment_matches_the_kubernetes_schema() -> None:
    kv, version = _validator()
    kv.validate(_gpu_deployment(), version, strict=True)
    hpa = _strategic_merge(_load(K8S / "hpa.yaml"), _load(K8S / "gpu" / "hpa-gpu.yaml"))
    kv.validate(hpa, version, strict=True)


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
