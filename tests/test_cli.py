"""``simam-viz list`` and ``simam-viz fetch``: output, exit statuses, one-line errors.

Every test runs on a temporary checkpoints folder (``SIMAM_VIZ_CHECKPOINTS``) and, where it
downloads, a temporary registry whose URLs point at a local HTTP server on 127.0.0.1, so the
real ``checkpoints/`` folder and the internet are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import registry_entry
from localhttp import closed_port

from simam_viz import cli
from simam_viz.networks.models import build_model
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.weights import registry
from simam_viz.weights.checkpoints import save_checkpoint

PAYLOAD = b"weights" * 100_000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def http_routes() -> dict[str, bytes]:
    return {"/tiny.pth": PAYLOAD}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_server: str,
           use_registry) -> Path:
    """A temporary checkpoints folder and registry (four entries, one per status)."""
    use_registry(
        registry_entry("tiny", "tiny.pth", f"{http_server}/tiny.pth", sha256=DIGEST),
        registry_entry("tiny-404", "gone.pth", f"{http_server}/gone.pth", sha256_prefix="00"),
        registry_entry("drive-simam", "model_best_in_100_epochs.pth.tar",
                       "https://drive.google.com/drive/folders/X", arch="simam_resnet50",
                       source="gdrive_folder", gdrive_id="X", simam_lambda=0.1,
                       redistributable=False, licence="none published",
                       candidates=["checkpoint.pth.tar"]),
        registry_entry("drive-eca", "eca.pth.tar", "https://drive.google.com/file/d/Y",
                       arch="eca_resnet50", source="gdrive_file", gdrive_id="Y"),
    )
    ckpts = tmp_path / "ckpts"
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(ckpts))
    return ckpts


def _registry_file() -> Path:
    """The temporary registry of ``folder`` (never the repository's own)."""
    return Path(os.environ["SIMAM_VIZ_REGISTRY"])


def _line(out: str, name: str) -> str:
    return next(x for x in out.splitlines() if x.strip().startswith(name + " "))


def test_list_empty_folder(folder: Path, capsys) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "does not exist yet" in out
    assert _line(out, "tiny").split()[-1] == "missing"
    assert "none published" in _line(out, "drive-simam") and " no " in _line(out, "drive-simam")
    assert out.rstrip().endswith("none")  # no other files


def test_list_statuses_and_other_files(folder: Path, capsys) -> None:
    import layouts

    folder.mkdir()
    (folder / "tiny.pth").write_bytes(PAYLOAD)
    (folder / "gone.pth").write_bytes(b"something else")
    torch.save(layouts.simam_official()[0], folder / "checkpoint.pth.tar")  # dropped by hand
    torch.save(layouts.torchvision_layout()[0], folder / "eca.pth.tar")  # wrong file
    (folder / "mine").mkdir()
    torch.save(layouts.torchvision_layout()[0], folder / "mine" / "r50.pth")
    (folder / "demo").mkdir()
    model = build_model("simam_resnet50", num_classes=3, width=0.125)
    save_checkpoint(model, folder / "demo" / "simam_resnet50.safetensors",
                    class_names=["a", "b", "c"], preprocessing=Preprocessing())
    (folder / "demo" / "broken.pth").write_bytes(b"not a checkpoint")
    (folder / ".tiny.pth.abc.part").write_bytes(b"half")  # a fetch in progress: hidden

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert _line(out, "tiny").endswith("present, verified (tiny.pth)")
    assert _line(out, "tiny-404").endswith("present, hash mismatch (gone.pth)")
    assert _line(out, "drive-simam").endswith("present, no published hash (checkpoint.pth.tar)")
    wrong = "present, but eca.pth.tar holds a resnet50 (v1.5), not eca_resnet50 (v1.5)"
    assert _line(out, "drive-eca").endswith(wrong)
    demo, others = out.split("Demo models")[1].split("Other checkpoint files in the folder:")
    # the folder's own demo model replaces the bundled one of that name; the rest join it
    assert f"demo/simam_resnet50  simam_resnet50  ({folder / 'demo'}" in demo
    assert re.search(r"demo/resnet50 +resnet50, test top-1 [\d.]+%  \(.*/checkpoints/demo/", demo)
    assert re.search(r"mine/r50\.pth +layout torchvision, resnet50, 1000 classes, ResNet v1\.5",
                     others)
    assert "demo/simam_resnet50.safetensors" not in others
    assert "demo/broken.pth" in others and "unreadable" in others
    assert "tiny.pth" not in others and ".part" not in out and "checkpoint.pth.tar" not in others


def test_list_dir_option(folder: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "tiny.pth").write_bytes(PAYLOAD)
    assert cli.main(["list", "--dir", str(other)]) == 0
    assert _line(capsys.readouterr().out, "tiny").endswith("present, verified (tiny.pth)")


def test_fetch_downloads_then_lists_verified(folder: Path, capsys) -> None:
    assert cli.main(["fetch", "tiny", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"tiny: {folder / 'tiny.pth'}" and captured.err == ""
    assert (folder / "tiny.pth").read_bytes() == PAYLOAD
    umask = os.umask(0)
    os.umask(umask)
    # readable by the other users a server may run as (mkstemp alone would leave 0600)
    assert (folder / "tiny.pth").stat().st_mode & 0o777 == 0o666 & ~umask
    assert cli.main(["fetch", "tiny"]) == 0  # already there: no download, same answer
    assert capsys.readouterr().out.strip() == f"tiny: {folder / 'tiny.pth'}"
    assert cli.main(["list"]) == 0
    assert _line(capsys.readouterr().out, "tiny").endswith("present, verified (tiny.pth)")


def test_fetch_dir_option(folder: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "new" / "place"
    assert cli.main(["fetch", "tiny", "--dir", str(target), "--quiet"]) == 0
    assert (target / "tiny.pth").is_file() and not folder.exists()


def test_fetch_redistributable_only(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys) -> None:
    """A published image must never bake in weights whose licence forbids it."""
    assert cli.main(["fetch", "--redistributable-only", "tiny", "drive-simam", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'drive-simam' may not be redistributed") and err.count("\n") == 1
    assert not folder.exists()  # refused before any download
    # with --all the closed ones are left out and the rest are fetched (recorded, not fetched)
    asked: list[str] = []
    monkeypatch.setattr("simam_viz.weights.fetch.fetch",
                        lambda entry, where, progress: asked.append(entry.name) or where)
    assert cli.main(["fetch", "--all", "--redistributable-only", "--quiet"]) == 0
    assert asked == ["tiny", "tiny-404", "drive-eca"]


def test_official_subfolder_is_found(folder: Path, capsys) -> None:
    """Weights mounted into ``official/`` (a container volume) count as present."""
    (folder / "official").mkdir(parents=True)
    (folder / "official" / "tiny.pth").write_bytes(PAYLOAD)
    entry = registry.load_registry()["tiny"]
    assert registry.find_present(entry, folder) == folder / "official" / "tiny.pth"
    assert cli.main(["list"]) == 0
    assert _line(capsys.readouterr().out, "tiny").endswith("present, verified (tiny.pth)")


def test_fetch_failure_is_one_line(folder: Path, http_server: str, capsys) -> None:
    assert cli.main(["fetch", "tiny-404", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: tiny-404: HTTP 404")
    assert f"download {http_server}/gone.pth by hand and save it as {folder / 'gone.pth'}" in (
        captured.err
    )
    assert "Traceback" not in captured.err and not list(folder.iterdir())


def test_fetch_some_failed_is_status_1(folder: Path, capsys) -> None:
    assert cli.main(["fetch", "tiny", "tiny-404", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "tiny: " in captured.out and captured.err.count("\n") == 1


def test_fetch_offline(folder: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    raw = json.loads(_registry_file().read_text(encoding="utf-8"))
    raw["entries"][0]["urls"] = [f"http://127.0.0.1:{closed_port()}/tiny.pth"]
    _registry_file().write_text(json.dumps(raw), encoding="utf-8")
    assert cli.main(["fetch", "--all", "--quiet"]) == 2  # nothing could be fetched
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "cannot reach the server" in err[0] and "by hand" in err[0]


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["fetch", "nope"], "error: unknown checkpoint 'nope'; known: tiny, tiny-404, drive-"),
        (["fetch"], "error: name a checkpoint or use --all; known: tiny"),
        (["fetch", "--bogus"], "error: unrecognized arguments: --bogus"),
        ([], "error: the following arguments are required: command"),
        (["frobnicate"], "error: argument command: invalid choice: 'frobnicate'"),
        (["list", "--dir"], "error: argument --dir: expected one argument"),
    ],
)
def test_usage_errors_are_status_2_and_one_line(folder: Path, capsys, argv, start) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(start) and captured.err.count("\n") == 1
    assert captured.out == ""


def test_broken_registry_is_one_line(folder: Path, capsys) -> None:
    _registry_file().write_text("{not json", encoding="utf-8")
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read checkpoint registry") and err.count("\n") == 1


def test_help_is_status_0(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("list", "fetch", "predict", "figure"))


def test_console_process_has_no_traceback(tmp_path: Path) -> None:
    """The real process boundary: exit status and stderr as a shell sees them."""
    env = {**os.environ, "SIMAM_VIZ_CHECKPOINTS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "simam_viz.cli", "fetch", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown checkpoint 'nope'; known: resnet50-tv-v1")
    assert done.stderr.count("\n") == 1
