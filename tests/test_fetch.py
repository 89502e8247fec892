"""Registry and fetch, against a local HTTP server on 127.0.0.1 only (never the internet).

Google Drive is stood in for by a fake ``gdown`` module; every failure must leave the
destination folder exactly as it was: no final-named half file, no temporary file. The app
fetches for anyone who opens the page, so the bounds are tested too: one download per entry,
a byte cap, no https -> http redirect, a cooldown after a failure, no paths when asked.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import file_names, one_line
from localhttp import QuietHandler, closed_port, local_server

from simam_viz.errors import FetchError, SimamVizError
from simam_viz.weights import fetch as fetch_module
from simam_viz.weights.fetch import (
    _pick_resnet50,
    fetch,
    fetch_enabled,
    manual_instructions,
    max_download_bytes,
)
from simam_viz.weights.registry import (
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
        elif self.path == "/redirect.pth":
            self.send_response(302)
            self.send_header("Location", "/ok.pth")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/endless.pth":  # no length, bytes until the client hangs up
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            block = b"x" * 65536
            try:
                for _ in range(1 << 16):  # 4 GiB at most, should the client never stop
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                return
        elif self.path == "/huge.pth":  # announces a terabyte
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.send_header("Connection", "close")
            self.end_headers()
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


@pytest.fixture(autouse=True)
def _no_earlier_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without another test's failed fetch cooling down."""
    monkeypatch.setattr(fetch_module, "_FAILURES", {})
    monkeypatch.delenv("SIMAM_VIZ_FETCH_COOLDOWN_S", raising=False)


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


# ---- the app's switch, and messages without paths ---------------------------------------------


@pytest.mark.parametrize(("value", "enabled"), [
    (None, True), ("1", True), ("0", False), (" 0 ", False), ("off", False), ("yes", True)])
def test_fetch_enabled_reads_the_public_switch(monkeypatch: pytest.MonkeyPatch,
                                               value: str | None, enabled: bool) -> None:
    if value is None:
        monkeypatch.delenv("SIMAM_VIZ_FETCH", raising=False)
    else:
        monkeypatch.setenv("SIMAM_VIZ_FETCH", value)
    assert fetch_enabled() is enabled


def test_manual_instructions_can_name_the_folder_without_its_path(tmp_path: Path) -> None:
    entry = _entry("https://example.org/x.pth")
    assert manual_instructions(entry, tmp_path) == (
        f"download https://example.org/x.pth by hand and save it as {tmp_path / entry.filename}")
    assert manual_instructions(entry, tmp_path, folder_label="the checkpoints folder") == (
        f"download https://example.org/x.pth by hand and save it as {entry.filename} in the "
        "checkpoints folder")
    simam = load_registry()["simam_resnet50-official"]
    text = manual_instructions(simam, tmp_path, folder_label="the checkpoints folder")
    assert "save it as model_best_in_100_epochs.pth.tar (or as checkpoint.pth.tar" in text
    assert text.endswith(") in the checkpoints folder")
    assert str(tmp_path) not in text


def _read_only(folder: Path, entry) -> Path:
    raise OSError(errno.EROFS, "Read-only file system", str(folder / f".{entry.filename}.part"))


def test_read_only_folder_is_said_plainly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetch_module, "_temp_path", _read_only)
    entry = _entry("http://127.0.0.1:1/never")
    with pytest.raises(FetchError) as exc:  # the CLI: the path, and the system's reason
        fetch(entry, tmp_path, opener=_no_network)
    assert one_line(exc) == f"resnet50-tv-v1: cannot write to {tmp_path} (Read-only file system)"
    with pytest.raises(FetchError) as exc:  # the app: no path at all
        fetch(entry, tmp_path, opener=_no_network, folder_label="the checkpoints folder")
    assert one_line(exc) == (
        "resnet50-tv-v1: the checkpoints folder is read-only on this server; an operator can "
        f"add {entry.filename} to it (`simam-viz fetch resnet50-tv-v1`)")
    assert fetch_module._FAILURES == {}  # the server was never asked: nothing to cool down


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a read-only mode folder anyway")
def test_read_only_mode_folder(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(FetchError, match="the checkpoints folder is read-only on this"):
            fetch(_entry("http://127.0.0.1:1/never"), tmp_path, opener=_no_network,
                  folder_label="the checkpoints folder")
    finally:
        tmp_path.chmod(0o755)
    assert file_names(tmp_path) == []


def test_refused_rename_leaves_nothing_and_names_no_path(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(fetch_module, "readable_by_all", refuse)
    with pytest.raises(FetchError, match="the checkpoints folder is read-only") as exc:
        fetch(_entry(f"{http_server}/ok.pth"), tmp_path, folder_label="the checkpoints folder")
    assert str(tmp_path) not in one_line(exc) and file_names(tmp_path) == []


# ---- bounds: one download per entry, a byte cap, no downgrade, a cooldown --------------------


def _two_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes):
    """Two threads fetch one entry from a server that holds its answer until the second
    thread is waiting; returns ({thread: path or exception}, paths requested, temp files)."""
    started, release = threading.Event(), threading.Event()
    requested: list[str] = []

    class Slow(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            started.set()
            release.wait(20)
            for i in range(0, len(body), 65536):  # slowly, in pieces
                self.wfile.write(body[i:i + 65536])
                time.sleep(0.002)

    temps: list[Path] = []
    real_temp = fetch_module._temp_path

    def counting_temp(folder: Path, entry) -> Path:
        temps.append(real_temp(folder, entry))
        return temps[-1]

    joined = threading.Event()
    real_outcome = fetch_module._Flight.outcome

    def outcome(self, entry):
        joined.set()
        return real_outcome(self, entry)

    monkeypatch.setattr(fetch_module, "_temp_path", counting_temp)
    monkeypatch.setattr(fetch_module._Flight, "outcome", outcome)
    results: dict[str, object] = {}
    with local_server(Slow) as url:
        entry = _entry(f"{url}/slow.pth")

        def run(name: str) -> None:
            try:
                results[name] = fetch(entry, tmp_path)
            except Exception as exc:  # noqa: BLE001 - compared below
                results[name] = exc

        threads = {name: threading.Thread(target=run, args=(name,)) for name in ("a", "b")}
        threads["a"].start()
        assert started.wait(20)
        threads["b"].start()
        assert joined.wait(20)  # b waits for a's download instead of starting its own
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(".part")]) == 1
        release.set()
        for thread in threads.values():
            thread.join(30)
    return results, requested, temps


def test_concurrent_fetches_of_one_entry_download_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, requested, temps = _two_at_once(tmp_path, monkeypatch, PAYLOAD)
    final = tmp_path / _entry("x").filename
    assert results == {"a": final, "b": final} and final.read_bytes() == PAYLOAD
    assert requested == ["/slow.pth"] and len(temps) == 1
    assert file_names(tmp_path) == [final.name]
    assert fetch_module._FLIGHTS == {}


def test_concurrent_fetches_share_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, requested, temps = _two_at_once(tmp_path, monkeypatch, b"not the weights" * 999)
    a, b = results["a"], results["b"]
    assert isinstance(a, FetchError) and isinstance(b, FetchError) and a is not b
    assert str(a) == str(b) and "sha256 mismatch" in str(a)
    assert requested == ["/slow.pth"] and len(temps) == 1 and file_names(tmp_path) == []


def test_endless_download_is_stopped_and_discarded(http_server: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="stopped after 2 MB: more than this checkpoint") as exc:
        fetch(_entry(f"{http_server}/endless.pth"), tmp_path, max_bytes=2_000_000)
    assert time.monotonic() - start < 20
    assert "by hand" in one_line(exc) and file_names(tmp_path) == []


def test_announced_size_over_the_cap_is_refused_at_once(http_server: str,
                                                        tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"announced 1000000 MB, more than this checkpoint "
                                         r"can be \(400 MB at most\); refused"):
        fetch(_entry(f"{http_server}/huge.pth"), tmp_path)
    assert file_names(tmp_path) == []


def test_byte_cap_defaults() -> None:
    entry = _entry("x")
    assert max_download_bytes(dataclasses.replace(entry, size_mb=None)) == 400_000_000
    assert max_download_bytes(dataclasses.replace(entry, size_mb=97.8)) == 146_700_000
    assert max_download_bytes(dataclasses.replace(entry, size_mb=2)) == 16_000_000


def test_gdrive_download_is_capped_too(tmp_path: Path) -> None:
    entry = load_registry()["eca_resnet50-official"]
    with pytest.raises(FetchError, match="stopped after 1000 bytes"):
        fetch(entry, tmp_path, gdown=_FakeGdown([], PAYLOAD), max_bytes=1000)
    assert file_names(tmp_path) == []


def test_https_redirect_to_anything_else_is_refused() -> None:
    handler = fetch_module._NoDowngradeRedirect()
    secure = urllib.request.Request("https://download.pytorch.org/models/x.pth")
    for target, scheme in (("http://mirror.example/x.pth", "http"),
                           ("ftp://mirror.example/x.pth", "ftp")):
        body = io.BytesIO(b"moved")
        with pytest.raises(FetchError, match=f"^refused a redirect from https to {scheme}$"):
            handler.redirect_request(secure, body, 302, "Found", {}, target)
        assert body.closed
    kept = handler.redirect_request(secure, io.BytesIO(), 301, "Moved", {},
                                    "https://cdn.example/x.pth")
    assert kept.full_url == "https://cdn.example/x.pth"
    plain = urllib.request.Request("http://example.org/x.pth")
    assert handler.redirect_request(plain, io.BytesIO(), 302, "Found", {},
                                    "http://cdn.example/x.pth").full_url.startswith("http://")


def test_default_opener_follows_redirects_through_the_guard(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = fetch_module._NoDowngradeRedirect.redirect_request

    def spy(self, req, fp, code, msg, headers, newurl):
        seen.append(newurl)
        return real(self, req, fp, code, msg, headers, newurl)

    monkeypatch.setattr(fetch_module._NoDowngradeRedirect, "redirect_request", spy)
    path = fetch(_entry(f"{http_server}/redirect.pth"), tmp_path)
    assert path.read_bytes() == PAYLOAD and seen == [f"{http_server}/ok.pth"]


def test_failure_cools_down_without_the_network(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(fetch_module, "_now", lambda: clock[0])
    failing = _entry(f"{http_server}/missing.pth")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(failing, tmp_path)
    clock[0] += 12
    with pytest.raises(FetchError) as exc:
        fetch(failing, tmp_path, opener=_no_network)
    message = one_line(exc)
    assert message.startswith("resnet50-tv-v1: the last download failed 12 s ago; retry in 48 s")
    assert "by hand and save it as" in message
    clock[0] += 48  # cooled down: the network is tried again, and a success forgets the failure
    assert fetch(_entry(f"{http_server}/ok.pth"), tmp_path).read_bytes() == PAYLOAD
    assert fetch_module._FAILURES == {}


def test_cooldown_is_per_folder_and_skipped_for_a_present_file(
    http_server: str, tmp_path: Path
) -> None:
    failing = _entry(f"{http_server}/missing.pth")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(failing, tmp_path / "a")
    with pytest.raises(FetchError, match="HTTP 404"):  # another folder is another download
        fetch(failing, tmp_path / "b")
    (tmp_path / "a" / failing.filename).write_bytes(PAYLOAD)  # put there by hand meanwhile
    assert fetch(failing, tmp_path / "a", opener=_no_network).read_bytes() == PAYLOAD


@pytest.mark.parametrize(("env", "keyword", "retry"), [
    ("0", None, None), ("5", None, "retry in 5 s"), ("junk", None, "retry in 60 s"),
    (None, 0, None), ("0", 30, "retry in 30 s")])
def test_cooldown_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, keyword: float | None,
    retry: str | None,
) -> None:
    """``$SIMAM_VIZ_FETCH_COOLDOWN_S`` (0: none), overridden by the ``cooldown_s`` keyword."""
    if env is not None:
        monkeypatch.setenv("SIMAM_VIZ_FETCH_COOLDOWN_S", env)
    monkeypatch.setattr(fetch_module, "_now", lambda: 50.0)
    url = f"http://127.0.0.1:{closed_port()}/x.pth"
    for _ in range(2):
        with pytest.raises(FetchError) as exc:
            fetch(_entry(url), tmp_path, cooldown_s=keyword)
    message = one_line(exc)
    if retry is None:
        assert "cannot reach the server" in message  # the network was tried again
    else:
        assert f"failed 0 s ago; {retry}," in message
