"""Batch commands under torchrun: sharding by rank, each output once, one merged summary.

The real thing runs: ``python -m torch.distributed.run --nproc_per_node 2`` on the CPU
(gloo), against the same command with one process. Both pin one intra-op thread (torchrun's
default per process) and ``SOURCE_DATE_EPOCH``, so the outputs must be byte-identical.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SQUARE_COLOURS, save_tiny_checkpoints, squares_dataset

from simam_viz.networks.preprocess import Preprocessing
from simam_viz.studies.distributed import Shard

EXAMPLES = ROOT / "app" / "examples"


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_partition_the_inputs(world: int) -> None:
    items = list(range(10))
    shards = [Shard(rank=r, world=world).take(items) for r in range(world)]
    assert sorted(sum(shards, [])) == items  # every input once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert Shard().take(items) == items and Shard().gather("x") == ["x"]


def test_device_per_rank_never_shares_a_gpu_on_cpu_only_hosts() -> None:
    assert Shard(rank=1, world=2, local_rank=1).device("cpu") == "cpu"
    expected = "cuda:1" if _gpus() > 1 else ("cuda:0" if _gpus() == 1 else "auto")
    assert Shard(rank=1, world=2, local_rank=1).device("auto") == expected


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], procs: int, cwd: Path, status: int = 0
            ) -> subprocess.CompletedProcess:
    """``simam-viz ARGS`` in one process, or under torchrun with ``procs`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1700000000"}
    if procs == 1:
        cmd = [sys.executable, "-m", "simam_viz.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "simam_viz.cli", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == status, (done.returncode, done.stderr[-2000:])
    return done


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_figure_under_torchrun_equals_one_process(tmp_path: Path, tiny_checkpoints: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in EXAMPLES.glob("scene_*.png"))[:3]:
        (images / name).write_bytes((EXAMPLES / name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)  # skipped, once
    ckpts = [str(tiny_checkpoints / "demo" / f"{a}.safetensors")
             for a in ("resnet50", "simam_resnet50")]
    common = ["figure", str(images), "--figure", "1", "6", "--dpi", "50", "--device", "cpu",
              "--checkpoints", *ckpts]
    # exit status 1: the broken image is reported and skipped (by whichever rank has it)
    single = _launch([*common, "--out", str(tmp_path / "n1")], 1, tmp_path, status=1)
    double = _launch([*common, "--out", str(tmp_path / "n2")], 2, tmp_path, status=1)
    assert "broken.png" in single.stderr and "broken.png" in double.stderr
    a, b = _tree(tmp_path / "n1"), _tree(tmp_path / "n2")
    assert len(a) == 3 * 2 * 2  # 3 images x (figure1 + figure6) x (PNG + JSON)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    # the merged summary is printed once, by rank 0, for the whole job
    for done in (single, double):
        lines = [x for x in done.stdout.splitlines() if x.startswith("wrote ")]
        assert lines == [f"wrote 6 files to {tmp_path / ('n1' if done is single else 'n2')}"
                         "; skipped 1 image(s)"]


def test_evaluate_under_torchrun_writes_the_same_csv(tmp_path: Path) -> None:
    """Per-image scores are gathered and put back in the images' order before any mean or
    bootstrap interval: the CSV of two processes is the CSV of one, byte for byte."""
    data = squares_dataset(tmp_path / "data", side=48)
    ckpts = save_tiny_checkpoints(tmp_path / "ckpt", archs=("resnet50", "simam_resnet50"),
                                  classes=list(SQUARE_COLOURS),
                                  preprocessing=Preprocessing(resize=48, crop=48),
                                  random_bn=True)
    common = ["evaluate", "--data", str(data), "--device", "cpu", "--faithfulness",
              "--methods", "gradcam", "layercam", "--checkpoints",
              *(str(ckpts / "demo" / f"{a}.safetensors") for a in ("resnet50", "simam_resnet50"))]
    one = _launch([*common, "--csv", str(tmp_path / "n1.csv")], 1, tmp_path)
    two = _launch([*common, "--csv", str(tmp_path / "n2.csv")], 2, tmp_path)
    first, second = (tmp_path / "n1.csv").read_bytes(), (tmp_path / "n2.csv").read_bytes()
    assert first == second
    rows = first.decode().splitlines()
    assert len(rows) == 1 + 2 + 2 * 3  # header; resnet50 x 2 methods; SimAM x 2 x 3 maps
    assert all(",6," in row for row in rows[1:])  # every row scored all 6 images
    # the tables are printed once (rank 0), as by one process
    assert one.stdout.replace("n1.csv", "X") == two.stdout.replace("n2.csv", "X")
