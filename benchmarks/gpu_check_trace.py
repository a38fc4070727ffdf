"""Allocator traces for the GPU check: save and load snapshots, and hold the simulator against them.

A real trace is `torch.cuda.memory._snapshot()` after `_record_memory_history`: `device_traces`
holds the events in order, `segments` the allocator's state when the snapshot was taken.
`autotune.memory.replay.replay_snapshot_events` replays it: real reserved bytes after every event
follow from the segment events and the memory reserved before recording began, and the
simulator, seeded with that memory, must agree after every alloc, free and segment release.

On the CPU dry run there is no real trace. `synthesize_snapshot` turns the storage trace of the
`cpu` backend into the same shape, with the simulator standing in for the real allocator, so that
every step of the GPU run (save, load, replay, compare) runs and is tested in CI. That comparison
is the simulator against itself: it checks the plumbing, not the simulator.
"""
from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.allocator import CachingAllocatorSim
from autotune.memory.replay import SnapshotReplay, replay_snapshot_events
from autotune.memory.trace import ALLOC, FREE, Trace

# Kept per event: enough to replay and to line events up with time. Stack frames are dropped, so
# a snapshot of ~100k events stays a few MB.
EVENT_KEYS = ("action", "addr", "size", "stream", "time_us")


# -- files ---------------------------------------------------------------------------------------
def strip_snapshot(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot without stack frames: events keep `EVENT_KEYS`, segments and blocks lose `frames`."""
    traces = [[{k: e[k] for k in EVENT_KEYS if k in e} for e in device] for device in snapshot.get("device_traces", [])]
    segments = []
    for seg in snapshot.get("segments", []):
        blocks = [{k: v for k, v in b.items() if k != "frames"} for b in seg.get("blocks", [])]
        segments.append({**{k: v for k, v in seg.items() if k not in ("frames", "blocks")}, "blocks": blocks})
    stripped = {"device_traces": traces, "segments": segments}
    if "allocator_settings" in snapshot:
        stripped["allocator_settings"] = snapshot["allocator_settings"]
    return stripped


def save_snapshot(snapshot: Mapping[str, Any], path: Path) -> int:
    """Write the stripped snapshot as a gzipped pickle; returns the file's size in bytes."""
    with gzip.open(path, "wb", compresslevel=6) as handle:
        pickle.dump(strip_snapshot(snapshot), handle, protocol=4)
    return path.stat().st_size


class _PlainUnpickler(pickle.Unpickler):
    """A snapshot is dicts, lists, strings and numbers: any global is refused (a pickle can run code)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"snapshot pickles hold plain data only, found {module}.{name}")


def load_snapshot(path: Path) -> dict[str, Any]:
    """Read a snapshot written by `save_snapshot` (or a plain, uncompressed pickle).

    Raises:
        ConfigError: the file is not a snapshot pickle of plain data.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        snapshot = _PlainUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError(f"not a memory snapshot pickle: {exc}", source=str(path)) from None
    if not isinstance(snapshot, dict) or "device_traces" not in snapshot:
        raise ConfigError("not a memory snapshot: no device_traces", source=str(path))
    return snapshot


def busiest_trace(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events of the device with the most events (the one the workload ran on)."""
    traces = snapshot.get("device_traces") or [[]]
    return max(traces, key=len)


def midrun_snapshot(snapshot: Mapping[str, Any], start: int) -> dict[str, Any]:
    """The snapshot as if recording had started at event `start`: later events, the same segments."""
    return {**snapshot, "device_traces": [busiest_trace(snapshot)[start:]]}


# -- replays ------------------------------------------------------------------------------------
def summarize_replay(replay: SnapshotReplay) -> dict[str, Any]:
    """Simulated against real reserved bytes, over the events the replay compares.

    `compared_events` are the alloc, free and segment-release events (a `segment_alloc` is the
    first half of the malloc after it); `matching_events` those where the two agree to the byte;
    `first_mismatch_event` indexes the trace. Peaks and finals are over the whole series, starting
    from what was reserved before recording began.
    """
    idx = np.flatnonzero(replay.compared)
    diff = np.abs(replay.reserved[idx] - replay.real_reserved[idx])
    wrong = np.flatnonzero(diff)
    before = int(replay.reserved_before)
    return {
        "compared_events": int(len(idx)), "matching_events": int(len(idx) - len(wrong)), "exact": not len(wrong),
        "max_abs_diff_bytes": int(diff.max(initial=0)),
        "first_mismatch_event": int(idx[wrong[0]]) if len(wrong) else None,
        "reserved_before_recording_bytes": before,
        "real_peak_reserved_bytes": int(replay.real_reserved.max(initial=before)),
        "sim_peak_reserved_bytes": int(replay.reserved.max(initial=before)),
        "real_final_reserved_bytes": int(replay.real_reserved[-1]) if len(replay.actions) else before,
        "sim_final_reserved_bytes": int(replay.reserved[-1]) if len(replay.actions) else before,
        "skipped_frees": int(replay.skipped_frees), "unmatched_releases": int(replay.unmatched_releases),
    }


# -- one recorded trial, analysed ---------------------------------------------------------------
def analyse_trace(path: Path, config: AllocatorConfig | None, trial: Mapping[str, Any]) -> dict[str, Any]:
    """Replay a recorded trial's snapshot: the whole recording, then its later iterations as a mid-run trace.

    Args:
        path: the snapshot pickle.
        config: the allocator settings it was recorded under.
        trial: the child's result (its probe peaks and the event index of each iteration's end).

    Returns:
        `whole`: simulated vs real reserved bytes over the whole recording, which started from an
        empty allocator; `replay_snapshot`: the simulator's final stats; `midrun`: the iterations
        after the first as if recording had started there, replayed seeded from the snapshot's
        segments (as `replay_snapshot` does) and, for contrast, from an empty allocator.
    """
    snapshot = load_snapshot(path)
    whole = replay_snapshot_events(snapshot, config)
    memory = trial.get("memory") or {}
    out: dict[str, Any] = {
        "events": len(whole.actions),
        "whole": summarize_replay(whole),
        "replay_snapshot": dict(whole.stats),
        "probe_peak_reserved_bytes": memory.get("peak_reserved_bytes"),
        "probe_peak_allocated_bytes": memory.get("peak_allocated_bytes"),
    }
    marks = (trial.get("snapshot") or {}).get("iteration_event_index") or []
    if len(marks) >= 2 and marks[0] is not None:
        mid = midrun_snapshot(snapshot, marks[0] + 1)
        out["midrun"] = {"start_event": marks[0] + 1, "events": len(busiest_trace(mid)),
                         "seeded": summarize_replay(replay_snapshot_events(mid, config)),
                         "unseeded": summarize_replay(replay_snapshot_events(mid, config, seed=False))}
    return out


# -- the dry run's stand-in for a real trace -----------------------------------------------------
def synthesize_snapshot(trace: Trace, config: AllocatorConfig | None = None) -> tuple[dict[str, Any], list[int]]:
    """A `_snapshot()`-shaped dict from an autotune storage trace, the simulator as the allocator.

    Returns:
        The snapshot, and for each trace event the index of the snapshot event it became (so
        iteration edges found in the trace can be found in the snapshot).
    """
    sim = CachingAllocatorSim(config)
    handles: dict[int, int] = {}
    events: list[dict[str, Any]] = []
    index_of: list[int] = []
    segments, reserved = _segment_sizes(sim), sim.reserved
    ops, sids, sizes = trace.op.tolist(), trace.storage_id.tolist(), trace.nbytes.tolist()
    for i in range(len(ops)):
        pending: list[dict[str, Any]] = []
        if ops[i] == ALLOC:
            handles[sids[i]] = handle = sim.malloc(sizes[i])
            pending.append(_event("alloc", _block_addr(sim, handle), sizes[i], len(events)))
        elif ops[i] == FREE:
            handle = handles.pop(sids[i])
            addr, size = _block_addr(sim, handle), sim.block_size(handle)
            sim.free(handle)
            pending += [_event("free_requested", addr, size, 0), _event("free_completed", addr, size, 0)]
        else:
            sim.empty_cache()
        if sim.reserved != reserved:     # only then can a segment have come or gone
            reserved, before, segments = sim.reserved, segments, _segment_sizes(sim)
            events += _segment_events(before, segments)   # a segment event precedes the alloc that needed it
        events += pending
        index_of.append(len(events) - 1)
    for number, event in enumerate(events):
        event["time_us"] = number
    return {"device_traces": [events], "segments": _torch_segments(sim)}, index_of


def _event(action: str, addr: int, size: int, time_us: int) -> dict[str, Any]:
    return {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": time_us}


def _block_addr(sim: CachingAllocatorSim, handle: int) -> int:
    # The simulator exposes a block's size but not its address; a real trace names blocks by
    # address, and a seeded replay matches them against the segments' blocks.
    return sim._active[handle].addr if handle else 0


def _segment_sizes(sim: CachingAllocatorSim) -> dict[int, tuple[int, bool]]:
    return {seg["address"]: (seg["total_size"], seg["expandable"]) for seg in sim.snapshot()}


def _segment_events(before: dict[int, tuple[int, bool]], after: dict[int, tuple[int, bool]]) -> list[dict[str, Any]]:
    """What the real allocator emits between two states: cudaMalloc/cudaFree, or page (un)mapping."""
    events = []
    for addr in sorted(before.keys() | after.keys()):
        old, was_expandable = before.get(addr, (0, False))
        new, expandable = after.get(addr, (0, was_expandable))
        if old == new:
            continue
        if expandable:
            events.append(_event("segment_map" if new > old else "segment_unmap", addr, abs(new - old), 0))
        else:
            events.append(_event("segment_alloc" if new > old else "segment_free", addr, max(new, old), 0))
    return events


def _torch_segments(sim: CachingAllocatorSim) -> list[dict[str, Any]]:
    """`sim.snapshot()` under the key names `torch.cuda.memory._snapshot()` uses."""
    out = []
    for seg in sim.snapshot():
        blocks = [{"address": b["address"], "size": b["size"], "requested_size": b["size"], "state": b["state"]}
                  for b in seg["blocks"]]
        out.append({"device": 0, "address": seg["address"], "total_size": seg["total_size"],
                    "allocated_size": seg["allocated_size"], "active_size": seg["allocated_size"],
                    "requested_size": seg["allocated_size"], "stream": 0, "segment_type": seg["segment_type"],
                    "is_expandable": seg["expandable"], "blocks": blocks})
    return out
