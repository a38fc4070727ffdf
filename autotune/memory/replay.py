"""Replaying allocation traces through the simulator: our own traces, and real CUDA snapshots."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.allocator import CachingAllocatorSim, SimulatedOutOfMemoryError
from autotune.memory.trace import ALLOC, FREE, Trace

logger = logging.getLogger(__name__)

_SEGMENT_RELEASES = ("segment_free", "segment_unmap")


@dataclass(frozen=True, kw_only=True, eq=False)
class Replay:
    """The simulator's final counters and its allocated/reserved bytes after every event."""

    stats: dict[str, int]
    allocated: np.ndarray
    reserved: np.ndarray


def replay_trace(trace: Trace, config: AllocatorConfig | None = None, capacity_bytes: int | None = None) -> Replay:
    """Run a recorded trace through a fresh `CachingAllocatorSim`.

    Raises:
        SimulatedOutOfMemoryError: the trace does not fit in `capacity_bytes`; the message names
            the event and its phase.
        ConfigError: the trace frees a storage it never allocated.
    """
    sim = CachingAllocatorSim(config, capacity_bytes)
    handles: dict[int, int] = {}
    n = len(trace)
    allocated, reserved = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    ops, sids, sizes = trace.op.tolist(), trace.storage_id.tolist(), trace.nbytes.tolist()
    for i in range(n):
        try:
            if ops[i] == ALLOC:
                handles[sids[i]] = sim.malloc(sizes[i])
            elif ops[i] == FREE:
                sim.free(handles.pop(sids[i]))
            else:
                sim.empty_cache()
        except KeyError:
            raise ConfigError(f"event {i} frees storage {sids[i]}, which is not live") from None
        except SimulatedOutOfMemoryError as exc:
            exc.phase = trace.phases[trace.phase[i]] or None
            exc.args = (f"{exc.args[0]} (trace event {i}, phase {exc.phase!r})",)
            raise
        allocated[i], reserved[i] = sim.allocated, sim.reserved
    return Replay(stats=sim.stats(), allocated=allocated, reserved=reserved)


def replay_snapshot(snapshot: Mapping[str, Any], config: AllocatorConfig | None = None, *,
                    capacity_bytes: int | None = None, device: int | None = None) -> dict[str, int]:
    """Replay a real `torch.cuda.memory._snapshot()` trace through the simulator.

    `alloc` and `free_completed` events drive malloc and free; a burst of `segment_free` /
    `segment_unmap` events is taken as an `empty_cache()` (the real allocator also emits them when
    it releases cache on a retry; the simulator repeats that itself only when given a capacity).
    Frees of blocks allocated before recording started are skipped.

    Args:
        snapshot: the dict `_snapshot()` returns (or its JSON/pickle loaded back).
        config: the allocator settings the trace was recorded under.
        capacity_bytes: the device's memory, for OOM and retry behaviour.
        device: which entry of `device_traces`; default the busiest.

    Returns:
        The simulator's `stats()` after the last event.

    Raises:
        ConfigError: the snapshot has no `device_traces` (record with `_record_memory_history`).
    """
    traces = snapshot.get("device_traces") if isinstance(snapshot, Mapping) else None
    if not traces:
        raise ConfigError("snapshot has no device_traces; record it with torch.cuda.memory._record_memory_history()")
    events = traces[device] if device is not None else max(traces, key=len)
    free_action = "free_completed" if any(e["action"] == "free_completed" for e in events) else "free_requested"
    sim = CachingAllocatorSim(config, capacity_bytes)
    handles: dict[int, int] = {}
    skipped, previous = 0, ""
    for event in events:
        action = event["action"]
        if action == "alloc":
            handles[event["addr"]] = sim.malloc(int(event["size"]))
        elif action == free_action:
            handle = handles.pop(event["addr"], None)
            if handle is None:
                skipped += 1
            else:
                sim.free(handle)
        elif action in _SEGMENT_RELEASES and previous not in _SEGMENT_RELEASES:
            sim.empty_cache()
        previous = action
    if skipped:
        logger.info("replay_snapshot: skipped %d frees of blocks allocated before recording", skipped)
    return sim.stats()
