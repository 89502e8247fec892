"""Accuracy and Grad-CAM localization of models on an ImageFolder with masks or boxes.

For each image the ground-truth class is explained (target = label), one analysis pass per
model and method gives every map, and each map is scored against the object mask brought to
the model's input frame (same resize and centre crop, nearest neighbour). SimAM models are
scored at the block output and before/after SimAM, the paper's claim being that SimAM's
refinement focuses the features on the object.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tf
from tqdm import tqdm

from simam_viz.analysis import analyze
from simam_viz.errors import SimamVizError
from simam_viz.images import load_image
from simam_viz.localization import energy_in_mask, iou_at, mask_from_boxes, pointing_game
from simam_viz.models import DEFAULT_BLOCK
from simam_viz.preprocess import Preprocessing

__all__ = ["Sample", "evaluate", "format_table", "load_samples", "write_csv"]

LOG = logging.getLogger(__name__)

FIELDS = ("model", "arch", "method", "block", "where", "images", "top1", "pointing",
          "energy", "iou")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    mask: np.ndarray  # HxW bool in the original image's frame


def load_samples(data_dir: str | Path, split: str = "test", limit: int | None = None
                 ) -> tuple[list[str], list[Sample]]:
    """Class names and samples of ``data_dir/split`` with masks (``masks/``) or boxes.

    Boxes come from ``data_dir/boxes.json``: ``{"split/class/file.png": [[x0,y0,x1,y1], ...]}``.
    """
    root = Path(data_dir)
    split_dir = root / split
    if not split_dir.is_dir():
        raise SimamVizError(f"{split_dir}: no such split folder")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    boxes_file = root / "boxes.json"
    boxes = json.loads(boxes_file.read_text()) if boxes_file.is_file() else {}
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            rel = f"{split}/{name}/{path.name}"
            mask_path = root / "masks" / split / name / path.name
            if mask_path.is_file():
                mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            elif rel in boxes:
                with Image.open(path) as im:
                    size = im.size
                mask = mask_from_boxes((size[1], size[0]), boxes[rel])
            else:
                continue
            samples.append(Sample(path, label, mask))
    if limit is not None:  # an even spread over classes, deterministic
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    if not samples:
        raise SimamVizError(f"{split_dir}: no images with masks (masks/) or boxes (boxes.json)")
    return classes, samples


def _mask_in_frame(mask: np.ndarray, prep: Preprocessing) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    im = tf.resize(im, [prep.resize], interpolation=InterpolationMode.NEAREST)
    return np.asarray(tf.center_crop(im, [prep.crop])) > 127


def evaluate(
    models: Sequence[nn.Module],
    data_dir: str | Path,
    *,
    split: str = "test",
    methods: Sequence[str] = ("gradcam",),
    block: str = DEFAULT_BLOCK,
    limit: int | None = None,
    progress: bool = False,
) -> list[dict[str, object]]:
    """One row per (model, method, where) with accuracy and mean localization scores."""
    classes, samples = load_samples(data_dir, split, limit)
    for model in models:
        if list(model.simam_viz.class_names) != classes:
            raise SimamVizError(f"{model.simam_viz.name}: classes differ from {split}/ folders")
    scores: dict[tuple, list[tuple[bool, float, float]]] = defaultdict(list)
    correct: dict[str, int] = defaultdict(int)
    for sample in tqdm(samples, disable=not progress, unit="img", desc="evaluate"):
        image = load_image(sample.path)
        for model in models:
            info = model.simam_viz
            mask = _mask_in_frame(sample.mask, info.preprocessing)
            for method in methods:
                result = analyze(model, image, target=sample.label, blocks=(block,),
                                 method=method)
                if method == methods[0]:
                    correct[info.name] += int(result.predictions[0].index == sample.label)
                for where in result.wheres(block):
                    if where == "attention":
                        continue
                    cam = result.cam(block, where)
                    scores[(info.name, info.arch, method, where)].append(
                        (pointing_game(cam, mask), energy_in_mask(cam, mask), iou_at(cam, mask))
                    )
    rows = []
    for (name, arch, method, where), values in scores.items():
        arr = np.asarray(values, dtype=np.float64)
        rows.append({
            "model": name, "arch": arch, "method": method, "block": block, "where": where,
            "images": len(values), "top1": 100.0 * correct[name] / len(samples),
            "pointing": 100.0 * arr[:, 0].mean(), "energy": 100.0 * arr[:, 1].mean(),
            "iou": 100.0 * arr[:, 2].mean(),
        })
    LOG.info("evaluated %d models x %d methods on %d images of %s/%s", len(models),
             len(methods), len(samples), data_dir, split)
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A Markdown table (README-ready) of evaluation rows."""
    head = "| model | method | map | images | top-1 % | pointing % | energy in mask % | IoU@0.5 % |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['block']} {r['where']} | {r['images']} | "
            f"{r['top1']:.1f} | {r['pointing']:.1f} | {r['energy']:.1f} | {r['iou']:.1f} |"
        )
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, object]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v)
                             for k, v in row.items()})
    return path
