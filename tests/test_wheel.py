"""The wheel as a new user gets it: built from the checkout, installed elsewhere, run elsewhere.

The wheel is built from a copy of the checkout (so the build leaves nothing in the repository)
and installed with ``--no-deps --no-index`` into a fresh virtual environment outside it. There
is no internet here, so that environment borrows its dependencies (torch, streamlit...) from
the test's own interpreter through a ``.pth`` line; the ``.pth`` files of that site folder are
not processed, so the checkout's editable install stays invisible and every ``simam_viz``
import comes from the wheel. The commands run from an unrelated folder with ``HOME`` in a
temporary folder, so the per-user checkpoints folder is fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import simam_viz

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "app" / "examples" / "scene_dog_3.png"
DEMO = ROOT / "checkpoints" / "demo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "__pycache__", "*.egg-info", ".pytest_cache",
        ".ruff_cache", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(work / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = (work / "dist").glob("simam_viz-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh venv holding only the wheel; returns its ``simam-viz``, a cwd and a HOME."""
    work = tmp_path_factory.mktemp("installed")
    env_dir = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return {"cli": env_dir / "bin" / "simam-viz", "cwd": elsewhere, "home": work / "home",
            "site": site}


def _env(installed: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SIMAM_VIZ_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HOME": str(installed["home"]), "XDG_DATA_HOME": "", **extra}


def _run(installed: dict[str, Path], *args: str, timeout: int = 300
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed["cli"]), *args], cwd=installed["cwd"],
                          env=_env(installed), capture_output=True, text=True, timeout=timeout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_ships_registry_demo_models_and_app_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    bundle = {n.removeprefix("simam_viz/_bundle/") for n in names
              if n.startswith("simam_viz/_bundle/")}
    demo = {f"checkpoints/demo/{p.name}" for p in DEMO.iterdir() if p.is_file()}
    examples = {f"app/examples/{p.name}" for p in (ROOT / "app" / "examples").iterdir()}
    app_code = {f"app/{p.relative_to(ROOT / 'app').as_posix()}"
                for p in [*(ROOT / "app").glob("*.py"), *(ROOT / "app" / "views").glob("*.py")]}
    assert bundle == ({"checkpoints/registry.json", "streamlit/config.toml"}
                      | demo | examples | app_code)
    modules = {n for n in names if n.startswith("simam_viz/") and n.endswith(".py")
               and not n.startswith("simam_viz/_bundle/")}
    assert modules == {p.relative_to(ROOT).as_posix() for p in (ROOT / "simam_viz").rglob("*.py")}
    assert not any(n.startswith(("harness/", "tests/")) for n in names)  # test tools stay home
    assert wheel.stat().st_size < 25 * 1024**2


def test_version_from_another_folder(installed: dict[str, Path]) -> None:
    done = _run(installed, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"simam-viz {simam_viz.__version__}\n", "")


def test_list_reads_the_packaged_registry_and_demo_models(installed: dict[str, Path]) -> None:
    done = _run(installed, "list")
    assert done.returncode == 0, done.stderr
    registry = json.loads((ROOT / "checkpoints" / "registry.json").read_text())
    for entry in registry["entries"]:
        assert f"  {entry['name']} " in done.stdout
    user_folder = installed["home"] / ".local" / "share" / "simam-viz" / "checkpoints"
    assert f"(folder {user_folder} (does not exist yet))" in done.stdout
    bundled = installed["site"] / "simam_viz" / "_bundle" / "checkpoints" / "demo"
    for stem in ("resnet50", "se_resnet50", "simam_resnet50"):
        assert f"demo/{stem}" in done.stdout
        assert f"({bundled / stem}.safetensors)" in done.stdout


def test_figure_on_the_bundled_demo_models_matches_the_checkout(
    installed: dict[str, Path], tmp_path: Path
) -> None:
    from simam_viz.cli import main

    done = _run(installed, "figure", str(EXAMPLE), "--out", "figs", "--figure", "1",
                "--dpi", "60")
    assert done.returncode == 0, done.stderr
    out = installed["cwd"] / "figs"
    assert main(["figure", str(EXAMPLE), "--out", str(tmp_path), "--figure", "1",
                 "--dpi", "60"]) == 0
    name = "scene_dog_3_figure1"
    assert (out / f"{name}.png").read_bytes() == (tmp_path / f"{name}.png").read_bytes()
    meta = json.loads((out / f"{name}.json").read_text())
    assert [m["checkpoint_sha256"] for m in meta["models"]] == [
        _sha256(DEMO / f"{stem}.safetensors")
        for stem in ("resnet50", "se_resnet50", "simam_resnet50")]
    assert [m["target_name"] for m in meta["models"]] == ["dog"] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_command_serves_the_bundled_app(installed: dict[str, Path]) -> None:
    port = _free_port()
    env = _env(installed, SIMAM_VIZ_WARM="0", SIMAM_VIZ_LOG_LEVEL="INFO")
    proc = subprocess.Popen([str(installed["cli"]), "app", "--port", str(port),
                             "--address", "127.0.0.1"], cwd=installed["cwd"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, ""
        while time.monotonic() < deadline and health != "ok":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as r:
                    health = r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.5)
        assert health == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<title>" in r.read()
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    serve = installed["site"] / "simam_viz" / "_bundle" / "app" / "serve.py"
    assert f"streamlit run {serve} " in log
    assert "--runner.postScriptGC false" in log and "--server.maxUploadSize 10" in log
