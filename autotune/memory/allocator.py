"""A simulator of PyTorch's native CUDA caching allocator, for predicting GPU memory without a GPU.

`CachingAllocatorSim` follows c10/cuda/CUDACachingAllocator.cpp (`malloc`, `get_free_block`,
`alloc_found_block`, `free_block`, `release_*`, `garbage_collect_cached_blocks` and the expandable
segment path) on one device. Streams are modelled: each segment belongs to the stream that
allocated it and a free block is reused only on that stream, as PyTorch does (ZeRO and FSDP run
communication on side streams). `record_stream` delays are the caller's to express, by freeing at
the time the block becomes reusable (a trace replay frees at `free_completed`). The storage tracer
behind the `cpu` and `fake` backends sees no streams, so their predictions assume a single stream.
Replaying a storage trace through it gives the reserved memory and fragmentation a GPU would show
for the same allocation sequence.

Usable memory is modelled explicitly: `capacity_bytes` is the device total, of which
`context_reserve_bytes` (the CUDA context, library handles; a per-device default from
`autotune.memory.device`) is never the allocator's. A per-process memory fraction caps reserved
bytes at fraction x device total on top of that.

Typical use::

    sim = CachingAllocatorSim(AllocatorConfig.from_env_string("max_split_size_mb:128"), capacity_bytes=24 << 30)
    h = sim.malloc(1000)
    sim.free(h)
    sim.stats()["reserved_bytes"]
"""
from __future__ import annotations

import logging
import numbers
from typing import Any

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError, TrialOOM
from autotune.memory.blocks import (
    MIN_BLOCK,
    SMALL_BUFFER,
    SMALL_SIZE,
    Block,
    BlockPool,
    allocation_size,
    grow_size,
    link_after,
    round_size,
)
from autotune.memory.device import default_context_reserve_bytes
from autotune.memory.expandable import ExpandableSegments

__all__ = ["AllocatorConfig", "CachingAllocatorSim", "SimulatedOutOfMemoryError", "STAT_KEYS"]

logger = logging.getLogger(__name__)

STAT_KEYS = (
    "allocated_bytes", "reserved_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
    "inactive_split_bytes", "segments", "num_device_malloc", "num_device_free",
    "num_alloc_retries", "num_ooms",
)
_BASE_ADDR = 1 << 32
# PyTorch 2.10 (pytorch/pytorch#161035, which also added `per_process_memory_fraction` to the
# allocator config) keeps a fraction only when it is below 1.0, and the GC threshold acts only
# under a kept fraction; before it, any set_per_process_memory_fraction call, 1.0 included, armed it.
_FRACTION_BELOW_ONE_FROM = (2, 10)


def _installed_torch_version() -> tuple[int, int]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("torch").split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except (PackageNotFoundError, ValueError):
        return _FRACTION_BELOW_ONE_FROM


class SimulatedOutOfMemoryError(TrialOOM, MemoryError):
    """A malloc could not be served within the simulated capacity, even after release and retry."""

    def __init__(self, message: str, *, phase: str | None = None, requested_bytes: int = 0):
        super().__init__(message, phase=phase)
        self.requested_bytes = requested_bytes


class CachingAllocatorSim(ExpandableSegments):
    """PyTorch's CUDA caching allocator, replayed in Python.

    Args:
        config: the allocator settings (`PYTORCH_ALLOC_CONF` keys plus `memory_fraction`).
        capacity_bytes: the device's total memory; None means unlimited (no OOM, no GC threshold).
        context_reserve_bytes: the part of the device the allocator never gets (CUDA context,
            library handles, other processes); None takes the per-device default.
        torch_version: (major, minor) of the PyTorch whose rules to follow; default the installed one.

    Raises:
        ConfigError: `capacity_bytes` is not positive, or the reserve leaves nothing usable.
    """

    def __init__(self, config: AllocatorConfig | None = None, capacity_bytes: int | None = None, *,
                 context_reserve_bytes: int | None = None, torch_version: tuple[int, int] | None = None):
        self.config = config or AllocatorConfig()
        if capacity_bytes is not None and capacity_bytes <= 0:
            raise ConfigError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.context_reserve_bytes = (default_context_reserve_bytes(capacity_bytes)
                                      if context_reserve_bytes is None else context_reserve_bytes)
        if capacity_bytes is not None and not 0 <= self.context_reserve_bytes < capacity_bytes:
            raise ConfigError(f"context_reserve_bytes must be in [0, capacity_bytes), got {self.context_reserve_bytes}")
        self.torch_version = torch_version or _installed_torch_version()
        if self.config.backend != "native":
            logger.warning("backend %s is not simulated; the figures are the native caching allocator's",
                           self.config.backend)
        self._max_split = self.config.max_split_size_bytes or (1 << 64)
        self._max_non_split_rounding = self.config.max_non_split_rounding_bytes
        self._expandable = self.config.expandable_segments
        self._divisions = self.config.roundup_intervals()
        self._usable = None if capacity_bytes is None else capacity_bytes - self.context_reserve_bytes
        self._fraction_limit = self._fraction_bytes()
        self._limit = min(x for x in (self._usable, self._fraction_limit, 1 << 64) if x is not None)
        self._limit = None if self._limit == 1 << 64 else self._limit
        self._gc_on = bool(self.config.garbage_collection_threshold) and self._fraction_limit is not None
        self._small = BlockPool(small=True)
        self._large = BlockPool(small=False)
        self._active: dict[int, Block] = {}
        self._next_handle = 1
        self._next_addr = _BASE_ADDR
        # Where the next cudaMalloc'd segment goes; a trace replay sets it from `segment_alloc` so
        # that the simulator's addresses are the real ones (tie-breaks and segment frees then match).
        self.segment_address_hint: int | None = None
        self.allocated = self.reserved = self.inactive_split = 0
        self.peak_allocated = self.peak_reserved = 0
        self.segments = self.num_device_malloc = self.num_device_free = 0
        self.num_alloc_retries = self.num_ooms = 0

    @property
    def usable_bytes(self) -> int | None:
        """What cudaMalloc can hand out: device total minus the context reserve (None: unlimited)."""
        return self._usable

    def _fraction_bytes(self) -> int | None:
        """`allowed_memory_maximum`: fraction x device total, when the PyTorch version keeps the fraction."""
        fraction = self.config.memory_fraction
        if self.capacity_bytes is None:
            if fraction is not None or self.config.garbage_collection_threshold:
                logger.warning("memory_fraction and garbage_collection_threshold need capacity_bytes; ignored")
            return None
        if fraction is None or (fraction >= 1.0 and self.torch_version >= _FRACTION_BELOW_ONE_FROM):
            return None
        return int(fraction * self.capacity_bytes)

    # -- public API --------------------------------------------------------------------------
    def malloc(self, nbytes: int, stream: int = 0) -> int:
        """Allocate `nbytes` on `stream`; a handle for `free`. Zero bytes gives the null handle 0.

        A cached block is reused only by the stream its segment was allocated on, as in PyTorch.

        Raises:
            ValueError: `nbytes` is negative or not an integer.
            SimulatedOutOfMemoryError: capacity exceeded after releasing cache and retrying.
        """
        if type(nbytes) is not int:     # the common case skips the slower ABC check
            if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
                raise ValueError(f"malloc needs a non-negative integer byte count, got {nbytes!r}")
            nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"malloc needs a non-negative integer byte count, got {nbytes!r}")
        if nbytes == 0:
            return 0        # like the C++ allocator, which hands out nullptr for size 0
        size = round_size(nbytes, self._divisions)
        pool = self._small if size <= SMALL_SIZE else self._large
        block = self._get_free_block(pool, size, stream)
        if block is None:
            block = self._allocate_segment(pool, size, stream)
        return self._alloc_found_block(block, size)

    def free(self, handle: int) -> None:
        """Return a block to its pool, merging it with free neighbours; never releases memory.

        Raises:
            ValueError: `handle` is unknown or was already freed.
        """
        if handle == 0:
            return
        block = self._active.pop(handle, None)
        if block is None:
            raise ValueError(f"free of handle {handle!r}: not a live allocation (double free or unknown handle)")
        self._free_block(block)

    def empty_cache(self) -> None:
        """`torch.cuda.empty_cache()`: release every entirely free segment (unmap free pages)."""
        self._release_cached_blocks()

    def reset_peak_stats(self) -> None:
        """`torch.cuda.reset_peak_memory_stats()`: peaks restart from the current values."""
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved

    def stats(self) -> dict[str, int]:
        """Counters named after `torch.cuda.memory_stats` ("...all.current/peak") where one exists.

        With expandable segments, `segments` leaves the expandable segments out (as PyTorch's
        `segment` stat does) and `num_device_malloc` / `num_device_free` count map and unmap calls.
        """
        return {
            "allocated_bytes": self.allocated,
            "reserved_bytes": self.reserved,
            "peak_allocated_bytes": self.peak_allocated,
            "peak_reserved_bytes": self.peak_reserved,
            "inactive_split_bytes": self.inactive_split,
            "segments": self.segments,
            "num_device_malloc": self.num_device_malloc,
            "num_device_free": self.num_device_free,
            "num_alloc_retries": self.num_alloc_retries,
            "num_ooms": self.num_ooms,
        }

    def snapshot(self) -> list[dict]:
        """Segments and their blocks, shaped like `torch.cuda.memory_snapshot()`, lowest address first.

        Each segment: address, total_size (mapped bytes), allocated_size, segment_type
        ("small"/"large"), stream, expandable, and blocks with address, size and state
        ("active_allocated", "inactive" or "unmapped").
        """
        blocks = list(self._active.values())
        for pool in (self._small, self._large):
            blocks.extend(pool.by_addr.values())
            blocks.extend(pool.unmapped.values())
        segments: list[dict[str, Any]] = []
        for head in sorted((b for b in blocks if b.prev is None), key=lambda b: b.addr):
            chain, block = [], head
            while block is not None:
                state = "active_allocated" if block.allocated else "inactive" if block.mapped else "unmapped"
                chain.append({"address": block.addr, "size": block.size, "state": state})
                block = block.next
            segments.append({
                "address": head.addr,
                "total_size": sum(b["size"] for b in chain if b["state"] != "unmapped"),
                "allocated_size": sum(b["size"] for b in chain if b["state"] == "active_allocated"),
                "segment_type": "small" if head.pool.small else "large",
                "stream": head.stream,
                "expandable": head.segment is not None,
                "blocks": chain,
            })
        return segments

    def seed_segment(self, address: int, total_bytes: int, live: list[tuple[int, int]], *,
                     small: bool, stream: int = 0) -> dict[int, int]:
        """Add a segment that existed before a trace began, holding the `live` (address, size) blocks.

        The gaps between live blocks become free blocks, merged as the allocator keeps them. Peaks
        are not reset: call `reset_peak_stats()` after seeding to measure from here.

        Returns:
            The handle of each live block, by its address.

        Raises:
            ValueError: the live blocks overlap or fall outside the segment.
        """
        pool = self._small if small else self._large
        pieces, cursor, end = [], address, address + total_bytes
        for addr, size in sorted(live):
            if addr < cursor or addr + size > end:
                raise ValueError(f"live block at {addr:#x} ({size} B) does not fit segment {address:#x}")
            if addr > cursor:
                pieces.append((cursor, addr - cursor, False))
            pieces.append((addr, size, True))
            cursor = addr + size
        if cursor < end:
            pieces.append((cursor, end - cursor, False))
        blocks, previous = [], None
        for addr, size, allocated in pieces:
            block = Block(size, addr, pool, stream=stream)
            if previous is not None:
                link_after(previous, block)
            blocks.append((block, allocated))
            previous = block
        handles = {}
        for block, allocated in blocks:
            if allocated:
                block.allocated = True
                self.allocated += block.size
                handles[block.addr] = self._next_handle
                self._active[self._next_handle] = block
                self._next_handle += 1
            else:
                pool.insert(block)
                if len(blocks) > 1:
                    self.inactive_split += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._add_reserved(total_bytes)
        self.segments += 1
        self._next_addr = max(self._next_addr, end + SMALL_BUFFER)
        return handles

    def release_segment(self, address: int) -> bool:
        """Give back the whole, entirely free, non-expandable segment at `address`; False if there is none."""
        for pool in (self._large, self._small):
            block = pool.by_addr.get(address)
            if block is not None and not block.is_split and block.segment is None:
                self._release_block(block)
                return True
        return False

    def block_size(self, handle: int) -> int:
        """Bytes the block behind `handle` holds (what `allocated_bytes` counts for it)."""
        return self._active[handle].size if handle else 0

    # -- malloc path -------------------------------------------------------------------------
    def _get_free_block(self, pool: BlockPool, size: int, stream: int) -> Block | None:
        if self._gc_on:
            pool.gc_calls += 1
        i = pool.lower_bound(size, stream)
        if i == len(pool.keys) or pool.at(i).stream != stream:
            return None
        block = pool.at(i)
        if block.segment is not None and self._expandable:
            # A block just before unmapped space counts as the size it could grow to.
            while (i + 1 < len(pool.keys) and pool.at(i + 1).stream == stream
                   and grow_size(pool.at(i + 1)) < grow_size(block)):
                i += 1
                block = pool.at(i)
        if size < self._max_split <= block.size:
            return None     # never hand out an oversize block for a small request
        if size >= self._max_split and block.size >= size + self._max_non_split_rounding:
            return None
        pool.remove(block)
        return block

    def _allocate_segment(self, pool: BlockPool, size: int, stream: int) -> Block:
        if self._gc_on:
            self._garbage_collect()
        alloc_size = allocation_size(size)
        block = self._alloc_block(pool, size, alloc_size, stream)
        if block is None and self._release_available_cached_blocks(pool, size, stream):
            block = self._alloc_block(pool, size, alloc_size, stream)
        if block is None:
            self._release_cached_blocks()
            self.num_alloc_retries += 1
            block = self._alloc_block(pool, size, alloc_size, stream)
        if block is None:
            self.num_ooms += 1
            raise SimulatedOutOfMemoryError(
                f"simulated CUDA out of memory: tried to allocate {size} bytes with {self.allocated} allocated, "
                f"{self.reserved} reserved of {self._limit} allowed",
                requested_bytes=size,
            )
        return block

    def _alloc_block(self, pool: BlockPool, size: int, alloc_size: int, stream: int) -> Block | None:
        if self._expandable:
            return self._alloc_expandable(pool, size, stream)
        if self._limit is not None and self.reserved + alloc_size > self._limit:
            return None
        block = Block(alloc_size, self._take_addresses(alloc_size), pool, stream=stream)
        self._add_reserved(alloc_size)
        self.segments += 1
        self.num_device_malloc += 1
        return block

    def _alloc_found_block(self, block: Block, size: int) -> int:
        pool = block.pool
        already_split = block.is_split
        counts_split = block.segment is None    # PyTorch keeps no inactive_split for expandable segments
        if self._should_split(block, size):
            remaining = block
            block = Block(size, remaining.addr, pool, remaining.segment, remaining.stream)
            block.prev = remaining.prev
            if block.prev is not None:
                block.prev.next = block
            block.next = remaining
            remaining.prev = block
            remaining.addr += size
            remaining.size -= size
            pool.insert(remaining)
            if counts_split:
                self.inactive_split += -size if already_split else remaining.size
        elif already_split and counts_split:
            self.inactive_split -= block.size
        block.allocated = True
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        handle = self._next_handle
        self._next_handle += 1
        self._active[handle] = block
        return handle

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.pool.small or self._expandable:
            return remaining >= MIN_BLOCK
        return size < self._max_split and remaining > SMALL_SIZE

    # -- free path ---------------------------------------------------------------------------
    def _free_block(self, block: Block) -> None:
        block.allocated = False
        original = block.size
        net_split = 0
        for neighbour in (block.prev, block.next):
            net_split -= self._try_merge(block, neighbour)
        block.pool.insert(block)
        if block.is_split:
            net_split += block.size
        if block.segment is None:
            self.inactive_split += net_split
        self.allocated -= original

    @staticmethod
    def _try_merge(dst: Block, src: Block | None) -> int:
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        src.pool.remove(src)
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    # -- releasing cached memory -------------------------------------------------------------
    def _release_block(self, block: Block) -> None:
        block.pool.remove(block)
        self.reserved -= block.size
        self.segments -= 1
        self.num_device_free += 1

    def _release_available_cached_blocks(self, pool: BlockPool, size: int, stream: int) -> bool:
        """With max_split_size: free one of `stream`'s oversize cached blocks, or several, largest first."""
        if self._max_split >= 1 << 64:
            return False
        want = max(size, self._max_split)
        i = pool.lower_bound(want, stream)
        if i < len(pool.keys) and pool.at(i).segment is None and pool.at(i).stream == stream:
            self._release_block(pool.at(i))
            return True
        released = 0
        for block in reversed(pool.sorted_blocks()[:i]):
            if released >= want or block.size < self._max_split or block.stream != stream:
                break
            if block.segment is None:
                released += block.size
                self._release_block(block)
        return released >= want

    def _release_cached_blocks(self) -> bool:
        for pool in (self._large, self._small):
            to_unmap = []
            for block in pool.sorted_blocks():
                if block.segment is not None:
                    to_unmap.append(block)
                elif not block.is_split:
                    self._release_block(block)
            for block in to_unmap:
                self._unmap_block(block)
                if not block.mapped and not block.is_split:
                    # The whole virtual segment is unmapped: give the address range back too.
                    pool.remove(block)
        return True

    def _garbage_collect(self) -> None:
        """Free the oldest fully free large segments while reserved exceeds threshold x allowed."""
        threshold = int(self.config.garbage_collection_threshold * self._fraction_limit)
        if self.reserved <= threshold:
            return
        target = self.reserved - threshold
        pool = self._large
        candidates = [b for b in pool.sorted_blocks() if not b.is_split and b.segment is None]
        total_age = sum(pool.gc_calls - b.gc_base for b in candidates)
        reclaimed = 0
        while reclaimed < target and candidates:
            age_threshold = total_age / len(candidates)
            old = [b for b in candidates if pool.gc_calls - b.gc_base >= age_threshold]
            for block in old:
                reclaimed += block.size
                total_age -= pool.gc_calls - block.gc_base
                self._release_block(block)
            released = {id(b) for b in old}
            candidates = [b for b in candidates if id(b) not in released]

    # -- helpers -----------------------------------------------------------------------------
    def _take_addresses(self, nbytes: int, *, hinted: bool = True) -> int:
        addr = None
        if hinted:
            addr, self.segment_address_hint = self.segment_address_hint, None
        if addr is None:
            addr = self._next_addr
        # a gap after each segment, so separate segments never look adjacent
        self._next_addr = max(self._next_addr, addr + nbytes + SMALL_BUFFER)
        return addr

    def _add_reserved(self, nbytes: int) -> None:
        self.reserved += nbytes
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved


