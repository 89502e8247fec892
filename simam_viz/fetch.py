"""Downloading official checkpoints: progress, hash check, atomic write, clear next steps.

A download either ends with the verified file under its final name or leaves nothing behind:
bytes go to a temporary file in the same folder, the sha256 is computed while streaming, and
only a verified file is renamed into place. Every failure is a one-line ``FetchError`` that
says what to do by hand, since these machines are often offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simam_viz.errors import FetchError
from simam_viz.registry import RegistryEntry, find_present, hash_matches

__all__ = ["fetch", "manual_instructions"]

CHUNK = 1 << 20
Opener = Callable[..., Any]


def manual_instructions(entry: RegistryEntry, folder: Path) -> str:
    """One sentence telling the user how to get the file by hand and where to put it."""
    target = folder / entry.filename
    if entry.source == "gdrive_folder":
        extra = f" (or {entry.mirror})" if entry.mirror else ""
        return (
            f"open {entry.urls[0]}{extra}, download the ResNet-50 file and save it as {target}"
        )
    return f"download {entry.urls[0]} by hand and save it as {target}"


def _temp_path(folder: Path, entry: RegistryEntry) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=folder)
    os.close(fd)
    return Path(name)


def _stream(url: str, tmp: Path, progress: bool, opener: Opener) -> str:
    """Stream ``url`` into ``tmp``; return the sha256; raise on short reads."""
    digest = hashlib.sha256()
    with opener(url, timeout=30) as response:
        total = response.headers.get("Content-Length")
        expected = int(total) if total and total.isdigit() else None
        received = 0
        with tmp.open("wb") as out, tqdm(
            total=expected, unit="B", unit_scale=True, desc=tmp.name.split(".")[1][:30],
            disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise FetchError(f"download interrupted: got {received} of {expected} bytes")
    return digest.hexdigest()


def _http(entry: RegistryEntry, tmp: Path, progress: bool, opener: Opener) -> str:
    errors = []
    for url in entry.urls:
        try:
            return _stream(url, tmp, progress, opener)
        except urllib.error.HTTPError as exc:
            errors.append(f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            errors.append(f"cannot reach the server ({reason})")
        except FetchError as exc:
            errors.append(str(exc))
    raise FetchError("; ".join(errors))


def _gdrive(entry: RegistryEntry, tmp: Path, progress: bool, gdown: Any) -> str:
    file_id = entry.gdrive_id
    if entry.source == "gdrive_folder":
        listing = gdown.download_folder(id=entry.gdrive_id, skip_download=True, quiet=True)
        picked = _pick_resnet50(listing or [], entry)
        if picked is None:
            raise FetchError("no ResNet-50 file found in the Google Drive folder listing")
        file_id = picked.id
    result = gdown.download(id=file_id, output=str(tmp), quiet=not progress)
    if not result or not tmp.is_file() or tmp.stat().st_size == 0:
        raise FetchError("Google Drive refused the download (quota or login page)")
    digest = hashlib.sha256()
    with tmp.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_resnet50(listing: list[Any], entry: RegistryEntry) -> Any | None:
    """The folder holds one file per depth: prefer a candidate name, else 'resnet50'/'r50'."""
    def base(item: Any) -> str:
        return Path(str(item.path)).name.lower()

    for name in entry.names:
        for item in listing:
            if base(item) == name.lower():
                return item
    for item in listing:
        name = base(item).replace("-", "").replace("_", "")
        if ("resnet50" in name or "r50" in name) and name.endswith((".pth", ".tar", ".pt")):
            return item
    return None


def fetch(
    entry: RegistryEntry,
    folder: str | Path,
    *,
    progress: bool = True,
    opener: Opener | None = None,
    gdown: Any | None = None,
) -> Path:
    """Download ``entry`` into ``folder`` unless a verified copy is there; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = find_present(entry, folder)
    if present is not None:
        from simam_viz.registry import verify_file

        if verify_file(entry, present) != "hash mismatch":
            return present
    tmp = _temp_path(folder, entry)
    try:
        try:
            if entry.source == "http":
                digest = _http(entry, tmp, progress, opener or urllib.request.urlopen)
            else:
                if gdown is None:
                    import gdown as gdown_module

                    gdown = gdown_module
                digest = _gdrive(entry, tmp, progress, gdown)
        except FetchError as exc:
            raise FetchError(
                f"{entry.name}: {exc}; {manual_instructions(entry, folder)}"
            ) from exc
        except Exception as exc:  # gdown raises many kinds; all mean "do it by hand"
            raise FetchError(
                f"{entry.name}: download failed ({type(exc).__name__}); "
                f"{manual_instructions(entry, folder)}"
            ) from exc
        if hash_matches(entry, digest) is False:
            expected = entry.sha256 or f"{entry.sha256_prefix}..."
            raise FetchError(
                f"{entry.name}: sha256 mismatch (got {digest[:12]}..., expected {expected}); "
                "the file was removed"
            )
        final = folder / entry.filename
        os.replace(tmp, final)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

