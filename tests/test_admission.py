"""The one admission control and the byte-bounded caches of ``simam_viz.serving.service``.

A public replica must survive visitors who flood it: optional work (trust checks, exports)
never holds every slot, one session runs one job at a time, refusals are quick, every cache
is bounded in bytes, and ``/metrics`` says what happened.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import noise_image, tiny_model

from simam_viz.engine.analysis import analyze
from simam_viz.errors import BusyError
from simam_viz.serving.service import Admission, ResultCache, Service, nbytes_of


class Holder:
    """A thread holding one slot until ``release()``; a refusal lands in ``errors``."""

    def __init__(self, admission: Admission, what: str, session: str | None) -> None:
        self.errors: list[BusyError] = []
        self._release, entered = threading.Event(), threading.Event()

        def body() -> None:
            try:
                with admission.slot(what, session):
                    entered.set()
                    self._release.wait(10)
            except BusyError as exc:
                self.errors.append(exc)
                entered.set()
        self._thread = threading.Thread(target=body)
        self._thread.start()
        entered.wait(10)

    def release(self) -> None:
        self._release.set()
        self._thread.join()


def _enter(admission: Admission, what: str, session: str | None) -> None:
    """Take a slot and give it back at once (raises BusyError when refused)."""
    with admission.slot(what, session):
        pass


def _refused_after_the_wait(admission: Admission, what: str, session: str,
                            match: str) -> None:
    """The request is refused once its wait (0.2 s here) is over: not at once, not never."""
    t0 = time.perf_counter()
    with pytest.raises(BusyError, match=match):
        _enter(admission, what, session)
    assert 0.15 < time.perf_counter() - t0 < 1.5


def test_optional_work_leaves_one_slot_for_analyses() -> None:
    admission = Admission(slots=2, wait_s=0.2)
    holder = Holder(admission, "trust", "s1")
    _refused_after_the_wait(admission, "trust", "s2", "busy")
    with admission.slot("analysis", "s3"):  # the slot optional work may not take
        assert admission.busy == 2
    holder.release()
    assert not holder.errors and admission.busy == 0 and admission.busy_replies == {"slots": 1}


def test_one_job_per_session_runs_after_the_other() -> None:
    """A session's second job (Streamlit starts a new script thread on a rerun while the old
    one finishes its model call) waits for the first, then runs; other sessions do not."""
    admission = Admission(slots=4, wait_s=5)
    holder = Holder(admission, "analysis", "same")
    _enter(admission, "export", "other")  # other sessions are not affected
    order: list[str] = []
    second = threading.Thread(target=lambda: (_enter(admission, "analysis", "same"),
                                              order.append("second")))
    second.start()
    second.join(0.3)
    assert second.is_alive() and admission.busy == 1  # waiting, without a slot
    order.append("first done")
    holder.release()
    second.join(5)
    assert order == ["first done", "second"] and admission.busy_replies == {}


def test_a_session_job_outlasting_the_wait_gets_busy() -> None:
    admission = Admission(slots=4, wait_s=0.2)
    holder = Holder(admission, "trust", "same")
    _refused_after_the_wait(admission, "export", "same", "previous request is still running")
    holder.release()
    _enter(admission, "export", "same")  # and the session may run its next job
    assert admission.busy_replies == {"session": 1}


def test_nested_work_runs_in_the_slot_it_is_in() -> None:
    """An analysis that decodes its image inside its slot must not wait for a second one."""
    admission = Admission(slots=1, wait_s=0.1)
    with admission.slot("analysis", "s"), admission.slot("decode", "s"):
        assert admission.busy == 1
    assert admission.busy == 0 and admission.jobs == {"analysis": 1}


def test_third_session_is_served_while_two_spam_trust_checks() -> None:
    """Two sessions fire trust checks back to back; a third visitor's analysis still runs."""
    service = Service(max_concurrent=2, wait_s=1.0)
    stop = threading.Event()
    checks: list[int] = []

    def spam(session: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                service.compute(("trust", session, n), lambda n=n: time.sleep(0.3) or n,
                                what="trust", session=session)
                checks.append(1)
            except BusyError:
                pass
    spammers = [threading.Thread(target=spam, args=(s,)) for s in ("a", "b")]
    for t in spammers:
        t.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    result, cached = service.compute(("analysis", "c"), lambda: "figures", what="analysis",
                                     session="c")
    waited = time.perf_counter() - t0
    stop.set()
    for t in spammers:
        t.join()
    assert result == "figures" and not cached and checks
    assert waited < 0.5  # a slot was free for it: trust checks may hold only one of two


def test_parallel_exports_never_exceed_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 export requests at once: at most SIMAM_VIZ_MAX_CONCURRENT run, the rest wait or hear
    "busy" quickly, and each distinct export is built once."""
    monkeypatch.setenv("SIMAM_VIZ_MAX_CONCURRENT", "3")
    monkeypatch.setenv("SIMAM_VIZ_BUSY_WAIT_S", "0.5")
    service = Service()
    running, peak, builds = [0], [0], []
    lock = threading.Lock()

    def build(n: int) -> bytes:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            builds.append(n)
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return b"x" * 1000

    outcomes: list[str] = []

    def request(i: int) -> None:
        try:
            service.compute(("export", i % 5), lambda: build(i % 5), what="export",
                            session=f"s{i}")
            outcomes.append("ok")
        except BusyError:
            outcomes.append("busy")
    threads = [threading.Thread(target=request, args=(i,)) for i in range(20)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2  # 3 slots, of which exports (optional work) may hold 2
    assert sorted(builds) == sorted(set(builds))  # single flight + cache: each built once
    assert outcomes.count("ok") >= 5 and time.perf_counter() - t0 < 5
    assert len(service.caches["export"]) == len(set(builds))


def test_cache_is_bounded_in_bytes() -> None:
    cache = ResultCache(capacity=100, max_bytes=100 * 2**20)
    for i in range(3):
        cache.put(i, np.zeros(40 * 2**20, dtype=np.uint8))  # 40 MB each
    assert len(cache) == 2 and cache.get(0) is None and cache.bytes == 80 * 2**20
    cache.put("huge", np.zeros(101 * 2**20, dtype=np.uint8))  # over the whole budget
    assert cache.get("huge") is None and cache.bytes == 80 * 2**20
    cache.put(1, b"small")  # replacing an entry returns its bytes
    assert cache.bytes == 40 * 2**20 + 5


def test_analysis_bytes_are_its_arrays() -> None:
    """An analysis's estimated size is the size of the arrays it holds (counted once)."""
    result = analyze(tiny_model(), noise_image(), blocks="all")
    # channel_weights/ in arrays() are derived on export (SimAM's means), not held
    arrays = sum(a.nbytes for k, a in result.arrays().items()
                 if not k.startswith("channel_weights/"))
    size = nbytes_of(result)
    assert arrays <= size <= arrays + result.image.nbytes + 2**20


def test_analyses_and_trust_checks_have_separate_caches() -> None:
    service = Service(max_concurrent=1)
    service.compute(("a",), lambda: "analysis", what="analysis")
    for i in range(100):
        service.compute(("t", i), lambda i=i: f"check {i}", what="trust")
    assert service.caches["analysis"].get(("a",)) == "analysis"  # not pushed out


def test_metrics_count_jobs_waits_and_busy_replies() -> None:
    service = Service(max_concurrent=1, wait_s=0.05)
    service.compute(("x",), lambda: np.zeros(1000, dtype=np.float32), what="analysis")
    holder = Holder(service.admission, "analysis", "s")
    with pytest.raises(BusyError):
        service.compute(("y",), lambda: 1, what="analysis")
    text = service.metrics()
    holder.release()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["simam_viz_slots_total"] == 1 and values["simam_viz_slots_busy"] == 1
    assert values['simam_viz_jobs_total{what="analysis"}'] == 1
    assert values['simam_viz_busy_replies_total{reason="slots"}'] == 1
    assert values['simam_viz_cache_bytes{cache="analysis"}'] == 4000
    assert values["simam_viz_queue_wait_seconds_count"] == 2
