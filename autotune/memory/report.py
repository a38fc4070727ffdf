"""MemoryReport: what a probe measured, per phase and for the whole run. One definition everywhere.

fragmentation = 1 - peak_allocated / peak_reserved: the share of the peak footprint that a perfect
allocator would not have needed (Zhou et al. 2024 mark the reserved peak and the "theoretical peak
after subtracting fragmentation").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["cuda", "cpu", "fake"]
GiB = float(1 << 30)


def fragmentation(peak_allocated_bytes: int, peak_reserved_bytes: int) -> float:
    """1 - allocated/reserved at the peaks; 0 when nothing was reserved."""
    if peak_reserved_bytes <= 0:
        return 0.0
    return max(0.0, 1.0 - peak_allocated_bytes / peak_reserved_bytes)


class _Peaks:
    """The figures a phase and a whole run both derive from their two peaks."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int

    @property
    def fragmentation(self) -> float:
        return fragmentation(self.peak_allocated_bytes, self.peak_reserved_bytes)

    @property
    def peak_reserved_gb(self) -> float:
        return self.peak_reserved_bytes / GiB


@dataclass(frozen=True, kw_only=True)
class PhaseMemory(_Peaks):
    """One phase's figures; peaks are reset at the phase's start.

    `peak_allocated_bytes` mirrors `allocated_bytes.all.peak` and `peak_reserved_bytes` mirrors
    `reserved_bytes.all.peak` of `torch.cuda.memory_stats`, or the simulator's equivalents.
    """

    name: str
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    end_allocated_bytes: int
    end_reserved_bytes: int
    wall_time_s: float


@dataclass(frozen=True, kw_only=True)
class MemoryReport(_Peaks):
    """Per-phase and whole-run memory of one trial. Phases appear in the order they ran (repeats merged)."""

    backend: Backend
    phases: tuple[PhaseMemory, ...]
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    num_alloc_retries: int = 0
    num_ooms: int = 0

    @property
    def peak_allocated_gb(self) -> float:
        return self.peak_allocated_bytes / GiB

    @property
    def peak_phase(self) -> str | None:
        """The phase whose reserved peak is the run's (first one on ties)."""
        if not self.phases:
            return None
        return max(self.phases, key=lambda p: p.peak_reserved_bytes).name

    def phase(self, name: str) -> PhaseMemory | None:
        return next((p for p in self.phases if p.name == name), None)
