"""The Dockerfile's promises, checked without an engine (`make docker-smoke` builds and runs it).

A published image must run as non-root, report health with Python only, and never carry
weights whose licence forbids redistribution: the build context is cut down by .dockerignore so
that a checkpoint someone dropped into checkpoints/ cannot slip into an image.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


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


def test_healthcheck_command_is_valid_python() -> None:
    """The probe is a Python one-liner: it must at least compile (and exit 1 when down)."""
    health = next(arg for word, arg in _instructions() if word == "HEALTHCHECK")
    code = re.search(r'"-c", "(.*)"\]', health).group(1)
    compile(code, "<healthcheck>", "exec")
    probe = subprocess.run([sys.executable, "-c", code.replace("8501", "9")],
                           capture_output=True, timeout=30)
    assert probe.returncode != 0  # nothing listens on port 9: unhealthy, not "ok"


def test_torch_index_and_fetch_are_build_arguments() -> None:
    args = {arg.split("=")[0] for word, arg in _instructions() if word == "ARG"}
    assert {"TORCH_INDEX_URL", "FETCH"} <= args
    assert "fetch --redistributable-only" in DOCKERFILE


def test_build_context_holds_the_app_and_no_stray_weights() -> None:
    for rel in ("requirements.txt", "simam_viz/analysis.py", "app/streamlit_app.py", "app/serve.py",
                ".streamlit/config.toml", "checkpoints/registry.json",
                "checkpoints/demo/simam_resnet50.safetensors"):
        assert _context_includes(rel), rel
    for rel in ("checkpoints/simam_resnet50_checkpoint.pth.tar", "checkpoints/official/x.pth",
                ".venv/bin/python", "build/demo/resnet50.safetensors", "tests/test_app.py",
                "simam_viz/__pycache__/cli.cpython-311.pyc", ".git/config"):
        assert not _context_includes(rel), rel
