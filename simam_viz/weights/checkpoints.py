"""Loading checkpoints of every public layout, safely, into the one model naming.

A checkpoint is untrusted input: pickles are read with ``weights_only=True`` (or come as
safetensors), the architecture is built in code from what the tensors say, and the weights are
loaded strictly. The layouts differ only in key names, so each one is a list of regex renames to
the SimAM repository's naming (see ``../shared/reference/checkpoints.md``, "Remapping rules").
The project's own format is safetensors plus a JSON sidecar carrying what the tensors cannot
(class names, preprocessing, lambda, provenance).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simam_viz.devices import prepare_model
from simam_viz.errors import CheckpointError
from simam_viz.networks.models import ARCHS, STAGE_BLOCKS, ModelInfo, build_model
from simam_viz.networks.preprocess import Preprocessing, imagenet_classes

__all__ = [
    "CheckpointIdentity",
    "identify_checkpoint",
    "load_model",
    "load_state_dict_file",
    "save_checkpoint",
]

LOG = logging.getLogger(__name__)

OWN_FORMAT = "simam-viz-checkpoint"
OWN_FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 * 1024**3
_WRAPPER_KEYS = ("state_dict", "model", "module", "net", "model_state_dict")
_BN3_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BN3 = (rf"^(layer\d\.\d+)\.bn3\.{_BN3_PARAM}$", r"\1.bn3.0.\2")

# Per layout: (regex, replacement) renames to the canonical naming, applied in order.
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "torchvision": [],
    "simam_official": [],
    "canonical": [],
    "se_moskomule": [_BN3, (r"^(layer\d\.\d+)\.se\.fc\.(0|2)\.", r"\1.bn3.1.fc.\2.")],
    "se_timm": [
        _BN3,
        (r"^(layer\d\.\d+)\.se\.fc1\.", r"\1.bn3.1.fc.0."),
        (r"^(layer\d\.\d+)\.se\.fc2\.", r"\1.bn3.1.fc.2."),
    ],
    "se_legacy_v1": [
        (r"^layer0\.conv1\.", "conv1."),
        (r"^layer0\.bn1\.", "bn1."),
        (r"^last_linear\.", "fc."),
        _BN3,
        (r"^(layer\d\.\d+)\.se_module\.fc1\.", r"\1.bn3.1.fc.0."),
        (r"^(layer\d\.\d+)\.se_module\.fc2\.", r"\1.bn3.1.fc.2."),
    ],
    "eca_official": [_BN3, (r"^(layer\d\.\d+)\.eca\.conv\.", r"\1.bn3.1.conv.")],
    "cbam_official": [_BN3, (r"^(layer\d\.\d+)\.cbam\.", r"\1.bn3.1.")],
}

# Layout detection: first key pattern present wins (order matters: specific before generic).
_SIGNATURES: list[tuple[str, str, str]] = [
    # (layout, arch, regex that some key must match)
    ("se_legacy_v1", "se_resnet50", r"^layer0\.conv1\.weight$|\.se_module\.fc1\.weight$"),
    ("se_timm", "se_resnet50", r"^layer\d\.\d+\.se\.fc1\.weight$"),
    ("se_moskomule", "se_resnet50", r"^layer\d\.\d+\.se\.fc\.0\.weight$"),
    ("eca_official", "eca_resnet50", r"^layer\d\.\d+\.eca\.conv\.weight$"),
    ("cbam_official", "cbam_resnet50", r"^layer\d\.\d+\.cbam\.ChannelGate\."),
    ("canonical", "se_resnet50", r"^layer\d\.\d+\.bn3\.1\.fc\.0\.weight$"),
    ("canonical", "eca_resnet50", r"^layer\d\.\d+\.bn3\.1\.conv\.weight$"),
    ("canonical", "cbam_resnet50", r"^layer\d\.\d+\.bn3\.1\.ChannelGate\."),
    ("simam_official", "simam_resnet50", r"^layer\d\.\d+\.conv2\.0\.weight$"),
    ("torchvision", "resnet50", r"^layer\d\.\d+\.conv2\.weight$"),
]


@dataclass(frozen=True)
class CheckpointIdentity:
    """What a checkpoint file is, read from its keys and shapes without building a model."""

    layout: str
    arch: str
    num_classes: int
    resnet_variant: str


def _fail(message: str) -> CheckpointError:
    return CheckpointError(message.splitlines()[0][:300])


def _read_raw(path: Path, max_bytes: int) -> Any:
    """Read a file into Python objects without ever running pickled code."""
    if not path.is_file():
        raise _fail(f"{path.name}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(f"{path.name}: empty file; expected a PyTorch or safetensors checkpoint")
    if size > max_bytes:
        raise _fail(f"{path.name}: {size / 1e6:.0f} MB is over the {max_bytes / 1e6:.0f} MB cap")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            msg = f"{path.name}: not a valid safetensors file (truncated or corrupt)"
            raise _fail(msg) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if _is_truncated_zip(path) or not re.search(r"Unsupported global|GLOBAL|REDUCE", text):
            msg = f"{path.name}: truncated or corrupt checkpoint (not a PyTorch file)"
            raise _fail(msg) from exc
        raise _fail(
            f"{path.name}: refused, the pickle holds objects other than tensors "
            "(it could run code); expected a plain state_dict"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise _fail(f"{path.name}: truncated or corrupt checkpoint ({type(exc).__name__})") from exc


def _is_truncated_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError):
        return True


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """Find the state_dict inside training wrappers and strip DataParallel prefixes."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise _fail("no state_dict found; expected a dict of tensors")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise _fail("no tensors found; expected a dict of tensors")
    while all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    sidecar = path.with_suffix(".json")
    if path.suffix != ".safetensors" or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"{sidecar.name}: unreadable JSON sidecar") from exc
    if not isinstance(meta, dict) or meta.get("format") != OWN_FORMAT:
        return None
    return meta


def load_state_dict_file(
    path: str | Path, *, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A checkpoint's flat state_dict (unwrapped, un-prefixed) and its sidecar, if any."""
    path = Path(path)
    return _unwrap(_read_raw(path, max_bytes)), _read_sidecar(path)


def _detect(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    for layout, arch, pattern in _SIGNATURES:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in state):
            return layout, arch
    sample = ", ".join(list(state)[:3])
    raise _fail(f"not a ResNet-50 checkpoint of a known layout (first keys: {sample})")


def _remap(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    rules = [(re.compile(a), b) for a, b in _RENAMES[layout]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for rx, repl in rules:
            key = rx.sub(repl, key)
        if re.search(r"\.bn3\.1\.fc\.[02]\.weight$", key) and value.dim() == 4:
            value = value.flatten(1)  # 1x1 conv SE (timm, Caffe) -> Linear
        out[key] = value
    return out


def _check_depth(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse ResNet-18/34/101/152 with a clear line instead of a wall of missing keys."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"^layer(\d)\.(\d+)\.", key)
        if m and 1 <= int(m.group(1)) <= 4:
            s = int(m.group(1)) - 1
            counts[s] = max(counts[s], int(m.group(2)) + 1)
    bottleneck = any(re.match(r"^layer1\.0\.conv3\.", k) for k in state)
    if tuple(counts) != STAGE_BLOCKS or not bottleneck:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        found = ",".join(map(str, counts))
        raise _fail(
            f"wrong architecture: {kind} blocks {found}; expected ResNet-50 Bottleneck 3,4,6,3"
        )


def _num_classes(state: Mapping[str, torch.Tensor]) -> int:
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise _fail("no classifier (fc.weight) in checkpoint; expected a classification ResNet-50")
    return int(fc.shape[0])


def _build_kwargs(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Architecture options that the tensors themselves determine."""
    stem = state.get("conv1.weight")
    if stem is None:
        raise _fail("no stem convolution (conv1.weight); expected a ResNet-50")
    kwargs: dict[str, Any] = {"width": stem.shape[0] / 64, "num_classes": _num_classes(state)}
    kind = ARCHS[arch].kind
    if kind.has_attention:
        slot = 1  # the module is the second item of the Sequential that wraps its site
        firsts = [f"layer{s}.0.{kind.site}.{slot}" for s in range(1, 5)]
        kwargs.update(kind.options_from_state(state, firsts))
    return kwargs


def _identify(
    state: Mapping[str, torch.Tensor], sidecar: dict[str, Any] | None
) -> CheckpointIdentity:
    if sidecar is not None:
        arch = str(sidecar.get("arch", ""))
        variant = str(sidecar.get("resnet_variant", "v1.5"))
        return CheckpointIdentity("simam_viz", arch, _num_classes(state), variant)
    layout, arch = _detect(state)
    canonical = _remap(state, layout)
    variant = "v1" if layout == "se_legacy_v1" else "v1.5"
    return CheckpointIdentity(layout, arch, _num_classes(canonical), variant)


def identify_checkpoint(path: str | Path) -> CheckpointIdentity:
    """Layout, architecture, class count and ResNet variant of a checkpoint file."""
    state, sidecar = load_state_dict_file(path)
    return _identify(state, sidecar)


def _default_preprocessing(layout: str) -> Preprocessing:
    if layout == "se_timm":  # timm's a1/a2 recipe: bicubic, crop_pct 0.95
        return Preprocessing(resize=235, crop=224, interpolation="bicubic")
    return Preprocessing()


def _class_names(sidecar: dict[str, Any] | None, num_classes: int) -> list[str]:
    if sidecar is not None and sidecar.get("class_names") is not None:
        names = [str(n) for n in sidecar["class_names"]]
        if len(names) != num_classes:
            raise _fail(
                f"wrong class count: sidecar names {len(names)} classes, weights have {num_classes}"
            )
        return names
    if num_classes == 1000:
        return list(imagenet_classes())
    return [f"class {i}" for i in range(num_classes)]


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    for key, value in expected.items():  # old torchvision files lack these counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise _fail(
                f"{name}: shape mismatch at {key}: checkpoint {list(value.shape)}, "
                f"model {list(expected[key].shape)}"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise _fail(f"{name}: keys do not match the architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
    simam_lambda: float | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> nn.Module:
    """Load any supported checkpoint into the matching architecture, in eval mode.

    The returned model maps ImageNet-normalised NCHW input to logits and carries a
    :class:`~simam_viz.networks.models.ModelInfo` as ``model.simam_viz`` (class names,
    preprocessing,
    layout, sha256). ``num_classes``, when given, is the class count the caller expects.
    ``simam_lambda``, when given, is the lambda the weights were trained with (an official
    file has no sidecar to say so; the registry does); else the sidecar's, else 0.1.
    Raises :class:`~simam_viz.errors.CheckpointError` with one line for anything unloadable.
    """
    path = Path(path)
    label = name or path.name
    state, sidecar = load_state_dict_file(path, max_bytes=max_bytes)
    identity = _identify(state, sidecar)
    if identity.layout == "simam_viz":
        assert sidecar is not None
        canonical = dict(state)
        if identity.arch not in ARCHS:
            raise _fail(f"{label}: unknown arch {identity.arch!r} in sidecar")
        lam = float(sidecar.get("simam_lambda") or 0.1)
        dilate = bool(sidecar.get("dilate_last", False))
        prep = Preprocessing.from_dict(sidecar.get("preprocessing") or {})
    else:
        canonical = _remap(state, identity.layout)
        lam, dilate = 0.1, False
        prep = _default_preprocessing(identity.layout)
    _check_depth(canonical)
    if num_classes is not None and identity.num_classes != num_classes:
        raise _fail(
            f"wrong class count: {label} has {identity.num_classes}, expected {num_classes}"
        )
    if simam_lambda is not None:
        lam = float(simam_lambda)
    kwargs = _build_kwargs(canonical, identity.arch)
    model = build_model(
        identity.arch,
        simam_lambda=lam,
        resnet_variant=identity.resnet_variant,
        dilate_last=dilate,
        **kwargs,
    )
    _load_strict(model, canonical, label)
    info: ModelInfo = model.simam_viz  # type: ignore[assignment]
    info.layout = identity.layout
    info.class_names = _class_names(sidecar, identity.num_classes)
    info.preprocessing = preprocessing or prep
    info.name = label
    info.path = str(path)
    info.sha256 = file_sha256(path)
    if sidecar is not None:
        info.extra["provenance"] = sidecar.get("provenance", {})
    LOG.info("loaded %s: %s, layout %s, %d classes, ResNet %s, on %s", path, identity.arch,
             identity.layout, identity.num_classes, identity.resnet_variant, device)
    return prepare_model(model, torch.device(device))


def readable_by_all(path: str | Path) -> None:
    """Give a written checkpoint the umask's usual mode (safetensors and mkstemp make it 0600).

    A file only its writer can read breaks the app when another user serves it, e.g. the
    non-root user of the Docker image reading weights fetched or copied in as root.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    class_names: list[str],
    preprocessing: Preprocessing,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the project's format: ``NAME.safetensors`` plus ``NAME.json`` beside it.

    Safetensors cannot run code and maps lazily; the sidecar holds what the tensors cannot say.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    info: ModelInfo = model.simam_viz  # type: ignore[assignment]
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if len(class_names) != int(state["fc.weight"].shape[0]):
        raise ValueError("class_names must have one name per output of fc")
    meta = {
        "format": OWN_FORMAT,
        "version": OWN_FORMAT_VERSION,
        "arch": info.arch,
        "width": info.width,
        "simam_lambda": info.simam_lambda,
        "resnet_variant": info.resnet_variant,
        "dilate_last": bool(info.extra.get("dilate_last", False)),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "provenance": provenance or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.part")
    save_file(state, str(tmp), metadata={"format": OWN_FORMAT})
    readable_by_all(tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path

