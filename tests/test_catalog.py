"""The catalog's verdict on official-looking files: verified, unverified, hashed once.

A file that merely carries an official checkpoint's name must not be offered with that
checkpoint's published top-1; ``simam-viz list`` already calls it a "hash mismatch".
Registries are temporary files named by ``SIMAM_VIZ_REGISTRY``.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import pytest
from helpers import registry_entry

from simam_viz.errors import CheckpointError
from simam_viz.weights import catalog
from simam_viz.weights.checkpoints import CheckpointIdentity
from simam_viz.weights.registry import load_registry

GOOD = b"the published weights" * 1000


def _entry(name: str, filename: str, **extra) -> dict:
    return registry_entry(name, filename, f"http://127.0.0.1:9/{filename}", **{
        "title": f"Net {name}", "sha256": hashlib.sha256(GOOD).hexdigest(), "top1": 76.13,
        **extra})


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_registry) -> Path:
    """An empty checkpoints folder, a registry of two entries and a fresh digest cache."""
    use_registry(_entry("net", "net-0676ba61.pth"),
                 _entry("prefixed", "prefixed.pth", sha256=None,
                        sha256_prefix=hashlib.sha256(GOOD).hexdigest()[:8], top1=80.86))
    monkeypatch.setattr(catalog, "_DIGESTS", {})
    monkeypatch.setattr(catalog, "_IDENTITIES", OrderedDict())
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    return ckpts


def _by_key(folder: Path) -> dict[str, catalog.CatalogItem]:
    return {item.key: item for item in catalog.available(folder)}


def test_registry_env_var_is_used(folder: Path) -> None:
    assert set(load_registry()) == {"net", "prefixed"}


def test_wrong_bytes_are_unverified_without_top1(folder: Path) -> None:
    (folder / "net-0676ba61.pth").write_bytes(b"something else entirely")
    item = _by_key(folder)["official/net"]  # the key stays stable
    assert item.source == "unverified" and item.top1 is None
    assert item.label == "Net net [unverified: hash mismatch]"
    assert "76.13" not in item.label and "official" not in item.label
    assert item.short_name == "Net net (unverified)"
    assert item.path == folder / "net-0676ba61.pth"


def test_matching_bytes_are_official_with_top1(folder: Path) -> None:
    (folder / "net-0676ba61.pth").write_bytes(GOOD)
    (folder / "prefixed.pth").write_bytes(GOOD)  # matched by the URL's hash prefix
    items = _by_key(folder)
    assert items["official/net"].source == "official"
    assert items["official/net"].label == "Net net [official, top-1 76.13%]"
    assert items["official/prefixed"].label == "Net prefixed [official, top-1 80.86%]"
    assert items["official/net"].short_name == "Net net"


def test_entry_without_published_hash_is_not_hashed(
    folder: Path, use_registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_registry(_entry("drive", "drive.pth", sha256=None))  # replaces the two entries
    monkeypatch.setattr(catalog, "file_sha256", _forbidden)
    (folder / "drive.pth").write_bytes(b"anything")
    assert _by_key(folder)["official/drive"].source == "official"


def _forbidden(path) -> str:
    raise AssertionError("must not hash")


def test_unchanged_file_is_hashed_once(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = catalog.file_sha256

    def counting(path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(catalog, "file_sha256", counting)
    target = folder / "net-0676ba61.pth"
    target.write_bytes(b"wrong")
    for _ in range(3):
        assert _by_key(folder)["official/net"].source == "unverified"
    assert calls == [target.resolve()]

    # replaced (as fetch does: new file, atomic rename): hashed again, and now official
    fresh = folder / ".net.part"
    fresh.write_bytes(GOOD)
    os.replace(fresh, target)
    for _ in range(2):
        assert _by_key(folder)["official/net"].source == "official"
    assert calls == [target.resolve()] * 2
    assert len(catalog._DIGESTS) == 1  # one entry per path, old versions dropped


def _counting_identify(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for the loader: ``*.pth`` files are ResNet-50s, anything else is refused;
    returns the names it was asked to read, in order."""
    calls: list[str] = []

    def identify(path) -> CheckpointIdentity:
        calls.append(Path(path).name)
        if Path(path).read_bytes().startswith(b"junk"):
            raise CheckpointError("not a checkpoint")
        return CheckpointIdentity("torchvision", "resnet50", 1000, "v1.5")

    monkeypatch.setattr(catalog, "identify_checkpoint", identify)
    return calls


def test_unknown_files_are_identified_once_per_version(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """available() runs every 20 s: an unchanged user file is not loaded again, a replaced
    one is, and a file that is no checkpoint is not retried until it changes either."""
    calls = _counting_identify(monkeypatch)
    (folder / "mine.pth").write_bytes(b"weights v1")
    (folder / "broken.pth").write_bytes(b"junk")
    for _ in range(3):
        items = _by_key(folder)
        assert items["file/mine.pth"].source == "user file" and "file/broken.pth" not in items
    assert sorted(calls) == ["broken.pth", "mine.pth"]

    fresh = folder / ".mine.part"  # replaced as a copy tool or fetch would: a new file
    fresh.write_bytes(b"weights v2, another size")
    os.replace(fresh, folder / "mine.pth")
    (folder / "broken.pth").write_bytes(b"fixed now")  # rewritten in place
    for _ in range(2):
        assert {"file/mine.pth", "file/broken.pth"} <= set(_by_key(folder))
    assert sorted(calls) == ["broken.pth", "broken.pth", "mine.pth", "mine.pth"]
    assert len(catalog._IDENTITIES) == 2  # one entry per path, old versions dropped


def test_identity_cache_is_bounded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More files than the cache holds still all work: the least recently asked for is read
    again, the others are not."""
    calls = _counting_identify(monkeypatch)
    monkeypatch.setattr(catalog, "_IDENTITIES_MAX", 2)
    for name in ("a.pth", "b.pth", "c.pth"):
        (folder / name).write_bytes(b"w")
    assert {"file/a.pth", "file/b.pth", "file/c.pth"} <= set(_by_key(folder))
    assert len(catalog._IDENTITIES) == 2  # a was dropped for c
    (folder / "b.pth").unlink()
    keys = set(_by_key(folder))
    assert {"file/a.pth", "file/c.pth"} <= keys and "file/b.pth" not in keys
    assert calls == ["a.pth", "b.pth", "c.pth", "a.pth"]  # c was still cached


def test_app_and_cli_list_the_same_files_and_skip_dot_folders(tmp_path: Path) -> None:
    """One walk for both: a checkpoint under a dot-folder (.git, a fetch's temp) is not offered."""
    from simam_viz.weights.catalog import checkpoint_files

    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "hidden.pth").write_bytes(b"x")
    (tmp_path / ".x.pth.part").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.pth").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("no")
    assert checkpoint_files(tmp_path) == [tmp_path / "sub" / "mine.pth"]
