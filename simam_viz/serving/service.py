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

import contextlib
import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from simam_viz.engine.analysis import Analysis, analyze
from simam_viz.errors import BusyError, ServiceError, SimamVizError

__all__ = [
    "ESSENTIAL_WORK",
    "Admission",
    "AnalysisKey",
    "BusyError",
    "ModelCache",
    "nbytes_of",
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


def nbytes_of(value: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """An estimate of the bytes ``value`` holds: arrays, tensors, images, bytes and what
    containers and plain objects reference, each object counted once.

    Cache budgets are set in bytes because one entry can be 1 KB (a trust score) or 100 MB
    (a recording of every block); counting entries bounds nothing. The estimate counts the
    payload that dominates (array buffers, pixels), not Python's per-object overhead.
    """
    seen = set() if _seen is None else _seen
    if id(value) in seen or _depth > 8 or value is None:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes) if value.base is None or id(value.base) not in seen else 0
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, bytes | bytearray | memoryview | str):
        return len(value)
    if isinstance(value, Image.Image):
        return value.width * value.height * max(1, len(value.getbands()))
    if isinstance(value, nn.Module):
        return 0  # models live in the model cache, whatever references them
    if isinstance(value, dict):
        return sum(nbytes_of(k, seen, _depth + 1) + nbytes_of(v, seen, _depth + 1)
                   for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(nbytes_of(v, seen, _depth + 1) for v in value)
    fields = getattr(value, "__dict__", None)
    if fields is None and hasattr(value, "__slots__"):
        fields = {k: getattr(value, k, None) for k in value.__slots__}
    return nbytes_of(fields, seen, _depth + 1) if fields else 0


class ResultCache:
    """A thread-safe LRU bounded in entries and in bytes (:func:`nbytes_of` of each value).

    The app keeps one per kind of work (analyses, trust checks, exports, decoded images), so
    that a visitor who fills one kind cannot push other visitors' results of another out.
    A value larger than the whole budget is not kept at all.
    """

    def __init__(self, capacity: int = 24, max_bytes: int | None = None,
                 name: str = "results") -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.name = name
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> None:
        """Keep ``value`` (``size`` bytes, estimated when not given), evicting the oldest."""
        size = nbytes_of(value) if size is None else size
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if self.max_bytes is not None and size > self.max_bytes:
                LOG.info("%s cache: a %.1f MB entry is over the %.0f MB budget; not kept",
                         self.name, size / 2**20, self.max_bytes / 2**20)
                return
            self._items[key] = (value, size)
            self.bytes += size
            while len(self._items) > self.capacity or (
                    self.max_bytes is not None and self.bytes > self.max_bytes):
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


def _mb_from_env(name: str, default_mb: float) -> int:
    return int(float(os.environ.get(name, default_mb)) * 2**20)


# Work a visitor's page cannot do without: it may use every slot. Everything else (trust
# checks, recordings, exports, fetches) shares all but one, so a flood of optional work never
# stops another visitor's page from being analysed.
ESSENTIAL_WORK = frozenset({"analysis", "load", "decode"})
# How a failure of each kind of work is named in its one-line message.
WORK_LABELS = {"trust": "trust check", "recording": "SimAM recording", "export": "export",
               "intervention": "intervention"}


class Admission:
    """The one admission control for heavy work: ``slots`` at once, first come first served.

    - A request that cannot start within ``wait_s`` is refused (:class:`BusyError`) instead of
      joining an unbounded queue: beyond saturation a visitor hears "busy, retry" quickly
      while the latency of those admitted stays what one job costs.
    - Optional work (anything not in ``ESSENTIAL_WORK``) may hold at most ``slots - 1`` slots
      (at least one), so two sessions spamming trust checks cannot hold every slot.
    - One job in flight per session: a second request of the same session waits until the
      first has finished (within the same ``wait_s``), and holds no place in the slots' line
      meanwhile (two tabs are two sessions, each limited alike).
    - Counters for ``/metrics``: jobs and their seconds by kind, queue wait, busy replies.
    """

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = max(1, slots)
        self.optional_slots = max(1, self.slots - 1)
        self.wait_s = wait_s
        self.busy = 0
        self.optional_busy = 0
        self._cond = threading.Condition()
        self._queue: list[tuple[object, bool]] = []
        self._sessions: set[str] = set()
        self.jobs: dict[str, int] = {}
        self.job_seconds: dict[str, float] = {}
        self.busy_replies: dict[str, int] = {}
        self.wait_seconds = 0.0
        self.waits = 0
        self._held = threading.local()  # slots this thread holds: nested work needs no other

    def _fits(self, optional: bool) -> bool:
        return self.busy < self.slots and (not optional or self.optional_busy < self.optional_slots)

    def _my_turn(self, ticket: object) -> bool:
        """True when ``ticket`` is the first waiter in line that the free slots allow."""
        for waiting, optional in self._queue:
            if self._fits(optional):
                return waiting is ticket
        return False

    def _refuse(self, reason: str, message: str) -> BusyError:
        self.busy_replies[reason] = self.busy_replies.get(reason, 0) + 1
        return BusyError(message)

    @contextlib.contextmanager
    def slot(self, what: str, session: str | None = None) -> Iterator[None]:
        """Hold one slot for ``what`` (a kind of work: "analysis", "trust", "export"...)."""
        if getattr(self._held, "depth", 0):
            # work inside admitted work (an analysis decoding its image) runs in the slot it
            # is in: taking a second one could deadlock and would break the one-job rule
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        optional = what not in ESSENTIAL_WORK
        ticket = object()
        start = time.monotonic()
        deadline = start + self.wait_s
        with self._cond:
            # a session's jobs run one after another: Streamlit starts a new script thread on
            # every rerun (runner.fastReruns) while the old one finishes its model call, so
            # the second job waits for the first (not for a slot) and is refused only if the
            # first outlasts the wait
            while session is not None and session in self._sessions:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._refuse("session", "your previous request is still running; "
                                       "please retry when it has finished")
                self._cond.wait(left)
            self._queue.append((ticket, optional))
            if session is not None:
                self._sessions.add(session)
            try:
                while not self._my_turn(ticket):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._refuse("slots", "the server is busy with other analyses; "
                                           "please retry in a moment")
                    self._cond.wait(left)
            except BaseException:
                self._queue.remove((ticket, optional))
                if session is not None:
                    self._sessions.discard(session)
                self._cond.notify_all()
                raise
            self._queue.remove((ticket, optional))
            self.busy += 1
            self.optional_busy += optional
            self.waits += 1
            self.wait_seconds += time.monotonic() - start
        began = time.monotonic()
        self._held.depth = 1
        try:
            yield
        finally:
            self._held.depth = 0
            with self._cond:
                self.busy -= 1
                self.optional_busy -= optional
                if session is not None:
                    self._sessions.discard(session)
                self.jobs[what] = self.jobs.get(what, 0) + 1
                self.job_seconds[what] = self.job_seconds.get(what, 0.0) + (
                    time.monotonic() - began)
                self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._queue)


class Service:
    """Bounded, cached model work over shared models."""

    def __init__(self, *, max_concurrent: int | None = None, wait_s: float | None = None,
                 cache_size: int = 24) -> None:
        """Bounds from the arguments, else ``$SIMAM_VIZ_MAX_CONCURRENT`` (heavy jobs at once,
        default 2) and ``$SIMAM_VIZ_BUSY_WAIT_S`` (how long a request waits for a slot before
        it is told the server is busy, default 5 s), so an operator can tune a deployment.
        Each cache has a byte budget (``$SIMAM_VIZ_CACHE_MB``, the analyses' budget in MB,
        default 768; trust checks, exports and decoded images get their own, smaller ones).
        """
        limit = max_concurrent or int(os.environ.get("SIMAM_VIZ_MAX_CONCURRENT", "2"))
        wait = wait_s if wait_s is not None else float(
            os.environ.get("SIMAM_VIZ_BUSY_WAIT_S", "5"))
        self.admission = Admission(limit, wait)
        self.caches = {
            "analysis": ResultCache(cache_size, _mb_from_env("SIMAM_VIZ_CACHE_MB", 768),
                                    "analysis"),
            "trust": ResultCache(64, 64 * 2**20, "trust"),
            "intervention": ResultCache(64, 64 * 2**20, "intervention"),
            "recording": ResultCache(8, 256 * 2**20, "recording"),
            "export": ResultCache(32, 128 * 2**20, "export"),
            "decode": ResultCache(16, 96 * 2**20, "decode"),
        }
        self.cache = self.caches["analysis"]
        self.analyze_fn: Callable[..., Analysis] = analyze  # replaceable for fault injection
        self._inflight: dict[Hashable, threading.Event] = {}
        self._inflight_lock = threading.Lock()

    @property
    def wait_s(self) -> float:
        return self.admission.wait_s

    def admit(self, what: str, session: str | None = None):
        """A context manager holding one admission slot for ``what`` (see :class:`Admission`).

        Heavy work that is not cached here (a model load, a fetch, a large decode) runs inside
        it; cached work goes through :meth:`compute`, which takes the slot itself.
        """
        return self.admission.slot(what, session)

    def analysis(
        self,
        key: AnalysisKey,
        model: nn.Module,
        image: Image.Image,
        session: str | None = None,
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

        return self.compute(key, work, what="analysis", session=session)

    def compute(self, key: Hashable, work: Callable[[], T], *, what: str = "analysis",
                session: str | None = None) -> tuple[T, bool]:
        """``work()``'s result, cached under ``key`` in the cache of ``what``;
        ``(result, was_cached)``.

        Any heavy work the app caches (analyses, trust checks, SimAM recordings, exports)
        goes through here, so all of it shares one admission control (:meth:`admit`), and
        each kind has its own byte-bounded cache: trust checks cannot push analyses out.
        Identical keys in flight at once run once; the others wait and get it as cached.
        ``what`` is the kind of work: it picks the cache and names the work in a failure's
        message (``WORK_LABELS``).
        """
        cache = self.caches.get(what, self.cache)
        cached = cache.get(key)
        if cached is not None:
            return cached, True
        with self._inflight_lock:
            running = self._inflight.get(key)
            if running is None:
                mine = self._inflight[key] = threading.Event()
        if running is not None:
            running.wait(self.wait_s + 300)
            cached = cache.get(key)
            if cached is not None:
                return cached, True
            return self._run(key, work, what, cache, session), False  # the first one failed
        try:
            return self._run(key, work, what, cache, session), False
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            mine.set()

    def _run(self, key: Hashable, work: Callable[[], T], what: str, cache: ResultCache,
             session: str | None) -> T:
        """One admitted piece of model work, cached on success."""
        with self.admit(what, session):
            try:
                result = work()
            except torch.cuda.OutOfMemoryError as exc:
                # the traceback's frames still hold the failed pass's tensors (activations,
                # graph); drop them first, or empty_cache has nothing to give back
                traceback.clear_frames(exc.__traceback__)
                for each in self.caches.values():
                    each.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise ServiceError(
                    "the GPU ran out of memory; try fewer models or the CPU device"
                ) from exc
            except SimamVizError:
                raise
            except Exception as exc:  # an engine bug must not take the session down
                label = WORK_LABELS.get(what, what)
                raise ServiceError(f"{label} failed ({type(exc).__name__}: {exc})"[:200]) from exc
        cache.put(key, result)
        return result

    def metrics(self) -> str:
        """The service's state in Prometheus' text format (``/metrics``)."""
        a = self.admission
        lines = [
            "# HELP simam_viz_slots_total Heavy jobs that may run at once.",
            "# TYPE simam_viz_slots_total gauge",
            f"simam_viz_slots_total {a.slots}",
            "# HELP simam_viz_slots_busy Heavy jobs running now.",
            "# TYPE simam_viz_slots_busy gauge",
            f"simam_viz_slots_busy {a.busy}",
            "# HELP simam_viz_queue_length Requests waiting for a slot now.",
            "# TYPE simam_viz_queue_length gauge",
            f"simam_viz_queue_length {a.waiting}",
            "# HELP simam_viz_queue_wait_seconds Time admitted requests waited for a slot.",
            "# TYPE simam_viz_queue_wait_seconds summary",
            f"simam_viz_queue_wait_seconds_sum {a.wait_seconds:.6f}",
            f"simam_viz_queue_wait_seconds_count {a.waits}",
            "# HELP simam_viz_busy_replies_total Requests refused with 'busy, retry'.",
            "# TYPE simam_viz_busy_replies_total counter",
        ]
        for reason in ("slots", "session"):
            lines.append(f'simam_viz_busy_replies_total{{reason="{reason}"}} '
                         f"{a.busy_replies.get(reason, 0)}")
        lines += ["# HELP simam_viz_jobs_total Heavy jobs finished, by kind.",
                  "# TYPE simam_viz_jobs_total counter"]
        lines += [f'simam_viz_jobs_total{{what="{w}"}} {n}' for w, n in sorted(a.jobs.items())]
        lines += ["# HELP simam_viz_job_seconds Seconds heavy jobs ran, by kind.",
                  "# TYPE simam_viz_job_seconds summary"]
        for w, n in sorted(a.jobs.items()):
            lines.append(f'simam_viz_job_seconds_sum{{what="{w}"}} {a.job_seconds[w]:.6f}')
            lines.append(f'simam_viz_job_seconds_count{{what="{w}"}} {n}')
        lines += ["# HELP simam_viz_cache_bytes Bytes held by each cache.",
                  "# TYPE simam_viz_cache_bytes gauge"]
        lines += [f'simam_viz_cache_bytes{{cache="{c.name}"}} {c.bytes}'
                  for c in self.caches.values()]
        return "\n".join(lines) + "\n"


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
    lam = simam_lambda if info.kind.has_lambda else None
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
