"""The Dockerfile's promises, checked without an engine (`make docker-smoke` builds and runs it).

A published image must run as non-root, report health with Python only, and never carry
weights whose licence forbids redistribution: the build context is cut down by .dockerignore so
that a checkpoint someone dropped into checkpoints/ cannot slip into an image.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DOCKERFILE as DOCKERFILE_PATH
from helpers import ROOT
from localhttp import closed_port, local_server, routes_handler

DOCKERFILE = DOCKERFILE_PATH.read_text()
HEALTH = "/_stcore/health"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def _context_includes(rel: str) -> bool:
    """Whether .dockerignore lets `rel` into the build context (last matching rule wins)."""
    keep = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if (fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, pattern + "/*")
                or (pattern.startswith("**/") and fnmatch.fnmatch(Path(rel).name,
                                                                  pattern[3:]))):
            keep = negate
    return keep


def test_base_user_port_and_healthcheck() -> None:
    rows = _instructions()
    assert rows[0] == ("FROM", "python:3.11-slim")
    users = [arg for word, arg in rows if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8501") in rows
    health = next(arg for word, arg in rows if word == "HEALTHCHECK")
    assert "/_stcore/health" in health and "python" in health and "curl" not in health
    cmd = next(arg for word, arg in rows if word == "CMD")
    assert "streamlit" in cmd and "app/serve.py" in cmd  # the page's warm-start wrapper


def _health_probe() -> str:
    """The Python code of the HEALTHCHECK's exec-form ``CMD ["python", "-c", CODE]``."""
    health = next(arg for word, arg in _instructions() if word == "HEALTHCHECK")
    argv = json.loads(health.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, argv
    compile(argv[2], "<healthcheck>", "exec")
    return argv[2]


def _probe(code: str, port: int) -> subprocess.CompletedProcess:
    """Run the probe against loopback ``port`` instead of the container's 8501."""
    local, count = re.subn(r"(127\.0\.0\.1|localhost):8501\b", f"127.0.0.1:{port}", code)
    assert count == 1, f"the probe should name the app's own port once: {code}"
    return subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30)


@pytest.mark.parametrize(
    ("routes", "healthy"),
    [
        ({HEALTH: b"ok"}, True),
        ({HEALTH: (500, b"ok")}, False),  # a server error is unhealthy
        ({HEALTH: b"starting"}, False),  # only the body "ok" is healthy
        ({"/": b"ok", "/healthz": b"ok"}, False),  # "ok" elsewhere is not Streamlit's health
    ],
    ids=["ok", "http-500", "not-ok-body", "ok-on-other-paths"],
)
def test_healthcheck_probe_asks_streamlits_health_endpoint(routes: dict, healthy: bool) -> None:
    """The probe, run against a local server: exit 0 exactly when GET /_stcore/health
    answers 200 "ok"; the server must have seen that one request."""
    handler = routes_handler(routes)
    with local_server(handler) as url:
        probe = _probe(_health_probe(), int(url.rsplit(":", 1)[1]))
    assert handler.requested == [HEALTH]
    # Docker's codes: 0 healthy, 1 unhealthy (2 is reserved)
    assert probe.returncode == (0 if healthy else 1), probe.stderr.decode()[-500:]


def test_healthcheck_probe_fails_when_nothing_listens() -> None:
    probe = _probe(_health_probe(), closed_port())
    assert probe.returncode == 1
    assert b"Connection refused" in probe.stderr  # down, not a broken probe (a SyntaxError)


def test_image_runs_in_public_mode() -> None:
    """A published image offers no checkpoint-download panel (SIMAM_VIZ_FETCH=0; `make run`
    and `docker run -e SIMAM_VIZ_FETCH=1` keep it)."""
    envs = [arg for word, arg in _instructions() if word == "ENV"]
    assert "SIMAM_VIZ_FETCH=0" in envs


def test_healthcheck_is_liveness_not_readiness() -> None:
    """Docker restarts what it finds unhealthy; a replica whose warm-up failed (/readyz 503
    for good) still serves, so the image's check stays on liveness. Routing uses /readyz
    (deploy/compose.yaml, the proxy, the Kubernetes readiness probe)."""
    assert "/readyz" not in _health_probe() and HEALTH in _health_probe()


def test_torch_index_and_fetch_are_build_arguments() -> None:
    args = {arg.split("=")[0] for word, arg in _instructions() if word == "ARG"}
    assert {"TORCH_INDEX_URL", "FETCH"} <= args
    assert "fetch --redistributable-only" in DOCKERFILE


def test_build_context_holds_the_app_and_no_stray_weights() -> None:
    for rel in ("requirements.txt", "simam_viz/engine/analysis.py", "app/streamlit_app.py",
                "app/serve.py",
                ".streamlit/config.toml", "checkpoints/registry.json",
                "checkpoints/demo/simam_resnet50.safetensors"):
        assert _context_includes(rel), rel
    for rel in ("checkpoints/simam_resnet50_checkpoint.pth.tar", "checkpoints/official/x.pth",
                ".venv/bin/python", "build/demo/resnet50.safetensors", "tests/test_app.py",
                "simam_viz/__pycache__/cli.cpython-311.pyc", ".git/config"):
        assert not _context_includes(rel), rel
