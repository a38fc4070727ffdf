"""An allocation trace: storage allocs, frees and empty_cache calls in order, saved as compact `.npz`.

Each event is (seq, op, storage id, bytes, device, phase, aten op). Columns are numpy arrays and
strings are interned in small tables, so a million-event trace stays a few MB on disk.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.errors import ConfigError

ALLOC, FREE, EMPTY_CACHE = 0, 1, 2
OP_NAMES = ("alloc", "free", "empty_cache")
_FORMAT = "autotune-trace-v1"


@dataclass(frozen=True, kw_only=True)
class TraceEvent:
    """One event. `aten_op` names the op that allocated ("" when unknown, "<initial>" for tracked)."""

    seq: int
    op: str
    storage_id: int
    nbytes: int
    device: str
    phase: str
    aten_op: str


@dataclass(frozen=True, kw_only=True, eq=False)
class Trace:
    """Columns of a trace; `devices`, `phases` and `aten_ops` are the string tables the indices point at."""

    op: np.ndarray          # int8: ALLOC, FREE or EMPTY_CACHE
    storage_id: np.ndarray  # int64
    nbytes: np.ndarray      # int64
    device: np.ndarray      # int32 index into devices
    phase: np.ndarray       # int32 index into phases
    aten_op: np.ndarray     # int32 index into aten_ops
    devices: tuple[str, ...]
    phases: tuple[str, ...]
    aten_ops: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.op)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, int, int, str, str, str]]) -> Trace:
        """Build from (op, storage id, bytes, device, phase, aten op) tuples."""
        ops, sids, sizes, devices, phases, atens = zip(*rows) if rows else ((),) * 6
        dev_idx, dev_table = _intern(devices)
        phase_idx, phase_table = _intern(phases)
        aten_idx, aten_table = _intern(atens)
        return cls(
            op=np.asarray(ops, dtype=np.int8), storage_id=np.asarray(sids, dtype=np.int64),
            nbytes=np.asarray(sizes, dtype=np.int64), device=dev_idx, phase=phase_idx, aten_op=aten_idx,
            devices=dev_table, phases=phase_table, aten_ops=aten_table,
        )

    def events(self) -> Iterator[TraceEvent]:
        for i in range(len(self)):
            yield TraceEvent(
                seq=i, op=OP_NAMES[self.op[i]], storage_id=int(self.storage_id[i]), nbytes=int(self.nbytes[i]),
                device=self.devices[self.device[i]], phase=self.phases[self.phase[i]],
                aten_op=self.aten_ops[self.aten_op[i]],
            )

    def live_bytes(self) -> np.ndarray:
        """Bytes of live storages after each event (the exact, unrounded footprint)."""
        sign = np.where(self.op == ALLOC, 1, np.where(self.op == FREE, -1, 0))
        return np.cumsum(sign * self.nbytes)

    def peak_live_bytes(self) -> int:
        return int(self.live_bytes().max(initial=0))

    def save(self, path: str | Path) -> None:
        """Write a compressed `.npz` (numpy appends the suffix if it is missing)."""
        tables = json.dumps({"format": _FORMAT, "devices": self.devices, "phases": self.phases,
                             "aten_ops": self.aten_ops})
        np.savez_compressed(path, op=self.op, storage_id=self.storage_id, nbytes=self.nbytes,
                            device=self.device, phase=self.phase, aten_op=self.aten_op,
                            tables=np.frombuffer(tables.encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by `save`.

        Raises:
            ConfigError: the file is missing or is not an autotune trace.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no such trace file: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                tables = json.loads(data["tables"].tobytes().decode())
                columns = {k: data[k] for k in ("op", "storage_id", "nbytes", "device", "phase", "aten_op")}
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"not an autotune trace: {exc}", source=str(path)) from exc
        if tables.get("format") != _FORMAT:
            raise ConfigError(f"unknown trace format {tables.get('format')!r}", source=str(path))
        return cls(**columns, devices=tuple(tables["devices"]), phases=tuple(tables["phases"]),
                   aten_ops=tuple(tables["aten_ops"]))

    def phase_spans(self) -> list[tuple[str, int, int]]:
        """(phase, first event, last event + 1) for each run of consecutive events with one label."""
        spans: list[tuple[str, int, int]] = []
        if not len(self):
            return spans
        edges = np.flatnonzero(np.diff(self.phase)) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [len(self)]))
        return [(self.phases[self.phase[s]], int(s), int(e)) for s, e in zip(starts, ends)]


def _intern(values: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    table: dict[str, int] = {}
    idx = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int32, count=len(values))
    return idx, tuple(table)
