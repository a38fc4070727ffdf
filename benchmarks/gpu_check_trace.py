"""Allocator traces for the GPU check: save and load snapshots, and hold the simulator against them.

A real trace is `torch.cuda.memory._snapshot()` after `_record_memory_history`: `device_traces`
holds the events in order, `segments` the allocator's state when the snapshot was taken. Real
reserved memory after every event follows from the segment events alone (`segment_alloc` and
`segment_map` add their size, `segment_free` and `segment_unmap` take it away). The simulator
replays the `alloc` and free events; after each of them its reserved bytes must equal the real
ones (a segment event is emitted just before the `alloc` that needed it).

On the CPU dry run there is no real trace. `synthesize_snapshot` turns the storage trace of the
`cpu` backend into the same shape, with the simulator standing in for the real allocator, so that
every step of the GPU run (save, load, replay, compare) runs and is tested in CI. That comparison
is the simulator against itself: it checks the plumbing, not the simulator.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.allocator import CachingAllocatorSim
from autotune.memory.trace import ALLOC, FREE, Trace

# Kept per event: enough to replay and to line events up with time. Stack frames are dropped, so
# a snapshot of ~100k events stays a few MB.
EVENT_KEYS = ("action", "addr", "size", "stream", "time_us")
_GROW = {"segment_alloc": 1, "segment_map": 1, "segment_free": -1, "segment_unmap": -1}
_RELEASES = ("segment_free", "segment_unmap")


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


# -- series --------------------------------------------------------------------------------------
def free_action(events: Sequence[Mapping[str, Any]]) -> str:
    """`free_completed` where the trace has it (the block is back in its pool), else `free_requested`."""
    return "free_completed" if any(e["action"] == "free_completed" for e in events) else "free_requested"


def segments_reserved_bytes(snapshot: Mapping[str, Any]) -> int:
    """Reserved bytes when the snapshot was taken: the mapped size of every segment."""
    return sum(int(seg.get("total_size", 0)) for seg in snapshot.get("segments", []))


def _reserved_steps(events: Sequence[Mapping[str, Any]]) -> np.ndarray:
    deltas = np.fromiter((_GROW.get(e["action"], 0) * int(e["size"]) for e in events), dtype=np.int64,
                         count=len(events))
    return np.cumsum(deltas)


def reserved_before_recording(snapshot: Mapping[str, Any]) -> int:
    """Reserved bytes when recording began: the segments' total at snapshot time minus the trace's net growth."""
    steps = _reserved_steps(busiest_trace(snapshot))
    return segments_reserved_bytes(snapshot) - (int(steps[-1]) if len(steps) else 0)


def real_reserved_series(snapshot: Mapping[str, Any]) -> np.ndarray:
    """Real reserved bytes after every event of the busiest trace (a mid-run trace starts from
    what was reserved before recording began)."""
    return reserved_before_recording(snapshot) + _reserved_steps(busiest_trace(snapshot))


def simulated_series(events: Sequence[Mapping[str, Any]], config: AllocatorConfig | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Reserved and allocated bytes of the simulator after every event, and its final stats.

    The same rules as `autotune.memory.replay.replay_snapshot` (which returns only the final
    stats): `alloc` and the free action drive malloc and free, frees of blocks allocated before
    recording are skipped, the first event of a burst of segment releases is an `empty_cache()`.
    """
    sim = CachingAllocatorSim(config)
    handles: dict[int, int] = {}
    freeing, previous = free_action(events), ""
    reserved = np.empty(len(events), dtype=np.int64)
    allocated = np.empty(len(events), dtype=np.int64)
    for i, event in enumerate(events):
        action = event["action"]
        if action == "alloc":
            handles[event["addr"]] = sim.malloc(int(event["size"]))
        elif action == freeing:
            handle = handles.pop(event["addr"], None)
            if handle is not None:
                sim.free(handle)
        elif action in _RELEASES and previous not in _RELEASES:
            sim.empty_cache()
        previous = action
        reserved[i], allocated[i] = sim.reserved, sim.allocated
    return reserved, allocated, sim.stats()


@dataclass(frozen=True, kw_only=True)
class SeriesComparison:
    """Simulated against real reserved bytes, after every alloc and free event.

    Attributes:
        compared_events: alloc and free events compared (segment events are not: the real
            allocator emits them just before the alloc that needs them).
        matching_events: those where the two agree to the byte.
        max_abs_diff_bytes: the largest disagreement.
        first_mismatch_event: index (in the trace) of the first disagreement, or None.
        real_peak_reserved_bytes / sim_peak_reserved_bytes: the peaks over the trace.
        real_final_reserved_bytes / sim_final_reserved_bytes: after the last event.
    """

    compared_events: int
    matching_events: int
    max_abs_diff_bytes: int
    first_mismatch_event: int | None
    real_peak_reserved_bytes: int
    sim_peak_reserved_bytes: int
    real_final_reserved_bytes: int
    sim_final_reserved_bytes: int

    @property
    def exact(self) -> bool:
        return self.matching_events == self.compared_events


def compare_series(events: Sequence[Mapping[str, Any]], real: np.ndarray, sim: np.ndarray) -> SeriesComparison:
    """Line up the two reserved series at the alloc and free events."""
    freeing = free_action(events)
    idx = np.fromiter((i for i, e in enumerate(events) if e["action"] in ("alloc", freeing)), dtype=np.int64)
    diff = np.abs(real[idx] - sim[idx]) if len(idx) else np.zeros(0, dtype=np.int64)
    wrong = np.flatnonzero(diff)
    return SeriesComparison(
        compared_events=int(len(idx)),
        matching_events=int(len(idx) - len(wrong)),
        max_abs_diff_bytes=int(diff.max(initial=0)),
        first_mismatch_event=int(idx[wrong[0]]) if len(wrong) else None,
        real_peak_reserved_bytes=int(real.max(initial=0)),
        sim_peak_reserved_bytes=int(sim.max(initial=0)),
        real_final_reserved_bytes=int(real[-1]) if len(real) else 0,
        sim_final_reserved_bytes=int(sim[-1]) if len(sim) else 0,
    )


def library_replay(snapshot: Mapping[str, Any], config: AllocatorConfig | None) -> dict[str, Any]:
    """`autotune.memory.replay.replay_snapshot` on the snapshot, its answer as plain numbers.

    It returns the simulator's final stats today; a richer return (stats plus per-event series,
    as `replay_trace` gives) is read too, so this keeps working when the replay grows.
    """
    from autotune.memory.replay import replay_snapshot

    answer = replay_snapshot(snapshot, config)
    if isinstance(answer, Mapping):
        return {"stats": dict(answer)}
    out: dict[str, Any] = {"stats": dict(getattr(answer, "stats", {}))}
    reserved = getattr(answer, "reserved", None)
    if reserved is not None:
        out["reserved"] = np.asarray(reserved, dtype=np.int64)
    return out


# -- one recorded trial, analysed ---------------------------------------------------------------
def analyse_trace(path: Path, config: AllocatorConfig | None, trial: Mapping[str, Any]) -> dict[str, Any]:
    """Replay a recorded trial's snapshot: the whole recording, then its last iteration as a mid-run trace.

    Args:
        path: the snapshot pickle.
        config: the allocator settings it was recorded under.
        trial: the child's result (its probe peaks and the event index of each iteration's end).

    Returns:
        `whole`: simulated vs real reserved after every alloc/free event over the whole
        recording, which started from an empty allocator; `replay_snapshot`: the library replay's
        final stats; `midrun`: the iterations after the first as if recording had started there,
        replayed by `replay_snapshot` (seeded from the segments) and, for contrast, unseeded.
    """
    snapshot = load_snapshot(path)
    events = busiest_trace(snapshot)
    real = real_reserved_series(snapshot)
    sim, _, _ = simulated_series(events, config)
    memory = trial.get("memory") or {}
    out: dict[str, Any] = {
        "events": len(events),
        "reserved_before_recording_bytes": reserved_before_recording(snapshot),
        "whole": _comparison_dict(compare_series(events, real, sim)),
        "replay_snapshot": library_replay(snapshot, config)["stats"],
        "probe_peak_reserved_bytes": memory.get("peak_reserved_bytes"),
        "probe_peak_allocated_bytes": memory.get("peak_allocated_bytes"),
    }
    marks = (trial.get("snapshot") or {}).get("iteration_event_index") or []
    if len(marks) >= 2 and marks[0] is not None:
        out["midrun"] = _midrun(midrun_snapshot(snapshot, marks[0] + 1), config, start_event=marks[0] + 1)
    return out


def _midrun(snapshot: dict[str, Any], config: AllocatorConfig | None, *, start_event: int) -> dict[str, Any]:
    events = busiest_trace(snapshot)
    real = real_reserved_series(snapshot)
    library = library_replay(snapshot, config)
    unseeded, _, _ = simulated_series(events, config)
    series = library.get("reserved")
    return {
        "start_event": start_event, "events": len(events),
        "reserved_before_recording_bytes": reserved_before_recording(snapshot),
        "real_peak_reserved_bytes": int(real.max(initial=0)), "real_final_reserved_bytes": int(real[-1]) if len(real) else 0,
        "replay_snapshot": library["stats"],
        "replay_snapshot_series": None if series is None else _comparison_dict(compare_series(events, real, series)),
        "unseeded": _comparison_dict(compare_series(events, real, unseeded)),
    }


def _comparison_dict(comparison: SeriesComparison) -> dict[str, Any]:
    return {**dataclasses.asdict(comparison), "exact": comparison.exact}


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
