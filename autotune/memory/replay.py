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
from autotune.memory.snapshot import config_from_snapshot, device_events, free_action_of, initial_state
from autotune.memory.trace import ALLOC, FREE, Trace

logger = logging.getLogger(__name__)

_SEGMENT_DELTA = {"segment_alloc": 1, "segment_map": 1, "segment_free": -1, "segment_unmap": -1}


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


@dataclass(frozen=True, kw_only=True, eq=False)
class SnapshotReplay:
    """A real trace replayed: the simulator's and the real allocator's bytes after every event.

    `compared` marks the events where both are comparable: every alloc, free and segment release.
    A `segment_alloc` is the first half of the malloc that follows it, so the simulator catches up
    one event later and those events are not compared.
    """

    stats: dict[str, int]
    actions: list[str]
    reserved: np.ndarray          # simulator, after each event
    real_reserved: np.ndarray     # the real allocator, from the seed and the trace's segment events
    compared: np.ndarray          # bool per event
    reserved_before: int          # the seed: bytes reserved before the first event
    real_final: dict[str, int]    # reserved and allocated bytes of the snapshot's final segments
    skipped_frees: int            # frees of blocks the seed did not know (seed off, or a cut trace)
    unmatched_releases: int       # segment frees the simulator could not follow (it diverged)

    @property
    def mismatches(self) -> int:
        """Compared events where the simulator's reserved bytes differ from the real ones."""
        return int(np.count_nonzero((self.reserved != self.real_reserved) & self.compared))


def replay_snapshot(snapshot: Mapping[str, Any], config: AllocatorConfig | None = None, *,
                    capacity_bytes: int | None = None, device: int | None = None, seed: bool = True,
                    context_reserve_bytes: int | None = None) -> dict[str, int]:
    """Replay a real `torch.cuda.memory._snapshot()` trace through the simulator; its final `stats()`.

    See `replay_snapshot_events`, which this wraps, for the arguments.
    """
    return replay_snapshot_events(snapshot, config, capacity_bytes=capacity_bytes, device=device, seed=seed,
                                  context_reserve_bytes=context_reserve_bytes).stats


def replay_snapshot_events(snapshot: Mapping[str, Any], config: AllocatorConfig | None = None, *,
                           capacity_bytes: int | None = None, device: int | None = None, seed: bool = True,
                           context_reserve_bytes: int | None = None) -> SnapshotReplay:
    """Replay a real trace, starting from the memory that existed before recording began.

    `alloc` and `free_completed` (else `free_requested`) drive malloc and free; `segment_alloc` gives
    the next segment's real address; `segment_free` releases that segment (after `empty_cache()`, an
    OOM retry or the GC threshold: the trace does not say which, and following it covers all three).
    Each alloc runs on its event's stream, so a block freed on one stream is not reused by another;
    freeing at `free_completed` carries `record_stream` delays over from the real run.

    Args:
        snapshot: the dict `_snapshot()` returns (or `load_snapshot` reads back).
        config: the allocator settings; default the snapshot's own `allocator_settings`.
        capacity_bytes: the device's total memory, for OOM and retry behaviour.
        device: which entry of `device_traces`; default the busiest.
        seed: start from the segments and blocks that existed before the first event (the default);
            False starts from an empty allocator.
        context_reserve_bytes: passed to the simulator (None: the per-device default).

    Raises:
        ConfigError: the snapshot has no `device_traces`.
    """
    device, events = device_events(snapshot, device)
    config = config or config_from_snapshot(snapshot)
    sim = CachingAllocatorSim(config, capacity_bytes, context_reserve_bytes=context_reserve_bytes)
    handles: dict[int, int] = {}
    real = before = 0
    if seed:
        segments, real = initial_state(snapshot, events, device, config)
        for segment in segments:
            handles.update(sim.seed_segment(segment.address, segment.total_bytes, segment.live,
                                            small=segment.small, stream=segment.stream))
        sim.reset_peak_stats()
        before = real
    n, free_action = len(events), free_action_of(events)
    reserved, real_reserved = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    compared = np.ones(n, dtype=bool)
    skipped = unmatched = 0
    for i, event in enumerate(events):
        action, addr = event["action"], event["addr"]
        if action == "alloc":
            handles[addr] = sim.malloc(int(event["size"]), event.get("stream", 0))
            sim.segment_address_hint = None
        elif action == free_action:
            handle = handles.pop(addr, None)
            skipped += handle is None
            if handle is not None:
                sim.free(handle)
        elif action in ("segment_alloc", "segment_map"):
            sim.segment_address_hint = addr if action == "segment_alloc" else None
            compared[i] = False
        elif action == "segment_free":
            unmatched += not sim.release_segment(addr)
        real += _SEGMENT_DELTA.get(action, 0) * int(event["size"])
        reserved[i], real_reserved[i] = sim.reserved, real
    if skipped:
        logger.info("replay_snapshot: skipped %d frees of blocks allocated before recording", skipped)
    if unmatched:
        logger.warning("replay_snapshot: %d segment frees found no free segment at that address", unmatched)
    final = [s for s in snapshot.get("segments", []) if s.get("device", device) == device]
    return SnapshotReplay(
        stats=sim.stats(), actions=[e["action"] for e in events], reserved=reserved, real_reserved=real_reserved,
        compared=compared, reserved_before=before, skipped_frees=skipped, unmatched_releases=unmatched,
        real_final={"reserved_bytes": sum(s["total_size"] for s in final),
                    "allocated_bytes": sum(s["allocated_size"] for s in final)},
    )
