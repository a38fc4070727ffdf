"""Storage tracer: every tensor-storage allocation and free, as an event trace.

A `TorchDispatchMode` sees each aten op's outputs; an output whose schema says it is fresh (no
alias annotation) and whose untyped storage is new is an allocation. `weakref.finalize` on that
untyped storage reports its free. Storages are identified by their `StorageImpl` (`_cdata`), not
by data_ptr, which is 0 for every fake tensor. Views and in-place results alias an input, so they
never count twice. Storages on the meta device hold no memory (DeepSpeed's ZeRO-1/2 keeps a meta
copy of every parameter), so they never count. It works on real tensors and under `FakeTensorMode`,
entered before or after the fake mode: PyTorch keeps FakeTensorMode below user modes, so the tracer
always sees fake outputs.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autotune.memory.trace import ALLOC, EMPTY_CACHE, FREE, Trace

logger = logging.getLogger(__name__)

INITIAL_OP = "<initial>"
_LIFT_FRESH = torch.ops.aten.lift_fresh.default


class StorageListener(Protocol):
    """Told about each allocation and free as it happens (the simulated probe feeds its allocator)."""

    def on_alloc(self, sid: int, nbytes: int) -> None: ...

    def on_free(self, sid: int) -> None: ...


class _Live:
    __slots__ = ("sid", "nbytes", "device", "finalizer", "resident")

    def __init__(self, sid: int, nbytes: int, device: str):
        self.sid = sid
        self.nbytes = nbytes
        self.device = device
        self.finalizer: weakref.finalize | None = None
        self.resident = True        # False while moved to the host by `release`


class StorageTracer(TorchDispatchMode):
    """Record tensor-storage allocations and frees while active.

    Args:
        listener: told about every allocation and free, live; an exception it raises in
            `on_alloc` (a simulated OOM) propagates out of the aten op that allocated.
        record: keep the events for `trace()`; off, only the live set and peaks are kept.

    Attributes:
        phase: the label stamped on each event from now on.
        live_bytes / peak_bytes: bytes of resident storages now and at most.
    """

    def __init__(self, *, listener: StorageListener | None = None, record: bool = True):
        super().__init__()
        self.listener = listener
        self.record = record
        self.phase = ""
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, _Live] = {}
        self._rows: list[tuple[int, int, int, str, str, str]] = []
        self._next_sid = 1
        self._fresh: dict[Any, tuple[str, tuple[bool, ...]]] = {}

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        info = self._fresh.get(func)
        if info is None:
            # lift_fresh wraps a tensor that torch.tensor() made below the dispatcher: it aliases its
            # input by schema, but that input's storage is new, so it is an allocation all the same.
            fresh = (True,) if func is _LIFT_FRESH else tuple(r.alias_info is None for r in func._schema.returns)
            info = self._fresh[func] = (str(func), fresh)
        name, fresh = info
        if isinstance(out, torch.Tensor):
            self._see(out, name, fresh[0] if fresh else False)
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                is_fresh = fresh[i] if i < len(fresh) else (bool(fresh) and fresh[0])
                for t in _tensors(item):
                    self._see(t, name, is_fresh)
        return out

    def _see(self, t: torch.Tensor, op: str, fresh: bool) -> None:
        if t.layout is not torch.strided or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        entry = self._live.get(storage._cdata)
        if entry is None:
            if fresh:
                self._register(storage, str(t.device), op)
        elif entry.nbytes != storage.nbytes():
            # resize_ or an out= op grew the storage: the device allocator frees and reallocates.
            self._forget(storage._cdata, op)
            self._register(storage, str(t.device), op)

    # -- the live set ------------------------------------------------------------------------
    def _register(self, storage: torch.UntypedStorage, device: str, op: str) -> None:
        nbytes = storage.nbytes()
        if nbytes == 0:
            return      # an empty storage allocates nothing (the CUDA allocator hands out nullptr)
        key = storage._cdata
        entry = _Live(self._next_sid, nbytes, device)
        self._next_sid += 1
        self._emit(ALLOC, entry, op)
        entry.finalizer = weakref.finalize(storage, self._on_finalize, key)
        entry.finalizer.atexit = False      # nothing to record while the interpreter shuts down
        self._live[key] = entry

    def _on_finalize(self, key: int) -> None:
        self._forget(key, "")

    def _forget(self, key: int, op: str) -> None:
        entry = self._live.pop(key, None)
        if entry is None:
            return
        if entry.finalizer is not None:
            entry.finalizer.detach()
        if entry.resident:
            self._emit(FREE, entry, op)

    def _emit(self, kind: int, entry: _Live, op: str) -> None:
        # The listener goes first: if it raises (OOM), the allocation never joins the live set.
        if kind == ALLOC:
            if self.listener is not None:
                self.listener.on_alloc(entry.sid, entry.nbytes)
            self.live_bytes += entry.nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            self.live_bytes -= entry.nbytes
            if self.listener is not None:
                self.listener.on_free(entry.sid)
        if self.record:
            self._rows.append((kind, entry.sid, entry.nbytes, entry.device, self.phase, op))

    # -- public operations -------------------------------------------------------------------
    def track(self, *objs: Any) -> int:
        """Add storages that already exist (parameters, buffers, optimizer state) to the live set.

        Returns:
            The bytes newly added.
        """
        before = self.live_bytes
        for t in tensors_of(objs):
            if t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            entry = self._live.get(storage._cdata)
            if entry is None:
                self._register(storage, str(t.device), INITIAL_OP)
            elif not entry.resident:
                self._set_resident(entry, True, "to_device")
        return self.live_bytes - before

    def release(self, *objs: Any) -> int:
        """The storages of `objs` leave the device (offload) while the tensors stay; returns bytes freed."""
        return self._move(objs, resident=False, op="to_host")

    def restore(self, *objs: Any) -> int:
        """The reverse of `release`; storages never seen before are tracked. Returns bytes allocated."""
        before = self.live_bytes
        self.track(*objs)
        return self.live_bytes - before

    def mark_empty_cache(self) -> None:
        """Record an `empty_cache()` call, so that a replay of the trace repeats it."""
        if self.record:
            self._rows.append((EMPTY_CACHE, 0, 0, "", self.phase, "empty_cache"))

    def _move(self, objs: Iterable[Any], *, resident: bool, op: str) -> int:
        moved = 0
        for t in tensors_of(objs):
            entry = self._live.get(t.untyped_storage()._cdata)
            if entry is not None and entry.resident != resident:
                self._set_resident(entry, resident, op)
                moved += entry.nbytes
        return moved

    def _set_resident(self, entry: _Live, resident: bool, op: str) -> None:
        self._emit(ALLOC if resident else FREE, entry, op)
        entry.resident = resident

    def trace(self) -> Trace:
        """The events recorded so far."""
        return Trace.from_rows(self._rows)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop following frees: storages that outlive the tracer no longer call back into it.

        Leaving the `with` block alone keeps following them, so that a tracer (or probe) entered
        again later still knows which storages are live.
        """
        for entry in self._live.values():
            if entry.finalizer is not None:
                entry.finalizer.detach()
        self._live.clear()


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)


def tensors_of(objs: Iterable[Any]) -> Iterator[torch.Tensor]:
    """Every tensor reachable from modules (parameters, grads, buffers), optimizers (state) and tensors.

    None is skipped (an absent model); containers are searched; anything else is a TypeError.
    """
    for obj in objs:
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                yield p
                if p.grad is not None:
                    yield p.grad
            yield from obj.buffers()
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        elif isinstance(obj, torch.Tensor):
            yield obj
            if obj.grad is not None:
                yield obj.grad
        elif isinstance(obj, (list, tuple, set, dict)):
            yield from tensors_of(obj.values() if isinstance(obj, dict) else obj)
        else:
            raise TypeError(f"cannot find tensors in a {type(obj).__name__}")
