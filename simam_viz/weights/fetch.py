"""Downloading official checkpoints: progress, hash check, atomic write, clear next steps.

A download either ends with the verified file under its final name or leaves nothing behind:
bytes go to a temporary file in the same folder, the sha256 is computed while streaming, and
only a verified file is renamed into place. Every failure is a one-line ``FetchError`` that
says what to do by hand, since these machines are often offline.

The app runs this on behalf of anyone who opens the page, so a fetch is also bounded:

- one download per registry entry and folder per process: a second ``fetch()`` of the same
  entry while one runs (another session's click) waits for it and gets its result or failure;
- at most ``max_download_bytes(entry)`` bytes are taken from the server, whatever it sends;
- a redirect from https to anything else (http, ftp) is refused;
- after a failure, the entry is not asked for again for ``$SIMAM_VIZ_FETCH_COOLDOWN_S``
  seconds (default 60): further fetches fail at once, without the network, saying when to
  retry;
- ``folder_label`` names the folder in messages instead of its path (a public page must not
  show server paths), and a read-only folder is said to be read-only in one line.

``$SIMAM_VIZ_FETCH=0`` (see :func:`fetch_enabled`) is the app's switch for public
deployments: it hides the fetch panel. It does not stop this function: an operator's
``simam-viz fetch`` still works there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import math
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simam_viz.errors import FetchError, SimamVizError
from simam_viz.weights.checkpoints import readable_by_all
from simam_viz.weights.registry import (
    CHECKPOINT_SUFFIXES,
    RegistryEntry,
    find_present,
    hash_matches,
    verify_file,
)

__all__ = [
    "COOLDOWN_ENV",
    "FETCH_ENV",
    "fetch",
    "fetch_enabled",
    "manual_instructions",
    "max_download_bytes",
]

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20
Opener = Callable[..., Any]
# Called with (bytes received so far, total or None when the server sends no length).
Progress = Callable[[int, int | None], None]

FETCH_ENV = "SIMAM_VIZ_FETCH"  # "0": no fetch panel in the app (public deployments)
COOLDOWN_ENV = "SIMAM_VIZ_FETCH_COOLDOWN_S"
DEFAULT_COOLDOWN_S = 60.0
# Without a registered size: a ResNet-50 training file with its optimizer state is ~200 MB.
DEFAULT_MAX_MB = 400
MB = 1_000_000


def fetch_enabled() -> bool:
    """Whether the app offers downloads: ``$SIMAM_VIZ_FETCH`` is not ``0`` (default ``1``).

    A public deployment sets it to 0 so that visitors cannot make the server download
    hundreds of MB; the checkpoints are then put in place by an operator.
    """
    return os.environ.get(FETCH_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def max_download_bytes(entry: RegistryEntry) -> int:
    """The most bytes a download of ``entry`` may take before it is stopped and discarded:
    1.5 x the registered size (at least 16 MB), or ``DEFAULT_MAX_MB`` without one."""
    megabytes = max(entry.size_mb * 1.5, 16) if entry.size_mb else DEFAULT_MAX_MB
    return int(megabytes * MB)


def _megabytes(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= MB else f"{n} bytes"


def manual_instructions(entry: RegistryEntry, folder: Path, *,
                        folder_label: str | None = None) -> str:
    """One sentence telling the user how to get the file by hand and where to put it.

    With ``folder_label`` ("the checkpoints folder") the folder is named by it, not by its
    path, for a page a server shows to the public.
    """
    if folder_label:
        target, place = entry.filename, f" in {folder_label}"
    else:
        target, place = str(folder / entry.filename), ""
    if entry.source == "gdrive_folder":
        extra = f" (or {entry.mirror})" if entry.mirror else ""
        others = [n for n in entry.names if n != entry.filename]
        alias = f" (or as {' / '.join(others)})" if others else ""
        return (
            f"open {entry.urls[0]}{extra}, download the ResNet-50 file and save it as "
            f"{target}{alias}{place}"
        )
    return f"download {entry.urls[0]} by hand and save it as {target}{place}"


_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _write_failure(entry: RegistryEntry, folder: Path, folder_label: str | None,
                   exc: OSError) -> FetchError:
    """One line for a folder that refused the file; with a label, no path in it."""
    reason = exc.strerror or type(exc).__name__
    if folder_label and exc.errno in _READ_ONLY:
        return FetchError(
            f"{entry.name}: {folder_label} is read-only on this server; an operator can add "
            f"{entry.filename} to it (`simam-viz fetch {entry.name}`)"
        )
    where = folder_label or str(folder)
    return FetchError(f"{entry.name}: cannot write to {where} ({reason})")


class _WriteError(Exception):
    """The local disk refused the bytes (full, read-only): retrying another URL cannot help."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class _CappedWriter:
    """A file's ``write`` that refuses to grow it past ``limit`` bytes (for gdown, which
    writes into the file it is given)."""

    def __init__(self, out: Any, limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise _too_large(self.limit)
        try:
            return self.out.write(data)
        except OSError as exc:
            raise _WriteError(exc) from exc

    def __getattr__(self, name: str) -> Any:  # flush, tell, ...
        return getattr(self.out, name)


def _too_large(limit: int) -> FetchError:
    return FetchError(f"stopped after {_megabytes(limit)}: more than this checkpoint can be, "
                      "the download was discarded")


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, except one from https to anything but https."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if old == "https" and new != "https":
            with contextlib.suppress(Exception):
                fp.close()
            raise FetchError(f"refused a redirect from https to {new or 'a relative scheme'}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, timeout: float) -> Any:
    """``urlopen`` without https -> http downgrades (the default opener)."""
    return urllib.request.build_opener(_NoDowngradeRedirect).open(url, timeout=timeout)


def _temp_path(folder: Path, entry: RegistryEntry) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=folder)
    os.close(fd)
    return Path(name)


def _stream(url: str, tmp: Path, label: str, progress: bool, opener: Opener,
            on_progress: Progress | None, max_bytes: int) -> str:
    """Stream ``url`` into ``tmp``; return the sha256; raise on short or oversized reads.

    ``on_progress`` gets the running count after every chunk, for a GUI progress bar; the
    tqdm bar (``progress``) is for the terminal and stays independent of it.
    """
    digest = hashlib.sha256()
    with opener(url, timeout=30) as response:
        total = response.headers.get("Content-Length")
        expected = int(total) if total and total.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise FetchError(f"the server announced {_megabytes(expected)}, more than this "
                             f"checkpoint can be ({_megabytes(max_bytes)} at most); refused")
        received = 0
        try:
            out = tmp.open("wb")
        except OSError as exc:
            raise _WriteError(exc) from exc
        with out, tqdm(
            total=expected, unit="B", unit_scale=True, desc=label[:30],
            disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _WriteError(exc) from exc
                digest.update(chunk)
                bar.update(len(chunk))
                if on_progress is not None:
                    on_progress(received, expected)
    if expected is not None and received != expected:
        raise FetchError(f"download interrupted: got {received} of {expected} bytes")
    return digest.hexdigest()


def _http(entry: RegistryEntry, tmp: Path, progress: bool, opener: Opener,
          on_progress: Progress | None, max_bytes: int) -> str:
    errors = []
    for url in entry.urls:
        try:
            return _stream(url, tmp, entry.filename, progress, opener, on_progress, max_bytes)
        except FetchError as exc:  # first: FetchError is a ValueError too
            errors.append(str(exc))
        except urllib.error.HTTPError as exc:
            errors.append(f"HTTP {exc.code}" + (f" from {url}" if len(entry.urls) > 1 else ""))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            errors.append(f"cannot reach the server ({_one_line(reason)})")
        except http.client.HTTPException as exc:  # IncompleteRead of a chunked body, etc.
            errors.append(f"download interrupted ({type(exc).__name__})")
    raise FetchError("; ".join(errors))


def _one_line(value: object, limit: int = 160) -> str:
    """First line of a message, shortened: gdown and urllib errors can span a page."""
    text = str(value).strip().splitlines()
    return (text[0] if text else "")[:limit]


def _describe(exc: BaseException) -> str:
    """Short cause of a gdown failure; requests' connection errors are a page of pool details."""
    if type(exc).__module__.startswith(("requests", "urllib3")):
        return f"cannot reach Google Drive, {type(exc).__name__}"
    detail = _one_line(exc, 100)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _looks_like_html(path: Path) -> bool:
    """Drive answers a quota or sign-in problem with a web page; that is not a checkpoint."""
    with path.open("rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html"))


def _gdrive(entry: RegistryEntry, tmp: Path, progress: bool, gdown: Any, max_bytes: int) -> str:
    file_id = entry.gdrive_id
    if entry.source == "gdrive_folder":
        listing = gdown.download_folder(id=entry.gdrive_id, skip_download=True, quiet=True)
        picked = _pick_resnet50(listing or [], entry)
        if picked is None:
            raise FetchError("no ResNet-50 file found in the Google Drive folder listing")
        file_id = picked.id
    # An open file, not a path: given a path, gdown keeps its own '.part' file next to it
    # when a transfer fails, which would leave a half file in the checkpoints folder.
    try:
        out = tmp.open("wb")
    except OSError as exc:
        raise _WriteError(exc) from exc
    with out:
        result = gdown.download(id=file_id, output=_CappedWriter(out, max_bytes),
                                quiet=not progress)
    if not result or tmp.stat().st_size == 0 or _looks_like_html(tmp):
        raise FetchError("Google Drive refused the download (quota or sign-in page)")
    digest = hashlib.sha256()
    with tmp.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_DEPTH = re.compile(r"(?:resnet|res|r)(\d+)(?!\d)")
_DEPTHS = {"18", "34", "50", "101", "152", "200"}


def _pick_resnet50(listing: list[Any], entry: RegistryEntry) -> Any | None:
    """The ResNet-50 checkpoint of a folder that holds one per network.

    The folder's layout is not published, and the file names the training code writes
    (``model_best_in_100_epochs.pth.tar``) do not say the depth, so the depth may only be in a
    sub-folder name: anything whose path names another depth (18, 34, 101, MobileNet...) is
    ruled out, then a path naming 50 wins over one that does not, then the candidate order.
    """
    ranked = []
    for item in listing:
        path = str(item.path).replace("\\", "/").lower()
        base = path.rsplit("/", 1)[-1]
        if not base.endswith(CHECKPOINT_SUFFIXES):
            continue
        flat = re.sub(r"[\s_\-]", "", path)
        depths = set(_DEPTH.findall(flat)) & _DEPTHS
        other_net = any(k in flat for k in ("resnext", "rx50", "mobilenet", "mv2", "wide"))
        if depths - {"50"} or other_net:
            continue
        names = [n.lower() for n in entry.names]
        rank = names.index(base) if base in names else len(names)
        if "50" not in depths and rank == len(names):
            continue  # neither says ResNet-50 nor has a name the SimAM code writes
        ranked.append(("50" not in depths, rank, path, item))
    return min(ranked, key=lambda r: r[:3])[3] if ranked else None




# ---- one download per entry, and a pause after a failure --------------------------------------

Key = tuple[str, str]  # (registry name, resolved folder)


class _Flight:
    """A download in progress; callers that ask for the same entry meanwhile wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Path | None = None
        self.error: BaseException | None = None

    def outcome(self, entry: RegistryEntry) -> Path:
        """The leader's verified file, or its failure raised again (a fresh exception of the
        same type and message: one exception object must not be raised in two threads)."""
        self.done.wait()
        if self.error is None:
            assert self.result is not None
            return self.result
        if isinstance(self.error, SimamVizError):
            raise type(self.error)(str(self.error)) from self.error
        raise FetchError(f"{entry.name}: the download this request waited for stopped "
                         f"({type(self.error).__name__})") from self.error


_STATE_LOCK = threading.Lock()
_FLIGHTS: dict[Key, _Flight] = {}
# (monotonic time, message) of the last failed download per key; removed on success.
_FAILURES: dict[Key, tuple[float, str]] = {}
_now = time.monotonic  # replaceable by a fake clock in tests


def _cooldown_seconds(cooldown_s: float | None) -> float:
    if cooldown_s is not None:
        return max(0.0, cooldown_s)
    raw = os.environ.get(COOLDOWN_ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_COOLDOWN_S
    except ValueError:
        LOG.warning("%s=%r is not a number of seconds; using %.0f", COOLDOWN_ENV, raw,
                    DEFAULT_COOLDOWN_S)
        return DEFAULT_COOLDOWN_S


def _check_cooldown(entry: RegistryEntry, folder: Path, key: Key, cooldown_s: float,
                    folder_label: str | None) -> None:
    """Raise at once, without the network, while ``entry`` failed less than ``cooldown_s``
    seconds ago: a broken or offline upstream is not asked again on every click."""
    with _STATE_LOCK:
        failed = _FAILURES.get(key)
    if failed is None:
        return
    age = _now() - failed[0]
    if age >= cooldown_s:
        return
    raise FetchError(
        f"{entry.name}: the last download failed {age:.0f} s ago; retry in "
        f"{max(1, math.ceil(cooldown_s - age))} s, or "
        f"{manual_instructions(entry, folder, folder_label=folder_label)}"
    )


def fetch(
    entry: RegistryEntry,
    folder: str | Path,
    *,
    progress: bool = False,
    opener: Opener | None = None,
    gdown: Any | None = None,
    on_progress: Progress | None = None,
    max_bytes: int | None = None,
    cooldown_s: float | None = None,
    folder_label: str | None = None,
    admission: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Path:
    """Download ``entry`` into ``folder`` unless a verified copy is there; return its path.

    ``opener`` (``urllib.request.urlopen``'s signature) and ``gdown`` (the module's
    ``download``/``download_folder``) are parameters so tests can stand in for the network;
    the default opener refuses https -> http redirects. ``on_progress(received,
    total_or_None)`` is called per chunk of an HTTP download so the app can draw its own bar;
    gdown reports only to the terminal, so Drive files do not call it.

    ``max_bytes`` (default :func:`max_download_bytes`) stops a download that grows past it;
    ``cooldown_s`` (default ``$SIMAM_VIZ_FETCH_COOLDOWN_S`` or 60) is how long a failed entry
    is refused before the network is tried again; ``folder_label`` replaces the folder's path
    in messages; ``admission()`` is entered around the download itself (not around waiting
    for another caller's download of the same entry), e.g. the app's concurrency slot.

    A call made while the same entry is being downloaded into the same folder waits for that
    download and returns its file or raises its failure.
    """
    folder = Path(folder)
    key = (entry.name, str(folder.resolve()))
    with _STATE_LOCK:
        flight = _FLIGHTS.get(key)
        leader = flight is None
        if flight is None:
            flight = _FLIGHTS[key] = _Flight()
    if not leader:
        LOG.info("%s: waiting for the download already running", entry.name)
        return flight.outcome(entry)
    try:
        flight.result = _fetch_once(
            entry, folder, key, progress=progress, opener=opener or _open, gdown=gdown,
            on_progress=on_progress,
            max_bytes=max_bytes if max_bytes is not None else max_download_bytes(entry),
            cooldown_s=_cooldown_seconds(cooldown_s), folder_label=folder_label,
            admission=admission,
        )
        return flight.result
    except BaseException as exc:
        flight.error = exc
        raise
    finally:
        with _STATE_LOCK:
            _FLIGHTS.pop(key, None)
        flight.done.set()


def _fetch_once(
    entry: RegistryEntry,
    folder: Path,
    key: Key,
    *,
    progress: bool,
    opener: Opener,
    gdown: Any | None,
    on_progress: Progress | None,
    max_bytes: int,
    cooldown_s: float,
    folder_label: str | None,
    admission: Callable[[], AbstractContextManager[Any]] | None,
) -> Path:
    """One caller's fetch: the file present, the cooldown, then the download proper."""
    present = find_present(entry, folder)
    if present is not None and verify_file(entry, present) != "hash mismatch":
        LOG.info("%s: already present at %s", entry.name, present)
        return present
    if present is not None:
        LOG.warning("%s: %s does not match the published hash; downloading again",
                    entry.name, present)
    _check_cooldown(entry, folder, key, cooldown_s, folder_label)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(folder, entry)
    except OSError as exc:
        raise _write_failure(entry, folder, folder_label, exc) from exc
    try:
        with admission() if admission is not None else contextlib.nullcontext():
            try:
                final = _download(entry, folder, tmp, progress=progress, opener=opener,
                                  gdown=gdown, on_progress=on_progress, max_bytes=max_bytes,
                                  folder_label=folder_label)
            except FetchError as exc:
                with _STATE_LOCK:
                    _FAILURES[key] = (_now(), str(exc))
                raise
        with _STATE_LOCK:
            _FAILURES.pop(key, None)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _download(
    entry: RegistryEntry,
    folder: Path,
    tmp: Path,
    *,
    progress: bool,
    opener: Opener,
    gdown: Any | None,
    on_progress: Progress | None,
    max_bytes: int,
    folder_label: str | None,
) -> Path:
    """Bytes into ``tmp``, verified, renamed to the entry's file name; every failure is one
    ``FetchError`` line."""
    manual = manual_instructions(entry, folder, folder_label=folder_label)
    try:
        if entry.source == "http":
            digest = _http(entry, tmp, progress, opener, on_progress, max_bytes)
        else:
            if gdown is None:
                import gdown as gdown_module

                gdown = gdown_module
            digest = _gdrive(entry, tmp, progress, gdown, max_bytes)
    except _WriteError as exc:
        raise _write_failure(entry, folder, folder_label, exc.error) from exc
    except FetchError as exc:
        raise FetchError(f"{entry.name}: {exc}; {manual}") from exc
    except Exception as exc:  # gdown raises many kinds; all mean "do it by hand"
        raise FetchError(f"{entry.name}: download failed ({_describe(exc)}); {manual}") from exc
    if hash_matches(entry, digest) is False:
        expected = entry.sha256 or f"{entry.sha256_prefix}... (the prefix in the URL)"
        raise FetchError(
            f"{entry.name}: sha256 mismatch (got {digest[:16]}..., expected {expected}); "
            "the download was discarded"
        )
    final = folder / entry.filename
    try:
        readable_by_all(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise _write_failure(entry, folder, folder_label, exc) from exc
    LOG.info("%s: downloaded to %s (sha256 %s)", entry.name, final, digest)
    return final
