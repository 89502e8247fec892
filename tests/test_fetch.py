"""Registry, fetch and the list/fetch CLI, against a local HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from simam_viz import cli
from simam_viz.errors import FetchError
from simam_viz.fetch import fetch
from simam_viz.registry import load_registry, verify_file

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path == "/ok.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.pth":  # announces everything, sends half, closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(url: str, **changes):
    base = load_registry()["resnet50-tv-v1"]
    fields = {"urls": (url,), "sha256": DIGEST, "sha256_prefix": None, **changes}
    return dataclasses.replace(base, **fields)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_registry_is_complete() -> None:
    registry = load_registry()
    assert {e.arch for e in registry.values()} == {
        "resnet50", "se_resnet50", "simam_resnet50", "eca_resnet50", "cbam_resnet50"
    }
    simam = registry["simam_resnet50-official"]
    assert simam.simam_lambda == 0.1 and not simam.redistributable
    assert simam.source == "gdrive_folder" and "model_best_in_100_epochs.pth.tar" in simam.names
    caffe = registry["se_resnet50-caffe"]
    assert caffe.resnet_variant == "v1" and caffe.sha256_prefix in caffe.urls[0]
    for entry in registry.values():
        if entry.sha256_prefix and entry.source == "http":
            assert entry.urls[0].rsplit("-", 1)[1].startswith(entry.sha256_prefix)


def test_download_verified_and_atomic(server: str, tmp_path: Path) -> None:
    path = fetch(_entry(f"{server}/ok.pth"), tmp_path, progress=True)
    assert path.read_bytes() == PAYLOAD and _leftovers(tmp_path) == [path.name]
    path.unlink()  # by the URL's hash prefix too
    prefixed = _entry(f"{server}/ok.pth", sha256=None, sha256_prefix=DIGEST[:8])
    assert fetch(prefixed, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert verify_file(prefixed, path) == "verified"


def test_present_file_is_not_downloaded_again(tmp_path: Path) -> None:
    entry = _entry("http://127.0.0.1:1/never")
    (tmp_path / entry.filename).write_bytes(PAYLOAD)
    assert fetch(entry, tmp_path, progress=False) == tmp_path / entry.filename


def test_mismatch_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="sha256 mismatch") as exc:
        fetch(_entry(f"{server}/ok.pth", sha256="0" * 64), tmp_path, progress=False)
    assert "\n" not in str(exc.value) and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "expected"), [("/missing.pth", "HTTP 404"), ("/cut.pth", "interrupted")]
)
def test_http_failures_give_manual_instructions(
    server: str, tmp_path: Path, path: str, expected: str
) -> None:
    entry = _entry(f"{server}{path}")
    with pytest.raises(FetchError) as exc:
        fetch(entry, tmp_path, progress=False)
    message = str(exc.value)
    assert expected in message and "by hand" in message and entry.filename in message
    assert _leftovers(tmp_path) == []


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    entry = _entry(f"http://127.0.0.1:{_closed_port()}/x.pth")
    with pytest.raises(FetchError, match="cannot reach the server") as exc:
        fetch(entry, tmp_path, progress=False)
    assert "\n" not in str(exc.value) and _leftovers(tmp_path) == []


File = namedtuple("File", ("id", "path", "local_path"))


class _FakeGdown:
    """Stands in for gdown: a folder listing and a download that writes or fails."""

    def __init__(self, listing: list[File], payload: bytes | None) -> None:
        self.listing, self.payload, self.downloaded = listing, payload, []

    def download_folder(self, id, skip_download, quiet):  # noqa: A002 - gdown's API
        assert skip_download
        return self.listing

    def download(self, id, output, quiet):  # noqa: A002 - gdown's API
        self.downloaded.append(id)
        if self.payload is None:
            raise RuntimeError("quota exceeded")
        Path(output).write_bytes(self.payload)
        return output


def test_gdrive_folder_picks_the_resnet50_file(tmp_path: Path) -> None:
    entry = load_registry()["simam_resnet50-official"]
    listing = [File("a", "SimAM/resnet18_best.pth.tar", ""),
               File("b", "SimAM/model_best_in_100_epochs.pth.tar", ""),
               File("c", "SimAM/resnet101.pth.tar", "")]
    fake = _FakeGdown(listing, PAYLOAD)
    path = fetch(entry, tmp_path, progress=False, gdown=fake)
    assert fake.downloaded == ["b"] and path.name == entry.filename
    assert verify_file(entry, path) == "no published hash"


def test_gdrive_failure_explains_the_manual_step(tmp_path: Path) -> None:
    entry = load_registry()["simam_resnet50-official"]
    with pytest.raises(FetchError) as exc:
        fetch(entry, tmp_path, progress=False, gdown=_FakeGdown([], PAYLOAD))
    message = str(exc.value)
    assert "drive.google.com/drive/folders/1rRT0UCPeRLPdTCJvv43hvAnGnS49nIWn" in message
    assert "Baidu" in message and "model_best_in_100_epochs.pth.tar" in message
    with pytest.raises(FetchError, match="download failed"):
        fetch(load_registry()["eca_resnet50-official"], tmp_path, progress=False,
              gdown=_FakeGdown([], None))
    assert _leftovers(tmp_path) == []


def _offline(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_cli_list_and_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import layouts

    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path))
    state, _ = layouts.simam_official()
    torch.save(state, tmp_path / "checkpoint.pth.tar")  # dropped in by hand
    (tmp_path / "mine").mkdir()
    torch.save(layouts.torchvision_layout()[0], tmp_path / "mine" / "r50.pth")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "simam_resnet50-official" in x)
    assert "present, no published hash (checkpoint.pth.tar)" in line
    assert "resnet50-tv-v1" in out and "missing" in out
    assert "file/mine/r50.pth" in out
    assert cli.main(["fetch", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown checkpoint 'nope'") and err.count("\n") == 1
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    assert cli.main(["fetch", "resnet50-tv-v1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resnet50-tv-v1:") and "by hand" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fetch", "--bogus"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unrecognized arguments")
