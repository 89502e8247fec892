"""Constants and plain helpers shared by the test modules; the fixtures built on them are in
``conftest.py``.

Test modules import these by name (``from helpers import tiny_model``), as they do
``localhttp``: pytest puts ``tests/`` on ``sys.path``. What drives the real app (server,
browser, run state) is the repository's ``harness`` package, which pytest can import because
pyproject.toml puts the repository root on ``sys.path`` too. Only what several test modules
used to define each for themselves lives here.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harness.apphost import ROOT
from simam_viz import build_model, save_checkpoint
from simam_viz.networks.preprocess import Preprocessing
from simam_viz.serving.service import AnalysisKey

# ---- paths ----------------------------------------------------------------------------------

APP_DIR = ROOT / "app"
APP_SCRIPT = APP_DIR / "streamlit_app.py"  # the page (AppTest runs this file)
SERVE_SCRIPT = APP_DIR / "serve.py"  # the warm-start wrapper `streamlit run` serves
EXAMPLES_DIR = APP_DIR / "examples"
DEFAULT_EXAMPLE = EXAMPLES_DIR / "scene_dog_3.png"  # what the page shows first (app/paths.py)
CHECKPOINTS_DIR = ROOT / "checkpoints"
DEMO_DIR = CHECKPOINTS_DIR / "demo"  # the shipped demo models
DOCKERFILE = ROOT / "Dockerfile"

# ---- the tiny models the app and CLI tests serve ----------------------------------------------

DEMO_ARCHS = ("resnet50", "se_resnet50", "simam_resnet50")  # what checkpoints/demo holds
CLASSES = ["apple", "ball", "cat"]
TINY_PREP = Preprocessing(resize=64, crop=64)
# ImageNet preprocessing as a registry entry spells it
IMAGENET_PREP = {"resize": 256, "crop": 224, "interpolation": "bilinear",
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def randomize_bn(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and scales (global RNG), so maps are not trivially uniform."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.2)
    return model


def tiny_model(arch: str = "simam_resnet50", seed: int = 0, *, width: float = 0.125,
               num_classes: int = 3, dilate_last: bool = False, random_bn: bool = False,
               class_names: Sequence[str] | None = None,
               preprocessing: Preprocessing | None = None, **build_kwargs: Any) -> nn.Module:
    """``build_model`` after ``torch.manual_seed(seed)``: the same weights for the same seed.

    ``random_bn`` randomizes the BatchNorm statistics (:func:`randomize_bn`); class names and
    preprocessing are set only when given (else ``build_model``'s defaults stay).
    """
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, width=width, dilate_last=dilate_last,
                        **build_kwargs)
    if random_bn:
        randomize_bn(model)
    if class_names is not None:
        model.simam_viz.class_names = list(class_names)
    if preprocessing is not None:
        model.simam_viz.preprocessing = preprocessing
    return model


def save_tiny_checkpoints(folder: Path, *, archs: Sequence[str] = DEMO_ARCHS,
                          classes: Sequence[str] = CLASSES,
                          preprocessing: Preprocessing = TINY_PREP, dilate_last: bool = True,
                          random_bn: bool = False,
                          provenance: dict[str, Any] | None = None) -> Path:
    """``folder/demo/<arch>`` for each arch: untrained width-0.125 models, arch i seeded i.

    The layout of ``checkpoints/demo``, so the app and the CLI find them as demo models.
    """
    for seed, arch in enumerate(archs):
        model = tiny_model(arch, seed, dilate_last=dilate_last, random_bn=random_bn,
                           num_classes=len(classes))
        save_checkpoint(model, folder / "demo" / arch, class_names=list(classes),
                        preprocessing=preprocessing, provenance=provenance)
    return folder


def shipped_demo_present() -> bool:
    return bool(list(DEMO_DIR.glob("*.safetensors")))


def demo_or_tiny_checkpoints(folder: Path) -> Path:
    """The shipped demo models copied into ``folder/demo`` if present, else the tiny ones."""
    if shipped_demo_present():
        shutil.copytree(DEMO_DIR, folder / "demo")
        return folder
    return save_tiny_checkpoints(folder)


# ---- hooks ----------------------------------------------------------------------------------

HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks")


def hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per submodule, how many hooks of each of ``HOOK_KINDS`` it holds."""
    return {name: tuple(len(getattr(m, kind)) for kind in HOOK_KINDS)
            for name, m in model.named_modules()}


def hook_count(model: nn.Module) -> int:
    """All module hooks in ``model`` (a freshly built model has none)."""
    return sum(sum(counts) for counts in hook_counts(model).values())


def global_hook_counts() -> tuple[int, int, int]:
    """torch's process-wide module hooks (forward, forward-pre, backward)."""
    module = nn.modules.module
    return (len(module._global_forward_hooks), len(module._global_forward_pre_hooks),
            len(module._global_backward_hooks))


# ---- inputs and results -----------------------------------------------------------------------


def noise_image(seed: int = 0, height: int = 64, width: int = 64) -> Image.Image:
    """A random RGB picture: different seeds, different pictures."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    return Image.open(io.BytesIO(data)).size


def file_names(folder: Path) -> list[str]:
    """Sorted names in ``folder`` ([] when it does not exist): what a failure left behind."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def cache_key(image: str = "a" * 64, model_key: str = "demo/x", method: str = "gradcam",
                 lam: float | None = None) -> AnalysisKey:
    """A service cache key on the CPU (``image`` stands for the picture's sha256)."""
    return AnalysisKey(image, model_key, "b" * 64, "cpu", None, method, lam)


def run_page(timeout: float = 180):
    """A new session of the page (``APP_SCRIPT``) in Streamlit's AppTest, run once."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=timeout)
    at.run()
    return at


def one_line(exc: pytest.ExceptionInfo, limit: int = 300) -> str:
    """The exception's message, checked to be one line of at most ``limit`` characters."""
    message = str(exc.value)
    assert message and "\n" not in message and len(message) <= limit, message
    return message


# ---- registries -------------------------------------------------------------------------------


def registry_entry(name: str, filename: str, url: str, **extra: Any) -> dict[str, Any]:
    """One checkpoint-registry entry (the JSON form), downloadable over HTTP from ``url``."""
    return {"name": name, "title": name, "arch": "resnet50", "resnet_variant": "v1.5",
            "filename": filename, "source": "http", "urls": [url], "sha256": None,
            "sha256_prefix": None, "preprocessing": IMAGENET_PREP, "simam_lambda": None,
            "top1": 70.0, "licence": "MIT", "redistributable": True, "notes": "", **extra}


def squares_dataset(root: Path, side: int = 48, per_class: int = 2) -> Path:
    """An ImageFolder test split with masks (``evaluate``'s input): for each class of
    ``SQUARE_COLOURS``, ``per_class`` coloured squares on noise, ``side`` pixels, seed 0."""
    rng = np.random.default_rng(0)
    for name, colour in SQUARE_COLOURS.items():
        for i in range(per_class):
            img = rng.integers(0, 80, (side, side, 3), np.uint8)
            mask = np.zeros((side, side), bool)
            y, x = rng.integers(0, side // 2, 2)
            img[y : y + side * 5 // 12, x : x + side * 5 // 12] = colour
            mask[y : y + side * 5 // 12, x : x + side * 5 // 12] = True
            for folder, arr in ((root / "test" / name, img),
                                (root / "masks" / "test" / name, mask)):
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return root


SQUARE_COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}  # sorted
