"""Per-checkpoint preprocessing and ImageNet class names.

Each checkpoint was trained with its own resize, crop, interpolation and normalisation (timm's
SE weights use bicubic and crop_pct 0.95, torchvision's V2 resizes to 232); a map only lines up
with the image when the model sees the input it was trained on, so every model carries its own
:class:`Preprocessing`, turned into torchvision's classification preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "imagenet_classes"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side), centre crop, interpolation and normalisation of one checkpoint."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(f"need 0 < crop <= resize, got resize={self.resize} crop={self.crop}")
        try:
            InterpolationMode(self.interpolation)
        except ValueError:
            raise ValueError(f"unknown interpolation {self.interpolation!r}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Build from a JSON-like dict (unknown keys are an error, lists become tuples)."""
        known = {"resize", "crop", "interpolation", "mean", "std"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(sorted(unknown))}")
        args = dict(data)
        for key in ("mean", "std"):
            if key in args:
                args[key] = tuple(float(v) for v in args[key])
        return cls(**args)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def transform(self) -> ImageClassification:
        """torchvision's classification preset (the object ``Weights.transforms()`` returns)."""
        return ImageClassification(
            crop_size=self.crop,
            resize_size=self.resize,
            mean=self.mean,
            std=self.std,
            interpolation=InterpolationMode(self.interpolation),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> normalised 1x3xCxC float tensor."""
        return self.transform()(image).unsqueeze(0)

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The resized, centre-cropped RGB image the model sees (for overlays), un-normalised."""
        from torchvision.transforms import functional as tf

        mode = InterpolationMode(self.interpolation)
        resized = tf.resize(image, [self.resize], interpolation=mode)
        return tf.center_crop(resized, [self.crop])


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
