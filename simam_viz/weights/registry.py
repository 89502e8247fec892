"""The registry of official checkpoints (``checkpoints/registry.json``) and what is present.

The registry is data, not code: name, architecture, URLs, published hash, preprocessing,
lambda, top-1, licence and whether the weights may be redistributed. Files live in the
checkpoints folder (see :func:`checkpoints_dir`); a file a user drops in by hand is found under
its registered name or any of its candidate names. The registry ships with the package
(:mod:`simam_viz.resources`); ``SIMAM_VIZ_REGISTRY`` points at another registry file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simam_viz.errors import SimamVizError
from simam_viz.networks.models import ARCHS
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.resources import bundled_checkpoints, is_source_checkout, user_checkpoints_dir
from simam_viz.weights.checkpoints import file_sha256

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RegistryEntry",
    "checkpoints_dir",
    "find_present",
    "load_registry",
    "redistribution_refusal",
    "registry_path",
    "verify_file",
]

LOG = logging.getLogger(__name__)

REGISTRY_PATH = bundled_checkpoints() / "registry.json"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".bin", ".safetensors")
"""File endings a checkpoint may have: what the folder walk lists and what a download keeps."""
SOURCES = ("http", "gdrive_file", "gdrive_folder")
VARIANTS = ("v1.5", "v1")
REGISTRY_FORMAT = "simam-viz-registry"
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class RegistryEntry:
    """One official checkpoint and everything needed to fetch, verify and use it."""

    name: str
    title: str
    arch: str
    resnet_variant: str
    filename: str
    source: str
    urls: tuple[str, ...]
    preprocessing: Preprocessing
    top1: float | None
    licence: str
    redistributable: bool
    sha256: str | None = None
    sha256_prefix: str | None = None
    simam_lambda: float | None = None
    gdrive_id: str | None = None
    candidates: tuple[str, ...] = field(default_factory=tuple)
    mirror: str = ""
    notes: str = ""
    size_mb: float | None = None  # approximate download size, only a hint for the user

    @property
    def names(self) -> tuple[str, ...]:
        """Every file name under which this checkpoint is recognised in the folder."""
        return tuple(dict.fromkeys((self.filename, *self.candidates)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RegistryEntry:
        """Build and check one entry, so a typo in the JSON fails at load, not mid-download."""
        data = dict(raw)
        name = raw.get("name", "?")
        try:
            data["urls"] = tuple(data.get("urls", ()))
            data["candidates"] = tuple(data.get("candidates", ()))
            data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
            entry = cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise SimamVizError(f"registry entry {name!r} is invalid: {exc}") from exc
        problem = entry._problem()
        if problem:
            raise SimamVizError(f"registry entry {name!r}: {problem}")
        return entry

    def _problem(self) -> str | None:
        """What is wrong with this entry, or None (one message, the first found)."""
        if self.arch not in ARCHS:
            return f"unknown arch {self.arch!r}"
        if self.resnet_variant not in VARIANTS:
            return f"resnet_variant must be one of {', '.join(VARIANTS)}"
        if self.source not in SOURCES:
            return f"unknown source {self.source!r}"
        if self.source != "http" and not self.gdrive_id:
            return "gdrive source without gdrive_id"
        if not self.urls or not all(u.startswith(("https://", "http://")) for u in self.urls):
            return "needs at least one http(s) URL"
        # Names are joined to the checkpoints folder: a separator or '..' would write elsewhere.
        for file_name in self.names:
            if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", ".."):
                return f"file name {file_name!r} must be a plain name"
        if self.sha256 is not None and not (len(self.sha256) == 64 and _HEX.fullmatch(self.sha256)):
            return "sha256 must be 64 lowercase hex digits"
        if self.sha256_prefix is not None and not _HEX.fullmatch(self.sha256_prefix):
            return "sha256_prefix must be lowercase hex digits"
        if self.sha256 and self.sha256_prefix and not self.sha256.startswith(self.sha256_prefix):
            return "sha256 and sha256_prefix disagree"
        if ARCHS[self.arch].kind.has_lambda and not (self.simam_lambda and self.simam_lambda > 0):
            return "a SimAM entry needs a positive simam_lambda"
        if not isinstance(self.redistributable, bool):
            return "redistributable must be true or false"
        if self.size_mb is not None and not (
            isinstance(self.size_mb, int | float) and self.size_mb > 0
        ):
            return "size_mb must be a positive number"
        return None


def redistribution_refusal(entry: RegistryEntry) -> str | None:
    """Why ``entry`` may not be baked into a published image, or None if it may.

    One rule and one wording for every place that downloads on behalf of something that will
    be shared (``simam-viz fetch --redistributable-only``, the app when told so). Downloading
    for one's own use at run time is always allowed: that is what the message suggests.
    """
    if entry.redistributable:
        return None
    return (f"{entry.name!r} may not be redistributed (its licence does not allow it); "
            "mount it at run time instead")


def checkpoints_dir() -> Path:
    """Where checkpoint files live and fetched weights go.

    ``$SIMAM_VIZ_CHECKPOINTS`` when set; in a source checkout the repository's
    ``checkpoints/``; in an installed package a per-user data folder (the package's own
    folder is replaced on upgrade and may not be writable). The bundled demo models are
    offered in addition wherever this points (``catalog.available``).
    """
    env = os.environ.get("SIMAM_VIZ_CHECKPOINTS")
    if env:
        return Path(env)
    return bundled_checkpoints() if is_source_checkout() else user_checkpoints_dir()


def registry_path() -> Path:
    """The registry in use: ``$SIMAM_VIZ_REGISTRY`` or the repository's ``registry.json``.

    The variable lets a deployment point at its own list (a mirror, extra weights) and lets
    tests point the app, which runs in its own script and cannot be handed a parameter, at a
    registry whose URLs are a local server. ``REGISTRY_PATH`` is read at call time, so it can
    still be monkeypatched.
    """
    return Path(os.environ.get("SIMAM_VIZ_REGISTRY") or REGISTRY_PATH)


def load_registry(path: str | Path | None = None) -> dict[str, RegistryEntry]:
    """Entries by name, validated; a broken registry is one clear error, not a traceback.

    Without ``path``, :func:`registry_path` decides (``$SIMAM_VIZ_REGISTRY`` first).
    """
    path = Path(path) if path is not None else registry_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SimamVizError(f"cannot read checkpoint registry {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != REGISTRY_FORMAT:
        raise SimamVizError(f"{path} is not a simam-viz checkpoint registry")
    entries = [RegistryEntry.from_dict(e) for e in raw.get("entries", [])]
    by_name = {e.name: e for e in entries}
    if len(by_name) != len(entries):
        raise SimamVizError(f"checkpoint registry {path} has duplicate names")
    LOG.debug("registry %s: %d entries", path, len(by_name))
    return by_name


OFFICIAL_SUBDIR = "official"


def find_present(entry: RegistryEntry, folder: str | Path | None = None) -> Path | None:
    """The file of ``entry`` in ``folder`` or its ``official/`` subfolder, if any.

    The subfolder exists so that a read-only volume of downloaded weights can be mounted into a
    container (``-v ~/weights:/app/checkpoints/official:ro``) without hiding the demo models.
    """
    folder = Path(folder) if folder is not None else checkpoints_dir()
    for where in (folder, folder / OFFICIAL_SUBDIR):
        for name in entry.names:
            path = where / name
            if path.is_file() and path.stat().st_size > 0:
                return path
    return None


def hash_matches(entry: RegistryEntry, digest: str) -> bool | None:
    """True/False against the published hash (full or URL prefix); None if none is published."""
    if entry.sha256:
        return digest == entry.sha256.lower()
    if entry.sha256_prefix:
        return digest.startswith(entry.sha256_prefix.lower())
    return None


def verify_file(entry: RegistryEntry, path: str | Path) -> str:
    """``verified``, ``hash mismatch`` or ``no published hash`` for a present file."""
    ok = hash_matches(entry, file_sha256(path))
    if ok is None:
        return "no published hash"
    return "verified" if ok else "hash mismatch"
