"""The CUDA probe: the real caching allocator's counters, with peaks reset at phase edges."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from autotune.config import AllocatorConfig, effective_alloc_conf
from autotune.memory.probe import Counters, MemoryProbe

logger = logging.getLogger(__name__)


class CudaProbe(MemoryProbe):
    """Reads `torch.cuda.memory_stats` of the current device.

    Allocator settings act only through `PYTORCH_ALLOC_CONF` (or the older `PYTORCH_CUDA_ALLOC_CONF`,
    which PyTorch reads when the first is unset), which must be set before CUDA
    initialises (the launcher does that per trial process); a mismatch is logged, not fixed.
    `memory_fraction` is applied with `torch.cuda.set_per_process_memory_fraction`.
    """

    backend = "cuda"

    def __init__(self, allocator: AllocatorConfig):
        super().__init__()
        self.allocator = allocator
        self._samples: list[tuple[int, int]] = []       # (allocated, reserved) at phase edges and peaks
        self._spans: list[tuple[str, int]] = []

    def _start(self) -> None:
        wanted, seen = self.allocator.to_env_string(), effective_alloc_conf(os.environ)
        if seen != wanted:
            logger.warning("the allocator settings in the environment are %r but the trial asks for %r; "
                           "set PYTORCH_ALLOC_CONF before CUDA starts", seen, wanted)
        if self.allocator.memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(self.allocator.memory_fraction)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def _stop(self) -> None:
        torch.cuda.synchronize()

    def _counters(self) -> Counters:
        s = torch.cuda.memory_stats()
        return Counters(
            allocated_bytes=s.get("allocated_bytes.all.current", 0),
            reserved_bytes=s.get("reserved_bytes.all.current", 0),
            peak_allocated_bytes=s.get("allocated_bytes.all.peak", 0),
            peak_reserved_bytes=s.get("reserved_bytes.all.peak", 0),
            num_alloc_retries=s.get("num_alloc_retries", 0),
            num_ooms=s.get("num_ooms", 0),
        )

    def _reset_peaks(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def _phase_started(self, name: str) -> None:
        c = self._counters()
        if not name and self._spans:
            # Closing a phase: its peaks, then where it ended.
            self._samples.append((c.peak_allocated_bytes, c.peak_reserved_bytes))
        self._spans.append((name, len(self._samples)))
        self._samples.append((c.allocated_bytes, c.reserved_bytes))

    def track(self, *objs: Any) -> None:
        """Nothing to do: tensors already on the GPU are in the allocator's counters."""

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def to_host(self, *objs: Any) -> None:
        _move(objs, torch.device("cpu"))

    def to_device(self, *objs: Any) -> None:
        _move(objs, torch.device("cuda", torch.cuda.current_device()))

    def save_timeline(self, path: str | Path) -> Path:
        from autotune.memory.timeline import phase_spans, plot_timeline

        allocated = [a for a, _ in self._samples]
        reserved = [r for _, r in self._samples]
        return plot_timeline(allocated, reserved, phase_spans(self._spans, len(self._samples)), path,
                             title="CUDA caching allocator (phase edges and peaks)",
                             x_label="sample (phase edges and peaks)", failed_phase=self.failed_phase)


def _move(objs: tuple[Any, ...], device: torch.device) -> None:
    """Modules move in place; optimizer state tensors are replaced by moved copies."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            obj.to(device)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0:   # keep scalar `step` where it is
                        state[key] = value.to(device, non_blocking=True)
        elif isinstance(obj, torch.Tensor):
            obj.data = obj.data.to(device)
        else:
            raise TypeError(f"cannot move a {type(obj).__name__} between host and device")
    if device.type == "cpu":
        torch.cuda.synchronize()
