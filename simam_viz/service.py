"""What the web app needs between its widgets and the engine, free of any UI code.

- Models are loaded once per (checkpoint, device) and shared by all sessions; the engine's
  per-model lock makes that safe.
- Analyses are cached by the sha256 of the uploaded bytes plus the settings that change the
  numbers (never by arrays or PIL images, whose hashes can collide or be sampled).
- Model work is bounded: at most ``max_concurrent`` analyses run at once; a request that
  cannot start within ``wait_s`` gets a "busy, retry" answer instead of joining an unbounded
  queue. A CUDA out-of-memory error frees the cache and becomes a clear message.
- Both caches live in the process, not in a UI framework's cache, so a server can fill them
  at start-up (``warm_up``) before the first visitor arrives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import nn

from simam_viz.analysis import Analysis, analyze
from simam_viz.errors import BusyError, ServiceError, SimamVizError

__all__ = [
    "AnalysisKey",
    "BusyError",
    "ModelCache",
    "ResultCache",
    "Service",
    "ServiceError",
    "shared_models",
    "shared_service",
    "target_for",
    "warm_up",
]

LOG = logging.getLogger(__name__)
T = TypeVar("T")


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
    """A small thread-safe LRU of analyses (each holds a few MB of float32 maps) and of the
    other model work the app caches (trust checks, SimAM recordings), under hashable keys."""

    def __init__(self, capacity: int = 24) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, value: Any) -> None:
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
        self._inflight: dict[Hashable, threading.Event] = {}
        self._inflight_lock = threading.Lock()

    def analysis(
        self,
        key: AnalysisKey,
        model: nn.Module,
        image: Image.Image,
    ) -> tuple[Analysis, bool]:
        """The cached analysis for ``key`` or a fresh one (all 16 blocks); ``(result, was_cached)``.

        Identical requests in flight at once run once (single flight): the start-up warm-up
        and a first visitor, or two sessions with the same image, share one pass.
        """
        def work() -> Analysis:
            start = time.perf_counter()
            result = self.analyze_fn(model, image, target=key.target, blocks="all",
                                     method=key.method, simam_lambda=key.simam_lambda)
            result.timings["total"] = time.perf_counter() - start
            LOG.info("analysis ran: model=%s target=%s method=%s lambda=%s device=%s %.0f ms",
                     key.model_key, key.target, key.method, key.simam_lambda, key.device,
                     result.timings["total"] * 1000)
            return result

        return self.compute(key, work, what="analysis")

    def compute(self, key: Hashable, work: Callable[[], T], *, what: str = "analysis"
                ) -> tuple[T, bool]:
        """``work()``'s result, cached under ``key``; ``(result, was_cached)``.

        Any model work the app does (analyses, trust checks, SimAM recordings) goes through
        here, so all of it shares one concurrency bound and one LRU: a slow sanity check
        takes a slot like an analysis does, and cannot starve other sessions beyond that.
        Identical keys in flight at once run once; the others wait and get it as cached.
        ``what`` names the work in a failure's message.
        """
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        with self._inflight_lock:
            running = self._inflight.get(key)
            if running is None:
                mine = self._inflight[key] = threading.Event()
        if running is not None:
            running.wait(self.wait_s + 300)
            cached = self.cache.get(key)
            if cached is not None:
                return cached, True
            return self._run(key, work, what), False  # the first one failed: try ourselves
        try:
            return self._run(key, work, what), False
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            mine.set()

    def _run(self, key: Hashable, work: Callable[[], T], what: str) -> T:
        """One bounded piece of model work, cached on success."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise BusyError("the server is busy with other analyses; please retry in a moment")
        try:
            result = work()
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
            raise ServiceError(f"{what} failed ({type(exc).__name__}: {exc})"[:200]) from exc
        finally:
            self._slots.release()
        self.cache.put(key, result)
        return result


class ModelCache:
    """Loaded models by (checkpoint key, file version, device), shared by every session.

    A bounded LRU: each full-size ResNet-50 holds about 100 MB. One lock per key means two
    sessions asking for the same cold model load it once, while different models load in
    parallel. ``version`` (``catalog.file_version``) changes when a file is replaced on disk,
    so a new file under an old name is loaded afresh.
    """

    def __init__(self, capacity: int = 12) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[Any, ...], threading.Lock] = {}

    def get(self, key: tuple[Any, ...], load: Callable[[], nn.Module]) -> nn.Module:
        """The model under ``key``, calling ``load()`` at most once per key while cached."""
        with self._lock:
            model = self._items.get(key)
            if model is not None:
                self._items.move_to_end(key)
                return model
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                model = self._items.get(key)
            if model is None:
                start = time.perf_counter()
                model = load()
                LOG.info("model loaded: %s in %.0f ms", key[0], (time.perf_counter() - start) * 1e3)
            with self._lock:
                self._items[key] = model
                self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    old, _ = self._items.popitem(last=False)
                    self._key_locks.pop(old, None)
            return model

    def __len__(self) -> int:
        return len(self._items)


_SHARED_LOCK = threading.Lock()
_SHARED: dict[str, Any] = {}


def shared_service() -> Service:
    """The process's one :class:`Service` (every session and the start-up warm-up use it)."""
    with _SHARED_LOCK:
        if "service" not in _SHARED:
            _SHARED["service"] = Service()
        return _SHARED["service"]


def shared_models() -> ModelCache:
    """The process's one :class:`ModelCache`."""
    with _SHARED_LOCK:
        if "models" not in _SHARED:
            _SHARED["models"] = ModelCache()
        return _SHARED["models"]


def analysis_key(image_sha: str, model_key: str, model: nn.Module, device: str,
                 target: str | None, method: str, simam_lambda: float | None) -> AnalysisKey:
    """The cache key of one analysis; the app and ``warm_up`` build it the same way."""
    info = model.simam_viz
    lam = simam_lambda if info.attention == "simam" else None
    return AnalysisKey(image_sha, model_key, info.sha256 or "", device,
                       target_for(model, target), method, lam)


def warm_up(models: list[tuple[str, nn.Module]], image: Image.Image, image_sha: str,
            device: str, method: str = "gradcam") -> None:
    """Analyse ``image`` with each model as a first visitor would, filling the result cache.

    Pays PyTorch's first-call costs (kernel selection, allocator growth) before anyone waits
    for them; each SimAM model runs at its own lambda, the app's default.
    """
    service = shared_service()
    for model_key, model in models:
        lam = model.simam_viz.simam_lambda
        key = analysis_key(image_sha, model_key, model, device, None, method, lam)
        service.analysis(key, model, image)


def target_for(model: nn.Module, class_name: str | None) -> str | None:
    """A class name the model knows, or None (its own top-1) when it does not have it."""
    if class_name is None:
        return None
    names = [c.lower() for c in model.simam_viz.class_names]
    return class_name if class_name.lower() in names else None
