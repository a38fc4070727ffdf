"""Memory measurement: storage tracer, caching-allocator simulator, phase probes, timeline figure.

Only the report types load eagerly; the rest import torch or numpy and load on first use, so
that `autotune --help` and result parsing stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from autotune.memory.report import MemoryReport, PhaseMemory, fragmentation

_LAZY = {
    "CachingAllocatorSim": "autotune.memory.allocator",
    "SimulatedOutOfMemoryError": "autotune.memory.allocator",
    "MemoryProbe": "autotune.memory.probe",
    "make_probe": "autotune.memory.probes",
    "StorageTracer": "autotune.memory.tracer",
    "Trace": "autotune.memory.trace",
    "replay_trace": "autotune.memory.replay",
    "replay_snapshot": "autotune.memory.replay",
    "plot_timeline": "autotune.memory.timeline",
}

__all__ = ["MemoryReport", "PhaseMemory", "fragmentation", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
