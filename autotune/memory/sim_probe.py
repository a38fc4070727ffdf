"""The simulated probe (`cpu` and `fake` backends): storage tracer -> caching-allocator simulator, live."""
from __future__ import annotations

import logging
from array import array
from pathlib import Path
from typing import Any

from autotune.config import AllocatorConfig
from autotune.memory.allocator import CachingAllocatorSim
from autotune.memory.probe import Counters, MemoryProbe
from autotune.memory.report import Backend
from autotune.memory.trace import Trace
from autotune.memory.tracer import StorageTracer

logger = logging.getLogger(__name__)


class SimulatedProbe(MemoryProbe):
    """Predicts what a GPU's caching allocator would show for the tensors this process creates.

    Every new storage the tracer sees is `malloc`ed in the simulator at once, and freed when the
    storage dies; offloading (`to_host`) frees the simulated blocks while the tensors stay put.

    Args:
        backend: "cpu" (real tensors) or "fake" (under FakeTensorMode); only recorded in the report.
        allocator: simulator settings.
        capacity_bytes: simulated device size; exceeding it raises `SimulatedOutOfMemoryError`.
        record_trace: keep the event trace (for `trace()`); the timeline is kept either way.
    """

    def __init__(self, backend: Backend, allocator: AllocatorConfig, capacity_bytes: int | None = None,
                 *, record_trace: bool = True):
        super().__init__()
        self.backend = backend
        self.sim = CachingAllocatorSim(allocator, capacity_bytes)
        self.tracer = StorageTracer(listener=self, record=record_trace)
        self._handles: dict[int, int] = {}
        self._allocated = array("q")
        self._reserved = array("q")
        self._spans: list[tuple[str, int]] = []     # (phase, first event index)

    # -- StorageListener ---------------------------------------------------------------------
    def on_alloc(self, sid: int, nbytes: int) -> None:
        self._handles[sid] = self.sim.malloc(nbytes)
        self._sample()

    def on_free(self, sid: int) -> None:
        self.sim.free(self._handles.pop(sid))
        self._sample()

    def _sample(self) -> None:
        self._allocated.append(self.sim.allocated)
        self._reserved.append(self.sim.reserved)

    # -- MemoryProbe -------------------------------------------------------------------------
    def _start(self) -> None:
        self.tracer.__enter__()

    def _stop(self) -> None:
        self.tracer.__exit__(None, None, None)

    def _counters(self) -> Counters:
        s = self.sim
        return Counters(allocated_bytes=s.allocated, reserved_bytes=s.reserved,
                        peak_allocated_bytes=s.peak_allocated, peak_reserved_bytes=s.peak_reserved,
                        num_alloc_retries=s.num_alloc_retries, num_ooms=s.num_ooms)

    def _reset_peaks(self) -> None:
        self.sim.reset_peak_stats()

    def _phase_started(self, name: str) -> None:
        self.tracer.phase = name
        self._spans.append((name, len(self._allocated)))

    def track(self, *objs: Any) -> None:
        added = self.tracer.track(*objs)
        logger.debug("tracked %d bytes already on the device", added)

    def empty_cache(self) -> None:
        self.sim.empty_cache()
        self.tracer.mark_empty_cache()
        self._sample()

    def to_host(self, *objs: Any) -> None:
        self.tracer.release(*objs)

    def to_device(self, *objs: Any) -> None:
        self.tracer.restore(*objs)

    def trace(self) -> Trace:
        """The recorded allocation trace (empty when `record_trace` is off)."""
        return self.tracer.trace()

    def save_timeline(self, path: str | Path) -> Path:
        from autotune.memory.timeline import phase_spans, plot_timeline

        n = len(self._allocated)
        return plot_timeline(
            self._allocated, self._reserved, phase_spans(self._spans, n), path,
            title=f"simulated allocator ({self.backend}): {self.sim.config.to_env_string() or 'defaults'}",
            capacity_bytes=self.sim.capacity_bytes, failed_phase=self.failed_phase,
        )
