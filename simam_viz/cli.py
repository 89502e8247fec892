"""``simam-viz``: the command-line shell over the package.

Each subcommand is one (name, help, add_arguments, run) row in :data:`COMMANDS`. Usage and
input errors end with exit status 2 and a single ``error: ...`` line on stderr, never a
traceback; batch commands report and skip bad items and say so in their exit status (1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from simam_viz.errors import SimamVizError

if TYPE_CHECKING:
    from simam_viz.studies.distributed import Shard
    from simam_viz.weights.catalog import CatalogItem
    from simam_viz.weights.registry import RegistryEntry

__all__ = ["COMMANDS", "main"]

LOG = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and status 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---- list / fetch ---------------------------------------------------------------------------


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="checkpoints folder (default: $SIMAM_VIZ_CHECKPOINTS, else "
                                 "checkpoints/ in a source checkout, else a per-user folder)")


def _identify(path: Path) -> str:
    """Layout, arch, classes and variant of a file, or why it cannot be read (one line)."""
    from simam_viz.errors import CheckpointError
    from simam_viz.weights.checkpoints import identify_checkpoint  # lazy: torch loads only here

    try:
        ident = identify_checkpoint(path)
    except CheckpointError as exc:
        return f"unreadable: {exc}"
    return (f"layout {ident.layout}, {ident.arch}, {ident.num_classes} classes, "
            f"ResNet {ident.resnet_variant}")


def _official_status(entry: RegistryEntry, path: Path) -> str:
    """Hash check where a hash is published; else make sure the file is what it claims.

    Without a hash (Drive files) a generic candidate name such as ``checkpoint.pth.tar`` could
    be any training checkpoint, so the file's layout must at least give the entry's arch.
    """
    from simam_viz.errors import CheckpointError
    from simam_viz.weights.checkpoints import identify_checkpoint
    from simam_viz.weights.registry import verify_file

    status = verify_file(entry, path)
    if status == "no published hash":
        try:
            ident = identify_checkpoint(path)
        except CheckpointError as exc:
            return f"present, unreadable ({path.name}): {exc}"
        if ident.arch != entry.arch or ident.resnet_variant != entry.resnet_variant:
            return (f"present, but {path.name} holds a {ident.arch} ({ident.resnet_variant}), "
                    f"not {entry.arch} ({entry.resnet_variant})")
    return f"present, {status} ({path.name})"


def _list(args: argparse.Namespace) -> int:
    from simam_viz.weights.catalog import available_demo, checkpoint_files
    from simam_viz.weights.registry import checkpoints_dir, find_present, load_registry

    folder = Path(args.dir) if args.dir else checkpoints_dir()
    registry = load_registry()
    missing_folder = "" if folder.is_dir() else " (does not exist yet)"
    print(f"Official checkpoints (folder {folder}{missing_folder}):")
    rows = [("name", "arch", "top-1", "licence", "redistributable", "status")]
    official = set()
    for entry in registry.values():
        path = find_present(entry, folder)
        if path is None:
            status = "missing"
        else:
            official.add(path.resolve())
            status = _official_status(entry, path)
        top1 = f"{entry.top1:.2f}" if entry.top1 is not None else "-"
        rows.append((entry.name, entry.arch, top1, entry.licence,
                     "yes" if entry.redistributable else "no", status))
    _print_table(rows)
    demo = available_demo(folder)
    print("\nDemo models (trained by this project, offline):")
    if not demo:
        print("  none")
    key_width = max((len(item.key) for item in demo), default=0)
    for item in demo:
        top1 = f", test top-1 {item.top1:.1f}%" if item.top1 is not None else ""
        print(f"  {item.key:{key_width}s}  {item.arch}{top1}  ({item.path})")
    shown = official | {item.path.resolve() for item in demo}
    others = [p for p in checkpoint_files(folder) if p.resolve() not in shown] \
        if folder.is_dir() else []
    print("\nOther checkpoint files in the folder:")
    if not others:
        print("  none")
    width = max((len(p.relative_to(folder).as_posix()) for p in others), default=0)
    for path in others:
        print(f"  {path.relative_to(folder).as_posix():{width}s}  {_identify(path)}")
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        print(("  " + "  ".join(cells)).rstrip())


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="registry names (see `list`)")
    p.add_argument("--all", action="store_true", help="every registered checkpoint")
    p.add_argument("--dir", help="destination folder (default: checkpoints/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--redistributable-only", action="store_true",
                   help="refuse weights whose licence does not allow redistribution "
                        "(for images that will be published)")


def _fetch(args: argparse.Namespace) -> int:
    from simam_viz.weights.fetch import fetch
    from simam_viz.weights.registry import checkpoints_dir, load_registry, redistribution_refusal

    registry = load_registry()
    names = list(registry) if args.all else args.names
    if not names:
        raise SimamVizError(f"name a checkpoint or use --all; known: {', '.join(registry)}")
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SimamVizError(f"unknown checkpoint {unknown[0]!r}; known: {', '.join(registry)}")
    if args.redistributable_only:
        closed = [n for n in names if redistribution_refusal(registry[n])]
        if closed and not args.all:
            raise SimamVizError(str(redistribution_refusal(registry[closed[0]])))
        names = [n for n in names if n not in closed]
    folder = Path(args.dir) if args.dir else checkpoints_dir()
    failed = 0
    for name in names:
        try:
            path = fetch(registry[name], folder, progress=not args.quiet)
            print(f"{name}: {path}")
        except SimamVizError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 0 if not failed else (2 if failed == len(names) else 1)


# ---- predict --------------------------------------------------------------------------------


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint keys, registry names or paths (default: the demo set)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")


def _load_models(args: argparse.Namespace) -> list:
    from simam_viz.devices import resolve_device
    from simam_viz.weights.catalog import available_demo, load, resolve

    device = resolve_device(args.device)
    if args.checkpoints:
        items = [resolve(spec) for spec in args.checkpoints]
    else:
        items = available_demo()
        if not items:
            raise SimamVizError("no demo checkpoints in checkpoints/demo; pass --checkpoints")
    return [load(item, str(device)) for item in items]


def _block_arg(p: argparse.ArgumentParser) -> None:
    from simam_viz.networks.models import BLOCKS, DEFAULT_BLOCK

    p.add_argument("--block", default=DEFAULT_BLOCK,
                   help=f"bottleneck, {BLOCKS[0]} ... {BLOCKS[-1]} (default {DEFAULT_BLOCK})")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")


def _only_input(inputs: Sequence[object], path: object, exc: SimamVizError) -> None:
    """A bad input that is the only one is a usage error (exit 2, one ``error:`` line), not a
    batch with one item skipped (exit 1)."""
    if len(inputs) == 1:
        raise SimamVizError(f"{path}: {exc}") from exc


def _predict(args: argparse.Namespace) -> int:
    """Each model's ``--top`` classes for each image, through the analysis engine.

    :func:`~simam_viz.engine.analysis.analyze` preprocesses, runs and soft-maxes exactly as
    the app and the exports do, so ``predict`` cannot disagree with them; its backward pass
    for the one block's map is the price of having one code path.
    """
    import numpy as np

    from simam_viz.engine.analysis import analyze
    from simam_viz.images import load_image

    if args.top < 1:
        raise SimamVizError(f"--top must be a positive integer, got {args.top}")
    models = _load_models(args)
    skipped = 0
    for image_path in args.images:
        try:
            image = load_image(image_path)
        except SimamVizError as exc:
            _only_input(args.images, image_path, exc)
            print(f"error: {image_path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        print(image_path)
        for model in models:
            result = analyze(model, image)
            probs = result.probabilities
            top = np.argsort(-probs, kind="stable")[: args.top]  # --top may exceed the 5
            # that result.predictions keeps, so rank every class's probability
            names = model.simam_viz.class_names
            preds = ", ".join(f"{names[i]} {float(probs[i]):.1%}" for i in top)
            print(f"  {result.model_name}: {preds}")
    return 1 if skipped else 0


# ---- figure ---------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _figure_args(p: argparse.ArgumentParser) -> None:
    from simam_viz.engine.cam_methods import METHODS

    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--figure", nargs="+", default=["all"],
                   choices=["1", "6", "channels", "depth", "shapes", "all"],
                   help="which figures (6, channels and shapes for models with attention)")
    _model_args(p)
    _block_arg(p)
    p.add_argument("--target", help="class index or name (default: each model's top-1)")
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument("--lambda", dest="simam_lambda", type=float, help="SimAM lambda override")
    p.add_argument("--dpi", type=int, default=300)
    p.add_argument("--shared-scale", action="store_true", help="one colour scale per row")
    p.add_argument("--npz", action="store_true", help="also write the raw arrays")


def _expand(inputs: Sequence[str]) -> list[str]:
    from pathlib import Path

    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += [str(p) for p in found]
        else:
            paths.append(item)
    return paths


def _figure(args: argparse.Namespace) -> int:
    from simam_viz.networks.models import validate_block
    from simam_viz.rendering.figures import check_dpi
    from simam_viz.studies.distributed import sharded

    validate_block(args.block)
    check_dpi(args.dpi, "--dpi")
    if args.simam_lambda is not None and not args.simam_lambda > 0:
        raise SimamVizError(f"--lambda must be positive, got {args.simam_lambda}")
    paths = _expand(args.inputs)
    if not paths:
        raise SimamVizError("no images found in the given folders")
    with sharded(args.device) as shard:
        return _figure_shard(args, paths, shard)


def _figure_shard(args: argparse.Namespace, paths: list[str], shard: Shard) -> int:
    """``figure`` on this process's share of ``paths`` (all of them outside torchrun)."""
    from pathlib import Path

    from tqdm import tqdm

    from simam_viz.engine.analysis import resolve_target
    from simam_viz.images import image_sha256, load_image
    from simam_viz.rendering.export import FIGURES, ExportRequest, analyze_all, slug, write_exports

    args.device = shard.device(args.device)
    models = _load_models(args)
    for model in models:  # a bad target is a usage error, found before any work
        resolve_target(args.target, model.simam_viz.class_names)
    chosen = FIGURES if "all" in args.figure else tuple(dict.fromkeys(args.figure))
    request = ExportRequest(figures=chosen, block=args.block, target=args.target,
                            method=args.method, simam_lambda=args.simam_lambda, dpi=args.dpi,
                            shared_scale=args.shared_scale)
    out = Path(args.out)
    skipped, written = 0, 0
    mine = shard.take(paths)
    for path in tqdm(mine, unit="image", disable=len(mine) < 2 or not shard.main):
        try:
            image = load_image(path)  # checks the size cap before reading the file
            data = Path(path).read_bytes()
            results = analyze_all(models, image, request)
        except SimamVizError as exc:
            _only_input(paths, path, exc)
            tqdm.write(f"error: {path}: {exc} (skipped)", file=sys.stderr)
            skipped += 1
            continue
        files = write_exports(results, models, request, out, slug(Path(path).stem),
                              image_sha256(data), npz=args.npz)
        written += len(files)
    counts = shard.gather((written, skipped))  # rank 0 reports the whole job, once
    written, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if shard.main:
        print(f"wrote {written} files to {out}"
              + (f"; skipped {skipped} image(s)" if skipped else ""))
    return 1 if skipped else 0


# ---- explain --------------------------------------------------------------------------------


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMG")
    _block_arg(p)
    p.add_argument("--channel", type=int, required=True, help="channel of the block's SimAM")
    p.add_argument("--y", type=int, required=True, help="row of the neuron on the block's grid")
    p.add_argument("--x", type=int, required=True, help="column of the neuron")
    p.add_argument("--checkpoint", help="checkpoint key, registry name or path of a SimAM "
                                        "model (default: the demo SimAM-ResNet-50)")
    p.add_argument("--lambda", dest="simam_lambda", type=float,
                   help="SimAM lambda for this forward pass (default: the model's)")
    p.add_argument("--out", help="also write the panels and the composite as PNG here")
    p.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")


def _demo_simam() -> CatalogItem:
    """The demo SimAM model, the only default that can answer ``explain``."""
    from simam_viz.networks.models import ARCHS
    from simam_viz.weights.catalog import available_demo

    for item in available_demo():
        if ARCHS[item.arch].kind.has_lambda:
            return item
    raise SimamVizError("no demo SimAM model found; pass --checkpoint")


def _explanation_json(explanation: dict[str, object]) -> dict[str, object]:
    """The mapping without its h x w arrays (``values``, ``weights``), JSON-ready: tuples as
    lists, a NaN threshold (w = 0) as null, since JSON has no NaN."""
    from simam_viz.rendering.jsonsafe import to_json_safe

    return to_json_safe({k: v for k, v in explanation.items() if k not in ("values", "weights")})


def _explain(args: argparse.Namespace) -> int:
    import json

    from simam_viz.devices import resolve_device
    from simam_viz.engine.neuron import explain_neuron
    from simam_viz.images import image_sha256, load_image
    from simam_viz.networks.models import validate_block
    from simam_viz.weights.catalog import load, resolve

    validate_block(args.block)
    if args.simam_lambda is not None and not args.simam_lambda > 0:
        raise SimamVizError(f"--lambda must be positive, got {args.simam_lambda}")
    if args.out:
        from simam_viz.rendering.figures import check_dpi

        check_dpi(args.dpi, "--dpi")
    image = load_image(args.image)  # a bad image fails before a model is loaded
    item = resolve(args.checkpoint) if args.checkpoint else _demo_simam()
    model = load(item, str(resolve_device(args.device)))
    explanation = explain_neuron(model, image, block=args.block, channel=args.channel,
                                 y=args.y, x=args.x, simam_lambda=args.simam_lambda)
    result = _explanation_json(explanation)
    print(json.dumps(result, indent=2, allow_nan=False))
    if args.out:
        from simam_viz.rendering.export import slug
        from simam_viz.rendering.figures import save_png, write_manifest
        from simam_viz.rendering.neuron_figures import explain_panels

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = (f"{slug(Path(args.image).stem)}_{args.block}_c{args.channel}"
                f"_y{args.y}_x{args.x}")
        written = [save_png(fig, out / f"{stem}_{name}.png", dpi=args.dpi)
                   for name, fig in explain_panels(explanation).items()]
        written.append(write_manifest(out / f"{stem}.json", {
            "explanation": result, "image": str(args.image),
            "image_sha256": image_sha256(Path(args.image).read_bytes()),
            "checkpoint": item.key, "checkpoint_path": str(item.path), "dpi": args.dpi}))
        for path in written:  # stderr: stdout stays one JSON document, for pipes
            print(f"wrote {path}", file=sys.stderr)
    return 0


# ---- intervene ------------------------------------------------------------------------------


def _intervene_args(p: argparse.ArgumentParser) -> None:
    from simam_viz.engine.intervention import MODES
    from simam_viz.networks.models import DEFAULT_BLOCK

    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="checkpoint key, registry name or path of a model with attention "
                        "(default: the demo SimAM-ResNet-50)")
    p.add_argument("--mode", required=True, choices=list(MODES),
                   help="what the changed modules' weights become (exact: SimAM only)")
    p.add_argument("--blocks", nargs="+", metavar="BLOCK",
                   help="blocks to change together: layer1.0 ... layer4.2, or a stage "
                        "(layer1 ... layer4) for its attention blocks (default: all)")
    p.add_argument("--per-block", action="store_true",
                   help="also change each of those blocks alone (forward passes only)")
    p.add_argument("--target", help="class index or name (default: the model's top-1)")
    p.add_argument("--lambda", dest="simam_lambda", type=float, metavar="L",
                   help="SimAM lambda for both runs (default: the model's)")
    p.add_argument("--cam-block", default=DEFAULT_BLOCK, metavar="BLOCK",
                   help=f"where the Grad-CAM before and after is taken (default {DEFAULT_BLOCK})")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for intervention.json and intervention.png")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")


def _expand_blocks(blocks: Sequence[str] | None, model: object) -> list[str] | None:
    """A stage name (``layer3``) stands for that stage's attention blocks; block names pass
    through for :func:`~simam_viz.intervene` to check."""
    if blocks is None:
        return None
    from simam_viz.engine.intervention import attention_blocks
    from simam_viz.networks.models import BLOCKS

    available = attention_blocks(model)
    out: list[str] = []
    for block in blocks:
        stage = [b for b in BLOCKS if b.split(".")[0] == block]
        if not stage:  # a block name, or a typo that intervene() reports
            out.append(block)
            continue
        # a stage without attention passes its blocks on, for intervene()'s own message
        out += [b for b in stage if b in available] or stage
    return out


def _intervene(args: argparse.Namespace) -> int:
    """``intervene`` on one image and one model; JSON and the export figure in ``--out``.

    Every argument is checked before the model runs (a bad one is a usage error); the JSON
    is :func:`~simam_viz.rendering.intervention_figures.intervention_report`'s, the record the
    app's export writes, plus the image, checkpoint and resolution.
    """
    from simam_viz.devices import resolve_device
    from simam_viz.engine.intervention import intervene
    from simam_viz.images import image_sha256, load_image
    from simam_viz.networks.models import validate_block
    from simam_viz.rendering.figures import check_dpi, save_png, write_manifest
    from simam_viz.weights.catalog import load, resolve

    validate_block(args.cam_block)
    check_dpi(args.dpi, "--dpi")
    if args.simam_lambda is not None and not args.simam_lambda > 0:
        raise SimamVizError(f"--lambda must be positive, got {args.simam_lambda}")
    image = load_image(args.image)  # a bad image fails before a model is loaded
    item = resolve(args.checkpoint) if args.checkpoint else _demo_simam()
    model = load(item, str(resolve_device(args.device)))
    result = intervene(model, image, mode=args.mode, target=args.target,
                       blocks=_expand_blocks(args.blocks, model), per_block=args.per_block,
                       simam_lambda=args.simam_lambda, cam_block=args.cam_block)
    from simam_viz.rendering.intervention_figures import (  # matplotlib only from here
        intervention_figure,
        intervention_report,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_png(intervention_figure([result], dpi=args.dpi), out / "intervention.png",
                   dpi=args.dpi)
    manifest = write_manifest(out / "intervention.json", {
        **intervention_report([result]), "image": str(args.image),
        "image_sha256": image_sha256(Path(args.image).read_bytes()),
        "checkpoint": item.key, "checkpoint_path": str(item.path), "dpi": args.dpi,
        "timings": result.timings})
    print(f"{result.model_name}: {args.mode} on {len(result.blocks)} block(s), "
          f"{result.target_name} p {result.prob_ref:.4f} -> {result.prob:.4f} "
          f"({result.prob_change:+.4f}), KL {result.kl:.4g}, top-1 "
          + ("flipped" if result.flipped else "kept"))
    for path in (manifest, png):
        print(f"wrote {path}")
    return 0


# ---- scenes / train --------------------------------------------------------------------------


def _scenes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (ImageFolder layout + masks/ + meta.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--val", type=int, default=480)
    p.add_argument("--test", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gallery", help="also write example images for the app to this folder")


def _scenes(args: argparse.Namespace) -> int:
    from simam_viz.studies.scenes import gallery_examples, generate_dataset

    counts = {"train": args.train, "val": args.val, "test": args.test}
    if min(counts.values()) < 0 or args.size < 32:
        raise SimamVizError("counts must be >= 0 and --size >= 32")
    out = generate_dataset(args.out, seed=args.seed, counts=counts, size=args.size,
                           workers=args.workers, progress=True)
    print(f"wrote {sum(counts.values())} scenes to {out}")
    if args.gallery:
        print(f"wrote {len(gallery_examples(args.gallery, seed=args.seed))} gallery images")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from simam_viz.networks.models import ARCHS

    p.add_argument("--data", required=True, help="ImageFolder root with train/ (val/, test/)")
    p.add_argument("--out", required=True, help="where checkpoints are written")
    p.add_argument("--archs", nargs="+", default=["resnet50", "se_resnet50", "simam_resnet50"],
                   choices=list(ARCHS))
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--test-size", type=int,
                   help="inference resolution stored in the checkpoint (default: --size)")
    p.add_argument("--no-dilate-last", action="store_true",
                   help="keep layer4 at stride 32 (default: dilated, maps twice as fine)")
    p.add_argument("--no-zero-init-residual", dest="zero_init_residual", action="store_false",
                   help="keep the default init of each block's last BN (default: zero, so "
                        "blocks start as the identity)")
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda", dest="simam_lambda", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch saved")
    p.add_argument("--init", metavar="DIR",
                   help="start from the checkpoints an earlier run wrote to DIR (fine-tuning)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)


def _train(args: argparse.Namespace) -> int:
    import os

    from simam_viz.devices import resolve_device
    from simam_viz.studies.training import TrainConfig, train

    device = resolve_device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = resolve_device(f"cuda:{os.environ['LOCAL_RANK']}")
    cfg = TrainConfig(data=args.data, out=args.out, archs=tuple(args.archs), width=args.width,
                      size=args.size, test_size=args.test_size,
                      dilate_last=not args.no_dilate_last, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      simam_lambda=args.simam_lambda, max_steps=args.max_steps,
                      device=str(device), resume=args.resume, init=args.init,
                      warmup_epochs=args.warmup_epochs,
                      zero_init_residual=args.zero_init_residual, progress=True)
    for arch, path in train(cfg).items():
        print(f"{arch}: {path}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    from simam_viz.engine.cam_methods import METHODS

    p.add_argument("--data", required=True, help="ImageFolder root with masks/ or boxes.json")
    p.add_argument("--split", default="test")
    _model_args(p)
    p.add_argument("--methods", nargs="+", default=["gradcam"], choices=list(METHODS))
    _block_arg(p)
    p.add_argument("--limit", type=int, help="evaluate an even subset of this many images")
    p.add_argument("--faithfulness", action="store_true",
                   help="add ROAD, drop/increase in confidence, deletion and insertion AUC "
                        "(means with 95%% bootstrap intervals)")
    p.add_argument("--baselines", action="store_true",
                   help="with --faithfulness: score a random map and a centred Gaussian map "
                        "the same way, on the same scenes (columns road_random, road_center, "
                        "...), as the reference point of each score; about triples its time")
    p.add_argument("--sanity", action="store_true",
                   help="add the cascading-randomization sanity check (Spearman, SSIM, HOG "
                        "at fc and at the last step, mean |Spearman|)")
    p.add_argument("--sanity-mode", choices=("cascade", "independent"),
                   help="with --sanity: randomise the layers cumulatively from the logits down "
                        "(cascade, the default) or one at a time, all others trained "
                        "(independent)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of ROAD's noise, the cascade and the bootstrap (default 0)")
    p.add_argument("--csv", help="write the table as CSV here")
    p.add_argument("--paired", action="store_true",
                   help="add each model minus the reference, and after minus before the "
                        "attention module, on the same scenes: mean difference and its 95%% "
                        "paired bootstrap interval for every metric")
    p.add_argument("--reference", metavar="MODEL",
                   help="with --paired: the model the others are compared with, by name or "
                        "arch (default: resnet50 when it is evaluated)")
    p.add_argument("--paired-csv", metavar="CSV",
                   help="write the paired differences as CSV here (implies --paired)")
    p.add_argument("--per-image", metavar="JSON",
                   help="with --faithfulness/--sanity: write every image's scores (and the "
                        "sanity cascades) as JSON here; with --interventions every scene's "
                        "values, as CSV if the name ends in .csv, else JSON")
    from simam_viz.engine.intervention import MODES

    p.add_argument("--interventions", action="store_true",
                   help="instead of the maps: per model with attention, mode and stage, the "
                        "change in the target's (top-1's) probability, the share of top-1 "
                        "flips and the KL when its attention weights are replaced, with 95%% "
                        "bootstrap intervals, and paired mode-against-mode differences")
    p.add_argument("--modes", nargs="+", choices=list(MODES), metavar="MODE",
                   help=f"with --interventions: the modes ({', '.join(MODES)}; default: "
                        "every mode each model's kind takes)")


def _evaluate(args: argparse.Namespace) -> int:
    from simam_viz.networks.models import validate_block
    from simam_viz.studies.distributed import sharded
    from simam_viz.studies.evaluation import (
        evaluate,
        format_paired_table,
        format_table,
        paired_differences,
        pick_reference,
        write_csv,
        write_paired_csv,
        write_per_image,
    )

    validate_block(args.block)
    if args.limit is not None and args.limit < 1:
        raise SimamVizError(f"--limit must be at least 1, got {args.limit}")
    if args.seed < 0:
        raise SimamVizError(f"--seed must be >= 0, got {args.seed}")
    if args.interventions:
        return _evaluate_interventions(args)
    if args.modes is not None:
        raise SimamVizError("--modes needs --interventions")
    if args.per_image and not (args.faithfulness or args.sanity):
        raise SimamVizError("--per-image needs --faithfulness or --sanity")
    if args.sanity_mode is not None and not args.sanity:
        raise SimamVizError("--sanity-mode needs --sanity")
    if args.baselines and not args.faithfulness:
        raise SimamVizError("--baselines needs --faithfulness")
    paired = args.paired or bool(args.paired_csv)
    if args.reference is not None and not paired:
        raise SimamVizError("--reference needs --paired")
    with sharded(args.device) as shard:  # under torchrun: this rank's share of the images
        args.device = shard.device(args.device)
        models = _load_models(args)
        reference = pick_reference(
            ((m.simam_viz.name, m.simam_viz.arch) for m in models), args.reference)
        rows = evaluate(models, args.data, split=args.split, methods=args.methods,
                        block=args.block, limit=args.limit, faithfulness=args.faithfulness,
                        sanity=args.sanity, sanity_mode=args.sanity_mode or "cascade",
                        seed=args.seed, progress=True, shard=shard, keep_values=paired,
                        baselines=args.baselines)
        if not shard.main:  # every rank has the merged rows; rank 0 writes them, once
            return 0
    print(format_table(rows))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}")
    if paired:
        diffs = paired_differences(rows, reference, seed=args.seed)
        print()
        print(format_paired_table(diffs))
        if args.paired_csv:
            print(f"wrote {write_paired_csv(diffs, args.paired_csv)}")
    if args.per_image:
        print(f"wrote {write_per_image(rows, args.per_image)}")
    return 0


def _evaluate_interventions(args: argparse.Namespace) -> int:
    """``evaluate --interventions``: the intervention study's tables (markdown, CSV).

    No map is scored here (the study runs forward passes only): the flags that score maps
    are refused rather than silently ignored; ``--methods`` and ``--block``, which have
    defaults, are not used.
    """
    from simam_viz.studies.distributed import sharded
    from simam_viz.studies.interventions import (
        format_intervention_table,
        format_paired_interventions,
        intervention_study,
        paired_interventions,
        write_intervention_csv,
        write_paired_csv,
        write_per_image_csv,
        write_rows,
    )

    clashing = [flag for flag, given in (
        ("--faithfulness", args.faithfulness), ("--sanity", args.sanity),
        ("--baselines", args.baselines), ("--sanity-mode", args.sanity_mode is not None),
        ("--reference", args.reference is not None)) if given]
    if clashing:
        raise SimamVizError(f"--interventions cannot be combined with {clashing[0]}")
    with sharded(args.device) as shard:
        args.device = shard.device(args.device)
        models = _load_models(args)
        rows = intervention_study(models, args.data, split=args.split, modes=args.modes,
                                  limit=args.limit, seed=args.seed, progress=True, shard=shard)
        if not shard.main:
            return 0
    diffs = paired_interventions(rows, seed=args.seed)
    print(format_intervention_table(rows))
    print()
    print(format_paired_interventions(diffs))
    if args.csv:
        print(f"wrote {write_intervention_csv(rows, args.csv)}")
    if args.paired_csv:
        print(f"wrote {write_paired_csv(diffs, args.paired_csv)}")
    if args.per_image:
        write = write_per_image_csv if args.per_image.lower().endswith(".csv") else write_rows
        print(f"wrote {write(rows, args.per_image)}")
    return 0


# ---- app ------------------------------------------------------------------------------------


def _app_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--address", help="address to listen on (default: Streamlit's, all)")


def _app(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from simam_viz.resources import bundled_app, streamlit_config

    if not 1 <= args.port <= 65535:
        raise SimamVizError(f"--port must be 1-65535, got {args.port}")
    serve = bundled_app() / "serve.py"
    if not serve.is_file():
        raise SimamVizError(f"the app is missing from this installation ({serve})")
    command = [sys.executable, "-m", "streamlit", "run", str(serve),
               *_streamlit_flags(streamlit_config()), "--server.port", str(args.port)]
    if args.address:
        command += ["--server.address", args.address]
    LOG.info("starting the app: %s", " ".join(command))
    for handler in logging.getLogger("simam_viz").handlers:
        handler.flush()
    if os.name == "posix":  # become the server: signals (Ctrl-C, a supervisor's TERM) reach it
        os.execv(sys.executable, command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # Ctrl-C reaches Streamlit too, which shuts down cleanly
        return 0


def _streamlit_flags(config: Path) -> list[str]:
    """``--section.key value`` for every setting of the app's ``.streamlit/config.toml``.

    Streamlit reads that file only from the working directory; as flags, the same settings
    (upload cap, XSRF, no post-run GC...) apply wherever ``simam-viz app`` is started.
    """
    import tomllib

    if not config.is_file():
        return []
    flags: list[str] = []
    for section, values in tomllib.loads(config.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += [f"--{section}.{key}", text]
    return flags


COMMANDS: list[Command] = [
    Command("list", "show known and present checkpoints", _list_args, _list),
    Command("fetch", "download official checkpoints (hash-verified)", _fetch_args, _fetch),
    Command("predict", "top classes of each model for images", _predict_args, _predict),
    Command("figure", "export Figure 1/6, channel, depth and attention-shape figures",
            _figure_args, _figure),
    Command("explain", "why SimAM gave one neuron its weight (energy, Eqns 2, 5, 6) as JSON",
            _explain_args, _explain),
    Command("intervene", "replace attention weights by counterfactuals and run again (JSON + PNG)",
            _intervene_args, _intervene),
    Command("scenes", "generate the synthetic emoji scene dataset", _scenes_args, _scenes),
    Command("train", "train ResNet-50 variants identically on an ImageFolder",
            _train_args, _train),
    Command("evaluate", "accuracy and Grad-CAM localization against masks or boxes",
            _evaluate_args, _evaluate),
    Command("app", "start the web app (the same app as `make run`)", _app_args, _app),
]


def build_parser() -> argparse.ArgumentParser:
    from simam_viz import __version__

    parser = _Parser(prog="simam-viz", description="See what SimAM attention does in ResNet-50.")
    parser.add_argument("--version", action="version", version=f"simam-viz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``simam-viz`` console script; returns the exit status.

    Usage errors (and ``--help``) come back as a status too, not as ``SystemExit``, so callers
    and tests see one contract: 0 ok, 1 some items skipped, 2 nothing done. A failure that is
    not the user's (a bug, a full disk) is one ``error:`` line too; its traceback goes to the
    log (shown with ``SIMAM_VIZ_LOG_LEVEL=DEBUG``).
    """
    from simam_viz.logs import setup_logging

    setup_logging(default_level="WARNING", fmt="simam-viz: %(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-V"]):  # answered before the parser imports torch
        from simam_viz import __version__

        print(f"simam-viz {__version__}")
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except SimamVizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line here, the traceback logged
        LOG.debug("%s failed", args.command, exc_info=True)
        print(f"error: {args.command} failed: {type(exc).__name__}: {exc} "
              "(SIMAM_VIZ_LOG_LEVEL=DEBUG shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
