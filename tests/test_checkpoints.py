"""Every public checkpoint layout loads into the right model and gives the reference logits."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import layouts
import pytest
import torch
import torchvision
from helpers import one_line
from safetensors.torch import save_file

from simam_viz import CheckpointError, build_model, identify_checkpoint, load_model, save_checkpoint
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.weights.checkpoints import file_sha256

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

CASES = {
    "torchvision": (lambda: layouts.torchvision_layout(), "resnet50", "torchvision"),
    "simam_training_file": (lambda: layouts.simam_official(), "simam_resnet50", "simam_official"),
    "simam_weights_export": (
        lambda: layouts.simam_official(training_file=False),
        "simam_resnet50",
        "simam_official",
    ),
    "se_moskomule": (layouts.se_moskomule, "se_resnet50", "se_moskomule"),
    "se_timm": (layouts.se_timm, "se_resnet50", "se_timm"),
    "se_legacy_v1": (layouts.se_legacy, "se_resnet50", "se_legacy_v1"),
    "eca_official": (layouts.eca_official, "eca_resnet50", "eca_official"),
    "cbam_official": (layouts.cbam_official, "cbam_resnet50", "cbam_official"),
}


def _save(obj, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_layout_loads_with_reference_logits(case: str, tmp_path: Path) -> None:
    builder, arch, layout = CASES[case]
    ckpt, reference = builder()
    path = _save(ckpt, tmp_path / f"{case}.pth")
    ident = identify_checkpoint(path)
    assert (ident.arch, ident.layout, ident.num_classes) == (arch, layout, 1000)
    model = load_model(path)
    assert not model.training
    assert model.simam_viz.arch == arch and model.simam_viz.layout == layout
    assert model.simam_viz.sha256 == file_sha256(path)
    assert len(model.simam_viz.class_names) == 1000
    with torch.no_grad():
        expected, got = reference(X), model(X)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_timm_safetensors_and_bin(tmp_path: Path) -> None:
    state, reference = layouts.se_timm(seed=11)
    with torch.no_grad():
        expected = reference(X)
    for name in ("model.safetensors", "pytorch_model.bin"):
        model = load_model(_save(state, tmp_path / name))
        assert model.simam_viz.preprocessing.interpolation == "bicubic"
        with torch.no_grad():
            torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-3)


def test_v1_stride_trap_is_caught(tmp_path: Path) -> None:
    """The Caffe SE weights fit a v1.5 model shape for shape, but only v1 computes right."""
    state, reference = layouts.se_legacy(seed=12)
    model = load_model(_save(state, tmp_path / "se_resnet50-ce0d4300.pth"))
    assert model.simam_viz.resnet_variant == "v1"
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.maxpool.ceil_mode and model.maxpool.padding == 0
    wrong = build_model("se_resnet50", se_bias=True)  # v1.5: loads silently...
    right_state = model.state_dict()
    wrong.load_state_dict(right_state, strict=True)
    with torch.no_grad():
        expected = reference(X)
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-3)
        assert not torch.allclose(wrong(X), expected, rtol=1e-2, atol=1e-2)  # ...and is wrong


def test_old_torchvision_without_num_batches_tracked(tmp_path: Path) -> None:
    state, reference = layouts.torchvision_layout(seed=13)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = load_model(_save(state, tmp_path / "resnet50-0676ba61.pth"))
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), rtol=1e-4, atol=1e-3)


def test_own_format_roundtrip(tmp_path: Path) -> None:
    model = build_model("simam_resnet50", num_classes=3, width=0.25, simam_lambda=0.05)
    layouts._perturb(model, 0)
    prep = Preprocessing(resize=146, crop=128)
    path = save_checkpoint(
        model, tmp_path / "demo" / "simam", class_names=["a", "b", "c"], preprocessing=prep,
        provenance={"commit": "abc"},
    )
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    # same mode as the JSON sidecar (the umask's), not safetensors' owner-only 0600
    assert path.stat().st_mode & 0o777 == path.with_suffix(".json").stat().st_mode & 0o777
    loaded = load_model(path)
    info = loaded.simam_viz
    assert info.layout == "simam_viz" and info.class_names == ["a", "b", "c"]
    assert info.simam_lambda == 0.05 and info.width == 0.25 and info.preprocessing == prep
    assert loaded.layer1[0].conv2[1].e_lambda == 0.05
    assert info.extra["provenance"] == {"commit": "abc"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))


def test_sidecar_class_count_mismatch(tmp_path: Path) -> None:
    model = build_model("resnet50", num_classes=3, width=0.125)
    path = save_checkpoint(model, tmp_path / "m", class_names=["a", "b", "c"],
                           preprocessing=Preprocessing())
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["class_names"] = ["a", "b"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong class count"):
        load_model(path)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Evil(target)}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert "refused" in one_line(exc)
    assert not target.exists()
    # a raw (non-zip) pickle too
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(target)))
    with pytest.raises(CheckpointError):
        load_model(raw)
    assert not target.exists()


def test_bad_files_give_one_line(tmp_path: Path) -> None:
    state, _ = layouts.torchvision_layout(seed=14)
    good = _save(state, tmp_path / "good.pth")
    data = good.read_bytes()
    cases = {
        "empty.pth": (b"", "empty"),
        "half.pth": (data[: len(data) // 2], "truncated or corrupt"),
        "random.pth": (bytes(range(256)) * 40, "corrupt"),
        "half.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{", "safetensors"),
    }
    for name, (blob, expected) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError) as exc:
            load_model(tmp_path / name)
        assert expected in one_line(exc), name
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pth")


def test_wrong_architecture_and_class_count(tmp_path: Path) -> None:
    r18 = _save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(r18)
    assert "BasicBlock blocks 2,2,2,2" in one_line(exc)
    r101 = _save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    with pytest.raises(CheckpointError, match="3,4,23,3"):
        load_model(r101)
    state, _ = layouts.torchvision_layout(seed=15, num_classes=10)
    ten = _save(state, tmp_path / "ten.pth")
    assert load_model(ten).simam_viz.num_classes == 10
    with pytest.raises(CheckpointError, match="has 10, expected 1000"):
        load_model(ten, num_classes=1000)
    junk = _save({"foo.weight": torch.zeros(3)}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not a ResNet-50"):
        load_model(junk)
    partial = dict(layouts.torchvision_layout(seed=16)[0])
    del partial["layer3.1.bn2.weight"]
    with pytest.raises(CheckpointError, match="1 missing"):
        load_model(_save(partial, tmp_path / "partial.pth"))


def test_checkpoint_saved_on_cuda_device_loads_on_cpu(tmp_path: Path) -> None:
    """map_location='cpu' always: a file whose storages say cuda:1 must still load here."""
    import zipfile

    state, reference = layouts.torchvision_layout(seed=17)
    src = _save(state, tmp_path / "cpu.pth")
    dst = tmp_path / "cuda.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1")
            zout.writestr(item, data)
    with pytest.raises(RuntimeError):  # proves the file really asks for CUDA
        torch.load(dst, weights_only=True)
    model = load_model(dst)
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), rtol=1e-4, atol=1e-3)
