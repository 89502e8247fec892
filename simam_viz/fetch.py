"""Downloading official checkpoints: progress, hash check, atomic write, clear next steps.

A download either ends with the verified file under its final name or leaves nothing behind:
bytes go to a temporary file in the same folder, the sha256 is computed while streaming, and
only a verified file is renamed into place. Every failure is a one-line ``FetchError`` that
says what to do by hand, since these machines are often offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simam_viz.checkpoints import readable_by_all
from simam_viz.errors import FetchError
from simam_viz.registry import (
    CHECKPOINT_SUFFIXES,
    RegistryEntry,
    find_present,
    hash_matches,
    verify_file,
)

__all__ = ["fetch", "manual_instructions"]

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20
Opener = Callable[..., Any]
# Called with (bytes received so far, total or None when the server sends no length).
Progress = Callable[[int, int | None], None]


def manual_instructions(entry: RegistryEntry, folder: Path) -> str:
    """One sentence telling the user how to get the file by hand and where to put it."""
    target = folder / entry.filename
    if entry.source == "gdrive_folder":
        extra = f" (or {entry.mirror})" if entry.mirror else ""
        others = [n for n in entry.names if n != entry.filename]
        alias = f" (or as {' / '.join(others)})" if others else ""
        return (
            f"open {entry.urls[0]}{extra}, download the ResNet-50 file and save it as "
            f"{target}{alias}"
        )
    return f"download {entry.urls[0]} by hand and save it as {target}"


class _WriteError(Exception):
    """The local disk refused the bytes (full, read-only): retrying another URL cannot help."""


def _temp_path(folder: Path, entry: RegistryEntry) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=folder)
    os.close(fd)
    return Path(name)


def _stream(url: str, tmp: Path, label: str, progress: bool, opener: Opener,
            on_progress: Progress | None = None) -> str:
    """Stream ``url`` into ``tmp``; return the sha256; raise on short reads.

    ``on_progress`` gets the running count after every chunk, for a GUI progress bar; the
    tqdm bar (``progress``) is for the terminal and stays independent of it.
    """
    digest = hashlib.sha256()
    with opener(url, timeout=30) as response:
        total = response.headers.get("Content-Length")
        expected = int(total) if total and total.isdigit() else None
        received = 0
        with tmp.open("wb") as out, tqdm(
            total=expected, unit="B", unit_scale=True, desc=label[:30],
            disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _WriteError(exc.strerror or str(exc)) from exc
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if on_progress is not None:
                    on_progress(received, expected)
    if expected is not None and received != expected:
        raise FetchError(f"download interrupted: got {received} of {expected} bytes")
    return digest.hexdigest()


def _http(entry: RegistryEntry, tmp: Path, progress: bool, opener: Opener,
          on_progress: Progress | None = None) -> str:
    errors = []
    for url in entry.urls:
        try:
            return _stream(url, tmp, entry.filename, progress, opener, on_progress)
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


def _gdrive(entry: RegistryEntry, tmp: Path, progress: bool, gdown: Any) -> str:
    file_id = entry.gdrive_id
    if entry.source == "gdrive_folder":
        listing = gdown.download_folder(id=entry.gdrive_id, skip_download=True, quiet=True)
        picked = _pick_resnet50(listing or [], entry)
        if picked is None:
            raise FetchError("no ResNet-50 file found in the Google Drive folder listing")
        file_id = picked.id
    # An open file, not a path: given a path, gdown keeps its own '.part' file next to it
    # when a transfer fails, which would leave a half file in the checkpoints folder.
    with tmp.open("wb") as out:
        result = gdown.download(id=file_id, output=out, quiet=not progress)
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


def fetch(
    entry: RegistryEntry,
    folder: str | Path,
    *,
    progress: bool = False,
    opener: Opener | None = None,
    gdown: Any | None = None,
    on_progress: Progress | None = None,
) -> Path:
    """Download ``entry`` into ``folder`` unless a verified copy is there; return its path.

    ``opener`` (``urllib.request.urlopen``'s signature) and ``gdown`` (the module's
    ``download``/``download_folder``) are parameters so tests can stand in for the network.
    ``on_progress(received, total_or_None)`` is called per chunk of an HTTP download so the
    app can draw its own bar; gdown reports only to the terminal, so Drive files do not call
    it.
    """
    folder = Path(folder)
    present = find_present(entry, folder)
    if present is not None and verify_file(entry, present) != "hash mismatch":
        LOG.info("%s: already present at %s", entry.name, present)
        return present
    if present is not None:
        LOG.warning("%s: %s does not match the published hash; downloading again",
                    entry.name, present)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(folder, entry)
    except OSError as exc:
        raise FetchError(f"{entry.name}: cannot write to {folder} ({_one_line(exc)})") from exc
    try:
        try:
            if entry.source == "http":
                digest = _http(entry, tmp, progress, opener or urllib.request.urlopen,
                               on_progress)
            else:
                if gdown is None:
                    import gdown as gdown_module

                    gdown = gdown_module
                digest = _gdrive(entry, tmp, progress, gdown)
        except _WriteError as exc:
            raise FetchError(f"{entry.name}: cannot write to {folder} ({exc})") from exc
        except FetchError as exc:
            raise FetchError(f"{entry.name}: {exc}; {manual_instructions(entry, folder)}") from exc
        except Exception as exc:  # gdown raises many kinds; all mean "do it by hand"
            raise FetchError(
                f"{entry.name}: download failed ({_describe(exc)}); "
                f"{manual_instructions(entry, folder)}"
            ) from exc
        if hash_matches(entry, digest) is False:
            expected = entry.sha256 or f"{entry.sha256_prefix}... (the prefix in the URL)"
            raise FetchError(
                f"{entry.name}: sha256 mismatch (got {digest[:16]}..., expected {expected}); "
                "the download was discarded"
            )
        final = folder / entry.filename
        readable_by_all(tmp)
        os.replace(tmp, final)
        LOG.info("%s: downloaded to %s (sha256 %s)", entry.name, final, digest)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
