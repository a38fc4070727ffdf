"""The probe factory: the `MemoryProbe` backend for a measurement backend name.

It lives apart from the base class in `probe.py` because it imports the backends, which import
the base class; in one module that would be an import circle.
"""
from __future__ import annotations

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.probe import MemoryProbe
from autotune.memory.report import Backend

__all__ = ["make_probe"]


def make_probe(backend: Backend, allocator: AllocatorConfig | None = None,
               capacity_bytes: int | None = None) -> MemoryProbe:
    """The probe for a measurement backend.

    Args:
        backend: "cuda" (real allocator), "cpu" (real tensors, simulated allocator) or "fake"
            (FakeTensorMode, simulated allocator; the probe may be entered inside or outside it).
        allocator: allocator settings for the simulator. On cuda they must already be in
            `PYTORCH_CUDA_ALLOC_CONF` before CUDA starts; the probe only checks and warns.
        capacity_bytes: simulated device capacity (cpu/fake); None means unlimited.

    Raises:
        ConfigError: an unknown backend.
    """
    allocator = allocator or AllocatorConfig()
    if backend == "cuda":
        from autotune.memory.cuda_probe import CudaProbe

        return CudaProbe(allocator)
    if backend in ("cpu", "fake"):
        from autotune.memory.sim_probe import SimulatedProbe

        return SimulatedProbe(backend, allocator, capacity_bytes)
    raise ConfigError(f"unknown memory backend {backend!r} (use cuda, cpu or fake)")
