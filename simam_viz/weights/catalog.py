"""Which checkpoints a user can pick: demo models, official files present, user files.

The app and the CLI both offer "the models you have" and accept a name or a path; this module
answers both, with each model's label (arch, source, top-1 where known) and the preprocessing
the registry records for official files. User paths must stay inside the checkpoints folder.

A file named like an official checkpoint is only called official when its bytes match the
published hash: otherwise it is listed as unverified, without the published top-1, which it
has no claim to (the same verdict ``simam-viz list`` prints as "hash mismatch").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from simam_viz.errors import CheckpointError
from simam_viz.networks.models import ARCHS
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.resources import bundled_checkpoints
from simam_viz.weights.checkpoints import CheckpointIdentity, file_sha256, identify_checkpoint
from simam_viz.weights.registry import (
    CHECKPOINT_SUFFIXES,
    RegistryEntry,
    checkpoints_dir,
    find_present,
    hash_matches,
    load_registry,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "UNVERIFIED",
    "CatalogItem",
    "available",
    "available_demo",
    "checkpoint_files",
    "file_version",
    "resolve",
]

LOG = logging.getLogger(__name__)



@dataclass(frozen=True)
class CatalogItem:
    """A checkpoint the user can choose, with what the UI shows about it."""

    key: str  # stable id: "demo/simam_resnet50", "official/<name>", "file/<relative path>"
    path: Path
    arch: str
    source: str  # "demo", "official", "unverified" or "user file"
    top1: float | None = None
    preprocessing: Preprocessing | None = None
    entry: RegistryEntry | None = None
    note: str = ""  # why an "unverified" item is not official, e.g. "hash mismatch"

    @property
    def short_name(self) -> str:
        """Name used in figure titles and file names.

        An unverified file keeps its entry's title (it is most likely a re-saved or partial
        copy of it) but says so, so a figure never passes it off as the published weights.
        """
        if self.entry is not None:
            suffix = " (unverified)" if self.source == UNVERIFIED else ""
            return f"{self.entry.title}{suffix}"
        title = ARCHS[self.arch].title
        return f"{title} demo" if self.source == "demo" else f"{title} ({self.path.name})"

    @property
    def label(self) -> str:
        """What the model picker shows: title, then source, why unverified, and top-1."""
        top1 = f", top-1 {self.top1:.2f}%" if self.top1 is not None else ""
        note = f": {self.note}" if self.note else ""
        title = self.entry.title if self.entry else ARCHS[self.arch].title
        return f"{title} [{self.source}{note}{top1}]"


UNVERIFIED = "unverified"

# sha256 of each official-looking file, per path, with the file_version it was computed for.
# available() runs every 20 s in the app and a checkpoint is ~100 MB, so an unchanged file is
# hashed once per process; a replaced file has a new version and is hashed again. One entry
# per path keeps the dict as small as the folder. The lock is held while hashing, so two
# sessions asking at once do not both read the same file.
_DIGESTS: dict[Path, tuple[tuple[int, ...], str]] = {}
_DIGESTS_LOCK = threading.Lock()


def _cached_sha256(path: Path) -> str:
    """The file's sha256, read from disk only when its ``file_version`` changed."""
    key = path.resolve()
    with _DIGESTS_LOCK:
        version = file_version(key)
        cached = _DIGESTS.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        digest = file_sha256(key)
        _DIGESTS[key] = (version, digest)
        return digest


# What each unknown file is (None: not a checkpoint this product can load), per path, with the
# file_version it was identified at. Identifying means loading the whole file, and
# available() runs every 20 s in the app, so an unchanged file is read once per process and
# a replaced one again. Bounded (least recently asked for first out): a folder with more
# files than this still works, it is only read more often.
_IDENTITIES: OrderedDict[Path, tuple[tuple[int, ...], CheckpointIdentity | None]] = OrderedDict()
_IDENTITIES_MAX = 256
_IDENTITIES_LOCK = threading.Lock()


def _cached_identity(path: Path) -> CheckpointIdentity | None:
    """``identify_checkpoint(path)``, or None when it is not a loadable checkpoint, read from
    disk only when the file's ``file_version`` changed (held under the lock, like hashing, so
    two sessions do not both load one file)."""
    key = path.resolve()
    with _IDENTITIES_LOCK:
        try:
            version = file_version(key)
        except OSError:  # gone since the folder was listed
            _IDENTITIES.pop(key, None)
            return None
        cached = _IDENTITIES.get(key)
        if cached is not None and cached[0] == version:
            _IDENTITIES.move_to_end(key)
            return cached[1]
        try:
            ident: CheckpointIdentity | None = identify_checkpoint(key)
        except CheckpointError:
            ident = None
        _IDENTITIES[key] = (version, ident)
        _IDENTITIES.move_to_end(key)
        while len(_IDENTITIES) > _IDENTITIES_MAX:
            _IDENTITIES.popitem(last=False)
        return ident


def _official_verdict(entry: RegistryEntry, path: Path) -> str | None:
    """None when ``path`` may be called official, else why not ("hash mismatch", ...).

    The same rule as ``registry.verify_file`` (which ``simam-viz list`` prints), on a cached
    digest. An entry without a published hash is not hashed at all: there is nothing to
    compare against.
    """
    if entry.sha256 is None and entry.sha256_prefix is None:
        return None
    try:
        digest = _cached_sha256(path)
    except OSError:
        return "unreadable"
    if hash_matches(entry, digest) is False:
        LOG.warning("%s is named like %s but its sha256 differs: listed as unverified",
                    path, entry.name)
        return "hash mismatch"
    return None


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint-looking files under ``folder`` (sub-folders too), sorted.

    Anything under a dot-name is skipped (fetch's ``.NAME.part`` temp files, ``.git``): the
    app's list and ``simam-viz list`` both come from this one walk, so they cannot disagree.
    """
    found = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES):
            found.append(path)
    return found


def available_demo(folder: str | Path | None = None) -> list[CatalogItem]:
    """The demo models on offer: the folder's own, then the bundled ones (see below)."""
    return _demo_items(Path(folder) if folder is not None else checkpoints_dir())


def _demo_items(folder: Path) -> list[CatalogItem]:
    """The demo models of ``folder/demo``, then the bundled ones it does not shadow.

    The package ships its demo models (``resources.bundled_checkpoints()``), so an installed
    ``simam-viz`` works offline whatever the checkpoints folder is; a folder's own
    ``demo/<name>`` replaces the bundled model of that name. ``$SIMAM_VIZ_DEMO_MODELS=0``
    leaves the bundled ones out (a deployment that offers only its own weights).
    """
    items = _demo_folder_items(folder)
    if os.environ.get("SIMAM_VIZ_DEMO_MODELS", "1") == "0":
        return items
    keys = {item.key for item in items}
    paths = {item.path.resolve() for item in items}
    for item in _demo_folder_items(bundled_checkpoints()):
        if item.key not in keys and item.path.resolve() not in paths:
            items.append(item)
    return items


def _demo_folder_items(folder: Path) -> list[CatalogItem]:
    items = []
    for path in sorted((folder / "demo").glob("*.safetensors")):
        sidecar = path.with_suffix(".json")
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        accuracy = meta.get("provenance", {}).get("test_top1")
        items.append(CatalogItem(f"demo/{path.stem}", path, str(meta.get("arch")), "demo",
                                 accuracy))
    return items


def available(folder: str | Path | None = None) -> list[CatalogItem]:
    """Every loadable-looking checkpoint: demo set first, then official, then user files.

    Official files whose bytes differ from the published hash come back with source
    ``"unverified"`` and no top-1 (hashed once per file version, see ``_DIGESTS``); other
    files are identified once per file version (``_IDENTITIES``).
    """
    folder = Path(folder) if folder is not None else checkpoints_dir()
    items = _demo_items(folder)
    seen = {item.path.resolve() for item in items}
    for entry in load_registry().values():
        path = find_present(entry, folder)
        if path is None:
            continue
        problem = _official_verdict(entry, path)
        # The key stays "official/<name>" either way so a selection survives re-verification.
        if problem is None:
            items.append(CatalogItem(f"official/{entry.name}", path, entry.arch, "official",
                                     entry.top1, entry.preprocessing, entry))
        else:
            items.append(CatalogItem(f"official/{entry.name}", path, entry.arch, UNVERIFIED,
                                     None, entry.preprocessing, entry, note=problem))
        seen.add(path.resolve())
    for path in checkpoint_files(folder):
        if path.resolve() in seen:
            continue
        if path.parent.name == "demo" and path.suffix == ".safetensors":
            continue
        ident = _cached_identity(path)
        if ident is None:
            continue
        rel = path.relative_to(folder).as_posix()
        items.append(CatalogItem(f"file/{rel}", path, ident.arch, "user file"))
    return items


def default_selection(items: list[CatalogItem]) -> list[CatalogItem]:
    """What a new visitor compares: the demo trio, else the first checkpoint found.

    The app's model list and the server's start-up warm-up both use this, so the models
    warmed are the ones the first visitor's page asks for.
    """
    return [i for i in items if i.source == "demo"][:3] or items[:1]


def resolve(spec: str, folder: str | Path | None = None) -> CatalogItem:
    """A catalog item from a key (``demo/...``), a registry name, a bare demo name or a path."""
    folder = Path(folder) if folder is not None else checkpoints_dir()
    items = available(folder)
    for item in items:
        short = item.key.split("/", 1)[1]
        if spec in (item.key, short):
            return item
    path = Path(spec)
    if path.is_file():
        ident = identify_checkpoint(path)
        return CatalogItem(f"file/{path.name}", path, ident.arch, "user file")
    known = ", ".join(i.key for i in items) or "none (run `simam-viz list`)"
    raise CheckpointError(f"unknown checkpoint {spec!r}; available: {known}")


def file_version(path: str | Path) -> tuple[int, ...]:
    """Which version of a checkpoint (and its JSON sidecar) is on disk, without reading it.

    Caches of loaded models are keyed on this, so a file replaced while the app runs is
    loaded again. Inode, size and mtime catch ordinary replacements; ctime also catches an
    in-place rewrite of the same size whose mtime was restored (``utime`` cannot set ctime).
    Hashing instead would read hundreds of MB on every rerun. Raises ``OSError`` when the
    checkpoint itself is gone; a missing sidecar is simply left out.
    """
    path = Path(path)
    parts: list[int] = []
    for candidate in (path, path.with_suffix(".json")):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            if candidate == path:
                raise
            continue
        parts += [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(parts)


def load(item: CatalogItem, device: str = "cpu"):
    """Load a catalog item with the preprocessing its registry entry records."""
    from simam_viz.weights.checkpoints import load_model

    return load_model(
        item.path, device=device, preprocessing=item.preprocessing, name=item.short_name,
        simam_lambda=item.entry.simam_lambda if item.entry is not None else None,
    )
