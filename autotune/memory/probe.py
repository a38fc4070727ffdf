"""Phase probes: per-phase peak memory, fragmentation and wall time, on a GPU or simulated.

One interface, three backends (`autotune.memory.probes.make_probe` picks one)::

    probe = make_probe("fake", allocator=AllocatorConfig(), capacity_bytes=24 << 30)
    with probe:
        probe.track(actor, critic)
        with probe.phase("generation"):
            ...
        probe.empty_cache()
    report = probe.report()

`cuda` reads `torch.cuda.memory_stats`; `cpu` and `fake` run the storage tracer and feed every
allocation live into the caching-allocator simulator (`SimulatedProbe`), so that a simulated OOM
is raised from inside the op that allocated, as a real CUDA OOM would be.
"""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError, TrialOOM
from autotune.memory.report import Backend, MemoryReport, PhaseMemory

__all__ = ["Counters", "MemoryProbe"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Counters:
    """The allocator counters a probe reads at a phase edge (`torch.cuda.memory_stats` names)."""

    allocated_bytes: int            # allocated_bytes.all.current
    reserved_bytes: int             # reserved_bytes.all.current
    peak_allocated_bytes: int       # allocated_bytes.all.peak
    peak_reserved_bytes: int        # reserved_bytes.all.peak
    num_alloc_retries: int = 0
    num_ooms: int = 0


class MemoryProbe(ABC):
    """Measures memory per phase. Subclasses supply the counters and the device operations.

    Attributes:
        backend: "cuda", "cpu" or "fake", as written into the report.
        failed_phase: the phase in which an out-of-memory error happened, or None.
    """

    backend: Backend

    def __init__(self) -> None:
        self.failed_phase: str | None = None
        self._phases: dict[str, PhaseMemory] = {}
        self._current: str | None = None
        self._run_peak_allocated = 0
        self._run_peak_reserved = 0

    # -- the interface the workload uses -----------------------------------------------------
    def __enter__(self) -> MemoryProbe:
        self._start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fold_run_peaks()
        self._stop()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the block as phase `name`: peaks reset on entry, figures recorded on exit.

        Raises:
            ConfigError: phases are nested.
        """
        if self._current is not None:
            raise ConfigError(f"phase {name!r} started inside phase {self._current!r}; phases do not nest")
        self._fold_run_peaks()
        self._reset_peaks()
        self._current = name
        self._phase_started(name)
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            if _is_oom(exc):
                self.failed_phase = name
                if isinstance(exc, TrialOOM) and exc.phase is None:
                    exc.phase = name
            raise
        finally:
            self._current = None
            self._close_phase(name, time.perf_counter() - start)
            self._phase_started("")

    @abstractmethod
    def track(self, *objs: Any) -> None:
        """Count modules, optimizers or tensors that already exist as device memory."""

    @abstractmethod
    def empty_cache(self) -> None:
        """Release the allocator's cached, entirely free segments."""

    @abstractmethod
    def to_host(self, *objs: Any) -> None:
        """Move modules and optimizer state off the (simulated) device."""

    @abstractmethod
    def to_device(self, *objs: Any) -> None:
        """Move modules and optimizer state back onto the (simulated) device."""

    @abstractmethod
    def save_timeline(self, path: str | Path) -> Path:
        """Write the allocated/reserved timeline with phases shaded as a PNG; returns the path."""

    def report(self) -> MemoryReport:
        """Per-phase and whole-run figures so far (a repeated phase is merged)."""
        self._fold_run_peaks()
        counters = self._counters()
        return MemoryReport(
            backend=self.backend,
            phases=tuple(self._phases.values()),
            peak_allocated_bytes=self._run_peak_allocated,
            peak_reserved_bytes=self._run_peak_reserved,
            num_alloc_retries=counters.num_alloc_retries,
            num_ooms=counters.num_ooms,
        )

    # -- what a backend provides -------------------------------------------------------------
    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    @abstractmethod
    def _counters(self) -> Counters: ...

    @abstractmethod
    def _reset_peaks(self) -> None: ...

    def _phase_started(self, name: str) -> None:  # noqa: B027 - an optional hook, not abstract
        """Hook: the current phase label changed ("" between phases)."""

    # -- bookkeeping -------------------------------------------------------------------------
    def _fold_run_peaks(self) -> None:
        # Peaks are reset at phase edges, so the whole-run peak is the max over every interval.
        c = self._counters()
        self._run_peak_allocated = max(self._run_peak_allocated, c.peak_allocated_bytes)
        self._run_peak_reserved = max(self._run_peak_reserved, c.peak_reserved_bytes)

    def _close_phase(self, name: str, wall_time_s: float) -> None:
        c = self._counters()
        self._fold_run_peaks()
        seen = self._phases.get(name)
        self._phases[name] = PhaseMemory(
            name=name,
            peak_allocated_bytes=max(c.peak_allocated_bytes, seen.peak_allocated_bytes if seen else 0),
            peak_reserved_bytes=max(c.peak_reserved_bytes, seen.peak_reserved_bytes if seen else 0),
            end_allocated_bytes=c.allocated_bytes,
            end_reserved_bytes=c.reserved_bytes,
            wall_time_s=wall_time_s + (seen.wall_time_s if seen else 0.0),
        )
        logger.debug("phase %s: peak reserved %d B, peak allocated %d B", name,
                     c.peak_reserved_bytes, c.peak_allocated_bytes)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    return isinstance(exc, torch.OutOfMemoryError)
