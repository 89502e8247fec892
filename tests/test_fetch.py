"""Registry and fetch, against a local HTTP server on 127.0.0.1 only (never the internet).

Google Drive is stood in for by a fake ``gdown`` module; every failure must leave the
destination folder exactly as it was: no final-named half file, no temporary file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import urllib.error
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import file_names
from localhttp import QuietHandler, closed_port

from simam_viz.errors import FetchError, SimamVizError
from simam_viz.fetch import _pick_resnet50, fetch
from simam_viz.registry import (
    REGISTRY_PATH,
    checkpoints_dir,
    find_present,
    load_registry,
    verify_file,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"  # needed for a chunked body

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path == "/ok.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.pth":  # announces everything, sends half, closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/cut-chunked.pth":  # no length: one chunk, then the socket closes
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            part = PAYLOAD[:65536]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def http_handler() -> type[QuietHandler]:
    return _Handler


def _entry(url: str, **changes):
    base = load_registry()["resnet50-tv-v1"]
    fields = {"urls": (url,), "sha256": DIGEST, "sha256_prefix": None, **changes}
    return dataclasses.replace(base, **fields)


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be used")


# ---- registry -------------------------------------------------------------------------------


def test_registry_is_complete() -> None:
    registry = load_registry()
    assert {e.arch for e in registry.values()} == {
        "resnet50", "se_resnet50", "simam_resnet50", "eca_resnet50", "cbam_resnet50"
    }
    assert {"resnet50-tv-v1", "resnet50-tv-v2", "se_resnet50-moskomule", "se_resnet50-timm-a1",
            "se_resnet50-caffe", "simam_resnet50-official", "eca_resnet50-official",
            "cbam_resnet50-official"} <= set(registry)
    simam = registry["simam_resnet50-official"]
    assert simam.simam_lambda == 0.1 and not simam.redistributable
    assert simam.source == "gdrive_folder"
    assert simam.gdrive_id == "1rRT0UCPeRLPdTCJvv43hvAnGnS49nIWn"
    assert {"model_best_in_100_epochs.pth.tar", "checkpoint.pth.tar"} <= set(simam.names)
    assert registry["eca_resnet50-official"].gdrive_id == "1670rce333c_lyMWFzBlNZoVUvtxbCF_U"
    assert registry["cbam_resnet50-official"].gdrive_id == "1mvAVvhLR_2XY_bPYxh-SEz4vDmGzSArO"
    caffe = registry["se_resnet50-caffe"]
    assert caffe.resnet_variant == "v1" and caffe.sha256_prefix in caffe.urls[0]
    assert registry["se_resnet50-timm-a1"].preprocessing.interpolation == "bicubic"
    assert registry["resnet50-tv-v2"].preprocessing.resize == 232
    for entry in registry.values():
        assert entry.top1 and entry.licence and entry.preprocessing.crop == 224
        if entry.sha256_prefix and entry.source == "http":  # torch.hub: name-<prefix>.ext
            assert entry.urls[0].rsplit("-", 1)[1].startswith(entry.sha256_prefix)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "vgg16"}, "unknown arch"),
        ({"resnet_variant": "v2"}, "resnet_variant"),
        ({"sha256": "abc"}, "64 lowercase hex"),
        ({"filename": "../escape.pth"}, "plain name"),
        ({"source": "ftp"}, "unknown source"),
        ({"urls": []}, "URL"),
        ({"colour": "red"}, "invalid"),
        ({"preprocessing": {"resize": 100, "crop": 224}}, "invalid"),
    ],
)
def test_registry_rejects_bad_entries(tmp_path: Path, change: dict, message: str) -> None:
    raw = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    raw["entries"][0].update(change)
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(SimamVizError, match=message) as exc:
        load_registry(path)
    assert "\n" not in str(exc.value)


def test_registry_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SimamVizError, match="cannot read checkpoint registry"):
        load_registry(tmp_path / "absent.json")
    (tmp_path / "r.json").write_text('{"entries": []}', encoding="utf-8")
    with pytest.raises(SimamVizError, match="not a simam-viz checkpoint registry"):
        load_registry(tmp_path / "r.json")


def test_checkpoints_dir_and_find_present(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SIMAM_VIZ_CHECKPOINTS", raising=False)
    assert checkpoints_dir() == REGISTRY_PATH.parent
    monkeypatch.setenv("SIMAM_VIZ_CHECKPOINTS", str(tmp_path))
    assert checkpoints_dir() == tmp_path
    simam = load_registry()["simam_resnet50-official"]
    assert find_present(simam) is None
    (tmp_path / "checkpoint.pth.tar").write_bytes(b"")  # an empty file is not a checkpoint
    assert find_present(simam) is None
    (tmp_path / "checkpoint.pth.tar").write_bytes(b"x")  # a candidate name, dropped by hand
    assert find_present(simam) == tmp_path / "checkpoint.pth.tar"
    (tmp_path / simam.filename).write_bytes(b"y")  # the registered name wins
    assert find_present(simam, tmp_path) == tmp_path / simam.filename


# ---- HTTP -----------------------------------------------------------------------------------


def test_download_with_progress_is_verified_and_atomic(http_server: str, tmp_path: Path,
                                                       capsys) -> None:
    path = fetch(_entry(f"{http_server}/ok.pth"), tmp_path, progress=True)
    assert path.read_bytes() == PAYLOAD and file_names(tmp_path) == [path.name]
    assert "resnet50-0676ba61.pth" in capsys.readouterr().err  # tqdm bar on stderr
    assert verify_file(_entry("x"), path) == "verified"


def test_download_verified_by_url_hash_prefix(http_server: str, tmp_path: Path, capsys) -> None:
    prefixed = _entry(f"{http_server}/ok.pth", sha256=None, sha256_prefix=DIGEST[:8])
    path = fetch(prefixed, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and verify_file(prefixed, path) == "verified"
    assert capsys.readouterr().err == ""  # progress=False is silent


def test_on_progress_reports_every_chunk(http_server: str, tmp_path: Path, capsys) -> None:
    """The app draws its own bar from these calls; the terminal's tqdm bar stays off."""
    seen: list[tuple[int, int | None]] = []
    fetch(_entry(f"{http_server}/ok.pth"), tmp_path, progress=False,
          on_progress=lambda got, total: seen.append((got, total)))
    assert seen and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [got for got, _ in seen] == sorted({got for got, _ in seen})  # strictly growing
    assert capsys.readouterr().err == ""


def test_on_progress_without_content_length(tmp_path: Path) -> None:
    class Response:
        headers: dict[str, str] = {}  # chunked: no total known

        def __init__(self) -> None:
            self.parts = [PAYLOAD[:1000], PAYLOAD[1000:]]

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def read(self, n: int) -> bytes:
            return self.parts.pop(0) if self.parts else b""

    seen: list[tuple[int, int | None]] = []
    fetch(_entry("http://x/y.pth"), tmp_path, progress=False,
          opener=lambda *a, **k: Response(), on_progress=lambda *args: seen.append(args))
    assert seen == [(1000, None), (len(PAYLOAD), None)]


def test_present_file_is_not_downloaded_again(tmp_path: Path) -> None:
    entry = _entry("http://127.0.0.1:1/never")
    (tmp_path / entry.filename).write_bytes(PAYLOAD)
    assert fetch(entry, tmp_path, progress=False, opener=_no_network) == tmp_path / entry.filename


def test_present_mismatch_is_replaced(http_server: str, tmp_path: Path) -> None:
    entry = _entry(f"{http_server}/ok.pth")
    (tmp_path / entry.filename).write_bytes(b"corrupt")
    assert fetch(entry, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert file_names(tmp_path) == [entry.filename]


@pytest.mark.parametrize("hashes", [{"sha256": "0" * 64}, {"sha256": None, "sha256_prefix": "00"}])
def test_mismatch_leaves_nothing(http_server: str, tmp_path: Path, hashes: dict) -> None:
    with pytest.raises(FetchError, match="sha256 mismatch") as exc:
        fetch(_entry(f"{http_server}/ok.pth", **hashes), tmp_path, progress=False)
    assert "\n" not in str(exc.value) and file_names(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/missing.pth", "HTTP 404"), ("/cut.pth", "interrupted"),
     ("/cut-chunked.pth", "interrupted")],
)
def test_http_failures_give_manual_instructions(
    http_server: str, tmp_path: Path, path: str, expected: str
) -> None:
    entry = _entry(f"{http_server}{path}")
    with pytest.raises(FetchError) as exc:
        fetch(entry, tmp_path, progress=False)
    message = str(exc.value)
    assert expected in message and "\n" not in message and "cannot reach" not in message
    assert (f"download {http_server}{path} by hand and save it as "
            f"{tmp_path / entry.filename}") in message
    assert file_names(tmp_path) == []


def test_refused_connection_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x.pth"
    with pytest.raises(FetchError, match="cannot reach the server") as exc:
        fetch(_entry(url), tmp_path, progress=False)
    assert "\n" not in str(exc.value) and f"download {url} by hand" in str(exc.value)
    assert file_names(tmp_path) == []


def test_dns_failure_is_one_clear_line(tmp_path: Path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    with pytest.raises(FetchError, match="name resolution") as exc:
        fetch(_entry("https://example.invalid/x.pth"), tmp_path, progress=False, opener=offline)
    assert "\n" not in str(exc.value) and "by hand" in str(exc.value)


def test_ctrl_c_mid_download_leaves_nothing(tmp_path: Path) -> None:
    class Response:
        headers = {"Content-Length": str(len(PAYLOAD))}
        reads = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return PAYLOAD[:n]

    with pytest.raises(KeyboardInterrupt):
        fetch(_entry("http://x/y.pth"), tmp_path, progress=False,
              opener=lambda *a, **k: Response())
    assert file_names(tmp_path) == []


def test_unwritable_folder_is_a_fetch_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FetchError, match="cannot write to"):
        fetch(_entry("http://x/y.pth"), blocker / "sub", progress=False, opener=_no_network)


# ---- Google Drive ---------------------------------------------------------------------------

File = namedtuple("File", ("id", "path", "local_path"))


class _FakeGdown:
    """Stands in for gdown: a folder listing and a download that writes or fails."""

    def __init__(self, listing: list[File] | Exception, payload: bytes | Exception) -> None:
        self.listing, self.payload, self.downloaded = listing, payload, []

    def download_folder(self, id, skip_download, quiet):  # noqa: A002 - gdown's API
        assert skip_download
        if isinstance(self.listing, Exception):
            raise self.listing
        return self.listing

    def download(self, id, output, quiet):  # noqa: A002 - gdown's API
        self.downloaded.append(id)
        if isinstance(self.payload, Exception):
            output.write(b"partial")
            raise self.payload
        output.write(self.payload)
        return output


def test_gdrive_folder_picks_the_resnet50_file(tmp_path: Path) -> None:
    entry = load_registry()["simam_resnet50-official"]
    listing = [File("a", "SimAM/resnet18_best.pth.tar", ""),
               File("b", "SimAM/model_best_in_100_epochs.pth.tar", ""),
               File("c", "SimAM/resnet101.pth.tar", ""),
               File("d", "SimAM/README.txt", "")]
    fake = _FakeGdown(listing, PAYLOAD)
    path = fetch(entry, tmp_path, progress=False, gdown=fake)
    assert fake.downloaded == ["b"] and path.name == entry.filename
    assert file_names(tmp_path) == [entry.filename]
    assert verify_file(entry, path) == "no published hash"


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        # one sub-folder per network, the same file name in each: the depth is in the folder
        (["SimAM-R18/model_best_in_100_epochs.pth.tar", "SimAM-RX50/model_best_in_100_epochs"
          ".pth.tar", "SimAM-R50/checkpoint.pth.tar", "SimAM-R50/model_best_in_100_epochs"
          ".pth.tar", "SimAM-MV2/model_best_in_100_epochs.pth.tar"], 3),
        (["simam_resnet101.pth", "simam_resnet50.pth", "simam_resnet34.pth"], 1),
        (["ICLR2021/model_best_in_100_epochs.pth.tar"], 0),  # a year is not a depth
        (["resnet18/checkpoint.pth.tar", "notes.pdf"], None),
    ],
)
def test_pick_resnet50(paths: list[str], expected: int | None) -> None:
    entry = load_registry()["simam_resnet50-official"]
    listing = [File(str(i), p, "") for i, p in enumerate(paths)]
    picked = _pick_resnet50(listing, entry)
    assert (picked.id if picked else None) == (None if expected is None else str(expected))


def test_gdrive_folder_failure_explains_the_manual_step(tmp_path: Path) -> None:
    entry = load_registry()["simam_resnet50-official"]
    for fake in (_FakeGdown([], PAYLOAD), _FakeGdown(ConnectionError("offline\nmore"), PAYLOAD)):
        with pytest.raises(FetchError) as exc:
            fetch(entry, tmp_path, progress=False, gdown=fake)
        message = str(exc.value)
        assert "\n" not in message
        folder_url = "https://drive.google.com/drive/folders/1rRT0UCPeRLPdTCJvv43hvAnGnS49nIWn"
        assert f"open {folder_url}" in message
        assert "Baidu" in message and "ResNet-50" in message
        assert str(tmp_path / "model_best_in_100_epochs.pth.tar") in message
        assert "checkpoint.pth.tar" in message
    assert file_names(tmp_path) == []


def test_gdrive_offline_is_said_plainly(tmp_path: Path) -> None:
    offline = type("ConnectionError", (OSError,), {"__module__": "requests.exceptions"})
    entry = load_registry()["eca_resnet50-official"]
    with pytest.raises(FetchError, match=r"cannot reach Google Drive, ConnectionError\); "
                                         r"download https://drive\.google\.com/file/d/"):
        fetch(entry, tmp_path, progress=False, gdown=_FakeGdown([], offline("pool...\n...")))
    assert file_names(tmp_path) == []


def test_gdrive_file_by_id(tmp_path: Path) -> None:
    entry = load_registry()["eca_resnet50-official"]
    fake = _FakeGdown([], PAYLOAD)
    assert fetch(entry, tmp_path, progress=False, gdown=fake).read_bytes() == PAYLOAD
    assert fake.downloaded == ["1670rce333c_lyMWFzBlNZoVUvtxbCF_U"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(RuntimeError("Too many users have viewed or downloaded this file"), "download failed"),
     (b"<!DOCTYPE html><html>Sign in</html>", "refused"),
     (b"", "refused")],
)
def test_gdrive_file_failures_leave_nothing(tmp_path: Path, payload, expected: str) -> None:
    entry = load_registry()["cbam_resnet50-official"]
    with pytest.raises(FetchError, match=expected) as exc:
        fetch(entry, tmp_path, progress=False, gdown=_FakeGdown([], payload))
    message = str(exc.value)
    assert "\n" not in message
    assert "download https://drive.google.com/file/d/1mvAVvhLR_2XY_bPYxh-SEz4vDmGzSArO" in message
    assert file_names(tmp_path) == []
