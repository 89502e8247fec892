"""Where shipped files and fetched weights live, and the CLI's outermost behaviour."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simam_viz import cli, resources
from simam_viz.weights import catalog, registry

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoints_dir_env_then_checkout_then_user_folder(tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path / "mine"))
    assert registry.checkpoints_dir() == tmp_path / "mine"
    monkeypatch.delenv("SIMAM_VIZ_CHECKPOINTS")
    assert resources.is_source_checkout()
    assert registry.checkpoints_dir() == ROOT / "checkpoints"
    monkeypatch.setattr(registry, "is_source_checkout", lambda: False)  # as when installed
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert registry.checkpoints_dir() == tmp_path / "data" / "simam-viz" / "checkpoints"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.checkpoints_dir() == (tmp_path / "home" / ".local" / "share" / "simam-viz"
                                          / "checkpoints")


def test_bundled_demo_models_join_any_folder_unless_shadowed_or_disabled(
    tmp_path: Path, monkeypatch
) -> None:
    bundled = ROOT / "checkpoints" / "demo"
    stems = ["resnet50", "se_resnet50", "simam_resnet50"]
    items = catalog.available_demo(tmp_path)  # an empty folder still offers the demo trio
    assert [(i.key, i.path) for i in items] == [
        (f"demo/{s}", bundled / f"{s}.safetensors") for s in stems]
    own = tmp_path / "demo"
    own.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled / f"se_resnet50{suffix}", own / f"se_resnet50{suffix}")
    keys_paths = [(i.key, i.path) for i in catalog.available_demo(tmp_path)]
    assert keys_paths == [("demo/se_resnet50", own / "se_resnet50.safetensors"),
                          ("demo/resnet50", bundled / "resnet50.safetensors"),
                          ("demo/simam_resnet50", bundled / "simam_resnet50.safetensors")]
    monkeypatch.setenv("SIMAM_VIZ_DEMO_MODELS", "0")
    assert [i.key for i in catalog.available(tmp_path)] == ["demo/se_resnet50"]


def test_app_flags_carry_every_setting_of_the_streamlit_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nheadless = true\nmaxUploadSize = 10\n'
                      '[client]\nshowErrorDetails = "none"\n')
    assert cli._streamlit_flags(config) == [
        "--server.headless", "true", "--server.maxUploadSize", "10",
        "--client.showErrorDetails", "none"]
    assert cli._streamlit_flags(tmp_path / "absent.toml") == []
    shipped = cli._streamlit_flags(resources.streamlit_config())
    assert shipped[shipped.index("--runner.postScriptGC") + 1] == "false"


def test_version_answers_without_importing_torch() -> None:
    code = ("import sys; from simam_viz.cli import main; rc = main(['--version']); "
            "print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "0 False"
    assert done.stdout.splitlines()[0].startswith("simam-viz ")


def test_unexpected_failure_is_one_line_and_logged(monkeypatch, capsys) -> None:
    def broken(_args) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "COMMANDS", [c if c.name != "list" else
                                          cli.Command("list", c.help, c.add_arguments, broken)
                                          for c in cli.COMMANDS])
    line = ("error: list failed: RuntimeError: disk on fire "
            "(SIMAM_VIZ_LOG_LEVEL=DEBUG shows the traceback)\n")
    monkeypatch.delenv("SIMAM_VIZ_LOG_LEVEL", raising=False)
    assert cli.main(["list"]) == 1
    assert capsys.readouterr().err == line
    monkeypatch.setenv("SIMAM_VIZ_LOG_LEVEL", "DEBUG")
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("simam-viz: DEBUG: list failed\nTraceback (most recent call last)")
    assert err.endswith("RuntimeError: disk on fire\n" + line)


@pytest.mark.parametrize("port", ["0", "70000"])
def test_app_rejects_a_bad_port(port: str, capsys) -> None:
    assert cli.main(["app", "--port", port]) == 2
    assert capsys.readouterr().err == f"error: --port must be 1-65535, got {port}\n"
