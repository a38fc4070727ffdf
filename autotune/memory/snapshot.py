"""Real `torch.cuda.memory._snapshot()` files: loading them safely, and the state before recording.

A snapshot is plain dicts, lists, strings and numbers, but a pickle can name any global and so run
any code; `load_snapshot` refuses every global. A snapshot taken mid-run holds memory that existed
before `_record_memory_history()` began: `initial_state` rebuilds the segments and live blocks of
that moment from the final `segments` by undoing the trace, so a replay can start where the real
allocator started.
"""
from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.blocks import SMALL_BUFFER, round_size

_MiB = 1 << 20


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: a memory snapshot holds only plain data")


def load_snapshot(path: str | Path) -> dict:
    """Read a snapshot pickle (as `_dump_snapshot` writes) or its JSON form, refusing every pickle global.

    Raises:
        ConfigError: the file is missing, names a global, or is not a snapshot dict.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if path.suffix == ".json" else _NoGlobals(io.BytesIO(raw)).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError(f"cannot read a memory snapshot: {exc}", source=str(path)) from None
    if not isinstance(data, dict) or "segments" not in data:
        raise ConfigError("not a torch.cuda.memory._snapshot() dict (no 'segments')", source=str(path))
    return data


def config_from_snapshot(snapshot: Mapping[str, Any]) -> AllocatorConfig:
    """The allocator settings the trace was recorded under, from its `allocator_settings` entry."""
    settings = snapshot.get("allocator_settings") or {}
    divisions = settings.get("roundup_power2_divisions") or {}
    listed = [f"{interval}:{count}" for interval, count in divisions.items() if count]
    split = settings.get("max_split_size", -1)
    return AllocatorConfig(
        expandable_segments=bool(settings.get("expandable_segments", False)),
        max_split_size_mb=None if split in (-1, None) or split >= 1 << 63 else split // _MiB,
        garbage_collection_threshold=settings.get("garbage_collection_threshold") or None,
        roundup_power2_divisions=f"[{','.join(listed)}]" if listed else None,
    )


@dataclass(frozen=True, kw_only=True)
class SeedSegment:
    """A segment as it stood when recording began: where, how big, which pool, and its live blocks."""

    address: int
    total_bytes: int
    small: bool
    stream: int = 0
    live: list[tuple[int, int]] = field(default_factory=list)   # (address, block bytes)


def device_events(snapshot: Mapping[str, Any], device: int | None = None) -> tuple[int, list[dict]]:
    """(device index, its trace events); default the device with the most events.

    Raises:
        ConfigError: the snapshot has no `device_traces` (record with `_record_memory_history`).
    """
    traces = snapshot.get("device_traces") if isinstance(snapshot, Mapping) else None
    if not traces or not any(traces):
        raise ConfigError("snapshot has no device_traces; record it with torch.cuda.memory._record_memory_history()")
    if device is None:
        device = max(range(len(traces)), key=lambda i: len(traces[i]))
    return device, list(traces[device])


def initial_state(snapshot: Mapping[str, Any], events: list[dict], device: int,
                  config: AllocatorConfig) -> tuple[list[SeedSegment], int]:
    """The segments (with live blocks) that existed before the first event, and their reserved bytes.

    Segments come from the final `segments`, less those the trace allocated, plus those it freed.
    A block is live at the start when the trace frees it without allocating it first (its size is
    the request rounded as the allocator rounds it), or when it is live at the end and the trace
    never allocated it (its size is known exactly). Expandable segments are left out.
    """
    final = [s for s in snapshot.get("segments", [])
             if s.get("device", device) == device and not s.get("is_expandable")]
    segments = {s["address"]: (s["total_size"], s["segment_type"] == "small", s.get("stream", 0)) for s in final}
    for event in reversed(events):
        if event["action"] == "segment_alloc":
            segments.pop(event["addr"], None)
        elif event["action"] == "segment_free":
            segments[event["addr"]] = (event["size"], event["size"] <= SMALL_BUFFER, event.get("stream", 0))
    live_in_trace: set[int] = set()
    live: dict[int, int] = {}
    divisions, free_action = config.roundup_intervals(), free_action_of(events)
    for event in events:
        if event["action"] == "alloc":
            live_in_trace.add(event["addr"])
        elif event["action"] == free_action and event["addr"] in live_in_trace:
            live_in_trace.discard(event["addr"])
        elif event["action"] == free_action:
            live.setdefault(event["addr"], round_size(int(event["size"]), divisions))
    for segment in final:
        for block in segment["blocks"]:
            if block["state"].startswith("active") and block["address"] not in live_in_trace:
                live[block["address"]] = block["size"]
    seeds = []
    for address, (total, small, stream) in sorted(segments.items()):
        inside = [(a, n) for a, n in live.items() if address <= a < address + total]
        seeds.append(SeedSegment(address=address, total_bytes=total, small=small, stream=stream, live=sorted(inside)))
    return seeds, sum(s.total_bytes for s in seeds)


def free_action_of(events: list[dict]) -> str:
    """The event that frees a block: `free_completed` where the trace has it (the block is reusable then)."""
    return "free_completed" if any(e["action"] == "free_completed" for e in events) else "free_requested"
