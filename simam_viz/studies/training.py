"""Training ResNet-50 variants in the paper's "consistent setting" on any ImageFolder.

Every variant sees the same initial seed, the same data order, the same augmentation and the
same schedule, so differences between the trained models come from the attention module
alone. One process trains on the CPU or a GPU; the same command under ``torchrun`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPU, a DistributedSampler, BN statistics per
process as in the paper's 4-GPU runs) and only rank 0 writes files. Training is resumable
per epoch, and the result is written in the project's checkpoint format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms
from tqdm import tqdm

from simam_viz.errors import SimamVizError
from simam_viz.networks.attention import IMAGENET_LAMBDA
from simam_viz.networks.models import ARCHS, build_model
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.weights.checkpoints import file_sha256, load_model, save_checkpoint

__all__ = ["TrainConfig", "evaluate_accuracy", "train"]

LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in each checkpoint's provenance)."""

    data: str
    out: str
    archs: tuple[str, ...] = ("resnet50", "se_resnet50", "simam_resnet50")
    width: float = 0.25
    size: int = 128
    # inference resolution written into the checkpoint (None: `size`). Random-resized-crop
    # training makes objects look larger than at test time; testing a little larger undoes
    # that (Touvron et al., "Fixing the train-test resolution discrepancy", 2019).
    test_size: int | None = None
    dilate_last: bool = True
    # start each residual branch at zero (its last BN's scale), so every block begins as the
    # identity (Goyal et al., 2017). Here it also keeps the dilated last stage from drifting:
    # without it plain ResNet-50 learned to put its evidence a cell beside the object.
    zero_init_residual: bool = True
    epochs: int = 28
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    simam_lambda: float = IMAGENET_LAMBDA  # the paper's ImageNet value, as build_model
    max_steps: int | None = None  # stop early (smoke tests)
    device: str = "cpu"
    resume: bool = False
    init: str | None = None  # folder of an earlier run's checkpoints to start from (fine-tune)
    progress: bool = False  # a terminal progress bar (the CLI turns it on)
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self) -> Preprocessing:
        """How the checkpoint's users (and the val/test accuracy here) preprocess images."""
        side = self.test_size or self.size
        return Preprocessing(resize=side, crop=side, interpolation="bilinear")


def _dist() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _datasets(cfg: TrainConfig) -> tuple[datasets.ImageFolder, dict[str, datasets.ImageFolder]]:
    root = Path(cfg.data)
    if not (root / "train").is_dir():
        raise SimamVizError(f"{root}: expected an ImageFolder with train/ (and val/, test/)")
    prep = cfg.preprocessing()
    train_tf = transforms.Compose([
        # mild crops only: a strong crop can cut a small object out and mislabel the sample
        transforms.RandomResizedCrop(cfg.size, scale=(0.85, 1.0), ratio=(0.9, 1.1)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    evals = {
        split: datasets.ImageFolder(str(root / split), transform=prep.transform())
        for split in ("val", "test")
        if (root / split).is_dir()
    }
    for split, ds in evals.items():
        if ds.classes != train_set.classes:
            raise SimamVizError(f"{split}/ has different classes from train/")
    return train_set, evals


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, *, batch_size: int = 64,
                      device: str = "cpu") -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero (per step)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def _train_one(cfg: TrainConfig, arch: str, train_set, evals, rank: int, world: int) -> dict:
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)  # identical initial weights for every variant and rank
    model = build_model(arch, num_classes=len(train_set.classes), width=cfg.width,
                        simam_lambda=cfg.simam_lambda, dilate_last=cfg.dilate_last,
                        zero_init_residual=cfg.zero_init_residual).to(device)
    if cfg.init is not None:
        _load_init(model, Path(cfg.init) / f"{arch}.safetensors", list(train_set.classes))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True) if world > 1 else None
    order = torch.Generator().manual_seed(cfg.seed)  # same data order for every variant
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None,
                        sampler=sampler, generator=order, drop_last=True)
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    out = Path(cfg.out)
    state_path = out / f".{arch}.state.pt"
    start_epoch, step, before = 0, 0, 0.0
    history: list[dict[str, Any]] = []
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        order.set_state(state["order"])
        torch.set_rng_state(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        # time and history of the epochs before the interruption, so the record stays whole
        before = float(state.get("seconds", 0.0))
        history = list(state.get("history", []))
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        bar = tqdm(loader, desc=f"{arch} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or rank != 0, leave=False)
        for x, y in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total, steps_per_epoch)
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        val = evaluate_accuracy(model, evals["val"], device=cfg.device) if "val" in evals else None
        history.append({"epoch": epoch + 1, "step": step, "val_top1": val,
                        "seconds": round(before + time.perf_counter() - started, 1)})
        LOG.info("%s epoch %d/%d: step %d, val top-1 %s", arch, epoch + 1, cfg.epochs, step,
                 "-" if val is None else f"{val:.2f}")
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".part")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "order": order.get_state(), "rng": torch.get_rng_state(),
                        "epoch": epoch + 1, "step": step, "history": history,
                        "seconds": before + time.perf_counter() - started}, tmp)
            tmp.replace(state_path)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    return {"model": model, "history": history, "steps": step,
            "seconds": before + time.perf_counter() - started}


def _load_init(model: nn.Module, path: Path, classes: list[str]) -> None:
    """Start from an earlier run's weights: same architecture, same classes in the same order."""
    if not path.is_file():
        raise SimamVizError(f"--init: no checkpoint {path}")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    if sidecar.get("class_names") != classes:
        raise SimamVizError(f"--init: {path.name} was trained on other classes than {classes}")
    model.load_state_dict(load_model(path).state_dict())


def _init_provenance(cfg: TrainConfig, arch: str) -> dict[str, Any] | None:
    """What the run started from, so the total training time and history stay on record."""
    if cfg.init is None:
        return None
    path = Path(cfg.init) / f"{arch}.safetensors"
    prov = json.loads(path.with_suffix(".json").read_text()).get("provenance", {})
    return {"checkpoint": str(path), "sha256": file_sha256(path),
            **{k: prov.get(k) for k in ("data", "data_meta", "config", "history",
                                        "train_seconds", "val_top1", "test_top1")}}


def _class_glyphs(root: Path) -> dict[str, list[str]]:
    meta = root / "meta.json"
    if not meta.is_file():
        return {}
    data = json.loads(meta.read_text())
    return {c["name"]: c.get("glyphs", []) for c in data.get("classes", [])}


def train(cfg: TrainConfig) -> dict[str, Path]:
    """Train every variant in ``cfg.archs``; return the checkpoint path of each (rank 0)."""
    unknown = [a for a in cfg.archs if a not in ARCHS]
    if unknown:
        raise SimamVizError(f"unknown architecture {unknown[0]!r}; expected {', '.join(ARCHS)}")
    rank, world = _dist()
    train_set, evals = _datasets(cfg)
    written: dict[str, Path] = {}
    for arch in cfg.archs:
        run = _train_one(cfg, arch, train_set, evals, rank, world)
        if rank != 0:
            continue
        model = run["model"]
        accuracy = {f"{s}_top1": evaluate_accuracy(model, ds, device=cfg.device)
                    for s, ds in evals.items()}
        provenance = {
            **accuracy,
            "train_seed": cfg.seed,
            "data": str(cfg.data),
            "data_meta": _read_meta(Path(cfg.data)),
            "class_glyphs": _class_glyphs(Path(cfg.data)),
            "commit": _commit(),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
            "world_size": world,
            "history": run["history"],
            "train_seconds": round(run["seconds"], 1),
            "init": _init_provenance(cfg, arch),
            "torch": torch.__version__,
        }
        written[arch] = save_checkpoint(model.cpu(), Path(cfg.out) / arch,
                                        class_names=list(train_set.classes),
                                        preprocessing=cfg.preprocessing(),
                                        provenance=provenance)
        model.to(cfg.device)
    if world > 1:
        dist.barrier()
    return written


def _read_meta(root: Path) -> dict[str, Any]:
    meta = root / "meta.json"
    if not meta.is_file():
        return {}
    data = json.loads(meta.read_text())
    return {k: data.get(k) for k in ("generator", "version", "seed", "size", "counts")}
