"""What the web app needs between its widgets and the engine, free of any UI code.

- Models are loaded once per (checkpoint, device) and shared by all sessions; the engine's
  per-model lock makes that safe.
- Analyses are cached by the sha256 of the uploaded bytes plus the settings that change the
  numbers (never by arrays or PIL images, whose hashes can collide or be sampled).
- Model work is bounded: at most ``max_concurrent`` analyses run at once; a request that
  cannot start within ``wait_s`` gets a "busy, retry" answer instead of joining an unbounded
  queue. A CUDA out-of-memory error frees the cache and becomes a clear message.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from simam_viz.analysis import Analysis, analyze
from simam_viz.errors import SimamVizError

__all__ = ["AnalysisKey", "BusyError", "ResultCache", "Service", "ServiceError"]


class ServiceError(SimamVizError):
    """A request the server could not serve (out of memory, failed analysis)."""


class BusyError(ServiceError):
    """Too many analyses are running; the user should retry in a moment."""


@dataclass(frozen=True)
class AnalysisKey:
    """Everything that changes an analysis's numbers; the cache key."""

    image_sha256: str
    model_key: str
    checkpoint_sha256: str
    device: str
    target: str | None
    method: str
    simam_lambda: float | None


class ResultCache:
    """A small thread-safe LRU of analyses (each holds a few MB of float32 maps)."""

    def __init__(self, capacity: int = 24) -> None:
        self.capacity = capacity
        self._items: OrderedDict[AnalysisKey, Analysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: AnalysisKey) -> Analysis | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: AnalysisKey, value: Analysis) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class Service:
    """Bounded, cached analyses over shared models."""

    def __init__(self, *, max_concurrent: int | None = None, wait_s: float | None = None,
                 cache_size: int = 24) -> None:
        """Bounds from the arguments, else ``$SIMAM_VIZ_MAX_CONCURRENT`` (analyses at once,
        default 2) and ``$SIMAM_VIZ_BUSY_WAIT_S`` (how long a request waits for a slot before
        it is told the server is busy, default 5 s), so an operator can tune a deployment."""
        limit = max_concurrent or int(os.environ.get("SIMAM_VIZ_MAX_CONCURRENT", "2"))
        self._slots = threading.BoundedSemaphore(max(1, limit))
        self.wait_s = wait_s if wait_s is not None else float(
            os.environ.get("SIMAM_VIZ_BUSY_WAIT_S", "5"))
        self.cache = ResultCache(cache_size)
        self.analyze_fn: Callable[..., Analysis] = analyze  # replaceable for fault injection

    def analysis(
        self,
        key: AnalysisKey,
        model: nn.Module,
        image: Image.Image,
    ) -> tuple[Analysis, bool]:
        """The cached analysis for ``key`` or a fresh one; ``(result, was_cached)``."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        if not self._slots.acquire(timeout=self.wait_s):
            raise BusyError("the server is busy with other analyses; please retry in a moment")
        try:
            start = time.perf_counter()
            result = self.analyze_fn(model, image, target=key.target, blocks="all",
                                     method=key.method, simam_lambda=key.simam_lambda)
            result.timings["total"] = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError as exc:
            # the traceback's frames still hold the failed pass's tensors (activations,
            # graph); drop them first, or empty_cache has nothing to give back
            traceback.clear_frames(exc.__traceback__)
            self.cache.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ServiceError(
                "the GPU ran out of memory; try fewer models or the CPU device"
            ) from exc
        except SimamVizError:
            raise
        except Exception as exc:  # an engine bug must not take the session down
            raise ServiceError(f"analysis failed ({type(exc).__name__}: {exc})"[:200]) from exc
        finally:
            self._slots.release()
        self.cache.put(key, result)
        return result, False


def target_for(model: nn.Module, class_name: str | None) -> str | None:
    """A class name the model knows, or None (its own top-1) when it does not have it."""
    if class_name is None:
        return None
    names = [c.lower() for c in model.simam_viz.class_names]
    return class_name if class_name.lower() in names else None


def describe(result: Analysis) -> dict[str, Any]:
    """A small JSON-able summary of a result (for tables and manifests)."""
    return {
        "model": result.model_name,
        "target": result.target_name,
        "top1": result.predictions[0].name,
        "probability": result.predictions[0].probability,
    }
