"""How much of a GPU the caching allocator can actually have: device total minus a context reserve.

`cudaMalloc` fails well below the total that `torch.cuda.get_device_properties().total_memory`
reports: the CUDA context (its code modules, page tables and per-SM local memory), the cuBLAS and
cuDNN handles, and the driver keep memory the caching allocator never sees, and so does any other
process on the card. The simulator therefore treats `capacity_bytes` as the device total and
serves at most `capacity_bytes - context_reserve_bytes` of it.

The defaults below are per device class, keyed by the total memory the device reports. They are
estimates for CUDA 12 with lazy module loading (the default since CUDA 11.7), not measurements
made by this project; `measure_context_reserve_bytes()` measures the real figure on a GPU, and a
measured value should replace the default (pass `context_reserve_bytes=` to the simulator).
Capacities below 2 GiB are toy limits (tests, what-if budgets) and get no reserve.
"""
from __future__ import annotations

_MiB, _GiB = 1 << 20, 1 << 30

# (largest reported total in GiB, reserve in MiB, devices of that class)
CONTEXT_RESERVE_MIB: tuple[tuple[float, int, str], ...] = (
    (2, 0, "toy capacities"),
    (17, 300, "T4, V100-16GB, RTX 4080 and smaller cards"),
    (25, 400, "RTX 3090/4090, A10, L4 (24 GB)"),
    (49, 450, "A100-40GB, A6000, L40S (40-48 GB)"),
    (100, 500, "A100-80GB, H100 (80-94 GB)"),
    (float("inf"), 550, "H200 (141 GB), B200 and larger"),
)


def default_context_reserve_bytes(capacity_bytes: int | None) -> int:
    """The documented default reserve for a device reporting `capacity_bytes` in total (0 for None)."""
    if not capacity_bytes:
        return 0
    total_gib = capacity_bytes / _GiB
    return next(mib for limit, mib, _ in CONTEXT_RESERVE_MIB if total_gib < limit) * _MiB


def measure_context_reserve_bytes(device: int = 0) -> int:
    """On a GPU: bytes of the device that the caching allocator cannot have right now.

    Initialises CUDA and cuBLAS (one small matmul) first, so their handles are counted, then returns
    total - free - reserved, i.e. what the context, the libraries and other processes hold.
    """
    import torch

    torch.cuda.init()
    a = torch.ones(64, 64, device=device)
    (a @ a).sum().item()
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)
