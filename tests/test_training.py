"""Training: smoke run, resume, identical weights under torchrun; evaluation table."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEMO_ARCHS
from PIL import Image

from simam_viz import cli, load_model
from simam_viz.errors import SimamVizError
from simam_viz.networks.models import build_model
from simam_viz.studies.training import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A Pillow-made ImageFolder: 3 classes of coloured squares, with masks."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    for split, n in (("train", 8), ("val", 3), ("test", 3)):
        for name, colour in colours.items():
            for i in range(n):
                img = rng.integers(0, 80, (48, 48, 3), np.uint8)
                mask = np.zeros((48, 48), bool)
                y, x = rng.integers(0, 24, 2)
                img[y : y + 20, x : x + 20] = colour
                mask[y : y + 20, x : x + 20] = True
                for folder, arr in ((root / split / name, img),
                                    (root / "masks" / split / name, mask)):
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return root


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), archs=("simam_resnet50",), width=0.125, size=48,
                epochs=1, batch_size=8, progress=False)
    return TrainConfig(**{**base, **kw})


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_step_smoke_run_writes_a_loadable_checkpoint(tiny_data: Path, tmp_path: Path):
    torch.manual_seed(0)
    from simam_viz import build_model

    torch.manual_seed(0)
    initial = build_model("simam_resnet50", num_classes=3, width=0.125, dilate_last=True)
    paths = train(_cfg(tiny_data, tmp_path, max_steps=2))
    model = load_model(paths["simam_resnet50"])
    before, after = initial.state_dict(), model.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    info = model.simam_viz
    assert info.class_names == ["blue", "green", "red"] and info.simam_lambda == 0.1
    prov = info.extra["provenance"]
    assert prov["history"][0]["step"] == 2 and "val_top1" in prov and "test_top1" in prov
    assert prov["config"]["seed"] == 0 and prov["commit"]
    assert info.preprocessing.crop == 48 and model.layer4[1].conv2[0].dilation == (2, 2)
    assert model.layer4[0].conv2[0].stride == (1, 1)  # dilated last stage: stride 16


def test_resume_continues_from_the_saved_epoch(tiny_data: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_data, tmp_path, epochs=1))
    resumed = train(_cfg(tiny_data, tmp_path, epochs=2, resume=True))
    history = load_model(resumed["simam_resnet50"]).simam_viz.extra["provenance"]["history"]
    # epoch 1 came from the saved state, and its record with it
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["step"] for h in history] == [3, 6]  # 24 images / batch 8 = 3 steps per epoch
    assert history[1]["seconds"] >= history[0]["seconds"] > 0
    straight = train(_cfg(tiny_data, tmp_path / "straight", epochs=2))
    a = load_model(resumed["simam_resnet50"]).state_dict()
    b = load_model(straight["simam_resnet50"]).state_dict()
    assert _digest(a) == _digest(b)  # resuming gives exactly the uninterrupted result


def test_test_size_is_the_checkpoints_inference_resolution(tiny_data: Path, tmp_path: Path):
    """Train at 48 px, record 64 px: users of the checkpoint then preprocess at 64 px."""
    from simam_viz.studies.training import _datasets

    cfg = _cfg(tiny_data, tmp_path, test_size=64, max_steps=1)
    train_set, evals = _datasets(cfg)
    assert train_set[0][0].shape[-1] == 48 and evals["val"][0][0].shape[-1] == 64
    model = load_model(train(cfg)["simam_resnet50"])
    assert model.simam_viz.preprocessing.crop == 64
    assert model.simam_viz.extra["provenance"]["config"]["test_size"] == 64


def test_init_starts_from_an_earlier_run(tiny_data: Path, tmp_path: Path) -> None:
    """Fine-tuning: the second run starts from the first run's weights and records them."""
    first = train(_cfg(tiny_data, tmp_path / "a", max_steps=2))["simam_resnet50"]
    start = load_model(first).state_dict()
    # zero steps of the second run (lr 0 throughout) must leave the weights where they were
    second = train(_cfg(tiny_data, tmp_path / "b", init=str(tmp_path / "a"), lr=0.0,
                        max_steps=1))["simam_resnet50"]
    after = load_model(second).state_dict()
    params = [k for k in start if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(start[k], after[k]) for k in params)
    init = load_model(second).simam_viz.extra["provenance"]["init"]
    assert init["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert init["history"][0]["step"] == 2
    with pytest.raises(SimamVizError, match="no checkpoint"):
        train(_cfg(tiny_data, tmp_path / "c", init=str(tmp_path / "missing"), max_steps=1))


@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_zero_init_residual_makes_every_block_start_as_its_shortcut(arch: str) -> None:
    """With the last BN's scale at zero, a block computes relu(shortcut(x)), whatever x is."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, width=0.125, dilate_last=True,
                        zero_init_residual=True)
    x = torch.randn(2, 3, 64, 64)
    seen = 0
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                shortcut = block.downsample(h) if block.downsample is not None else h
                out = block(h)
                torch.testing.assert_close(out, torch.relu(shortcut), rtol=0, atol=1e-6)
                seen += 1
                h = out
    assert seen == 16
    # and it is the scales that were zeroed (the shifts start at zero anyway)
    last_bns = [b.bn3[0] if isinstance(b.bn3, torch.nn.Sequential) else b.bn3
                for stage in (model.layer1, model.layer4) for b in stage]
    assert all(not bn.weight.detach().any() for bn in last_bns)


RANK_SCRIPT = """
import hashlib, os, sys, torch
import torch.distributed as dist
from simam_viz.studies.training import TrainConfig, train, _train_one, _datasets, _dist
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], archs=("se_resnet50",), width=0.125,
                  size=48, epochs=1, batch_size=4, max_steps=2, progress=False)
rank, world = _dist()
train_set, evals = _datasets(cfg)
run = _train_one(cfg, "se_resnet50", train_set, evals, rank, world)
h = hashlib.sha256()
# parameters only: BN running statistics stay per process, as in the paper's 4-GPU runs
for k, v in sorted(run["model"].named_parameters()):
    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
open(os.path.join(sys.argv[2], f"rank{rank}.sha"), "w").write(h.hexdigest())
dist.barrier()
dist.destroy_process_group()
"""


def test_torchrun_two_processes_end_with_identical_weights(tiny_data: Path, tmp_path: Path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
         str(tiny_data), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hashes = [(tmp_path / f"rank{r}.sha").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]


def test_evaluate_cli_writes_the_table(tiny_data: Path, tmp_path: Path, capsys) -> None:
    paths = train(_cfg(tiny_data, tmp_path, archs=("resnet50", "simam_resnet50"),
                       max_steps=1))
    out_csv = tmp_path / "study.csv"
    code = cli.main(["evaluate", "--data", str(tiny_data), "--checkpoints",
                     str(paths["resnet50"]), str(paths["simam_resnet50"]),
                     "--csv", str(out_csv), "--methods", "gradcam", "hirescam"])
    assert code == 0
    rows = list(csv.DictReader(out_csv.open()))
    # resnet50: output; simam: output, before, after -> 4 maps x 2 methods
    assert len(rows) == 8 and {r["where"] for r in rows} == {"output", "before", "after"}
    assert all(r["images"] == "9" and 0 <= float(r["pointing"]) <= 100 for r in rows)
    assert "| model | method |" in capsys.readouterr().out
