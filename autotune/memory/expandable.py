"""The expandable-segment path of the caching-allocator simulator (`expandable_segments:True`).

One virtual address range per pool, backed by 2 MiB (small pool) or 20 MiB (large pool) physical
pages mapped on demand (`try_allocate_expandable_block`, `map_block`, `unmap_block` in
c10/cuda/CUDACachingAllocator.cpp). `CachingAllocatorSim` mixes this in; it relies on the
simulator's pools, counters and limits.
"""
from __future__ import annotations

from autotune.memory.blocks import (
    LARGE_BUFFER,
    SMALL_BUFFER,
    Block,
    BlockPool,
    ExpandableSegment,
    link_after,
    link_before,
)

_NO_LIMIT_VA = 1 << 46          # virtual size of an expandable segment when no capacity is given


class ExpandableSegments:
    """Methods of `CachingAllocatorSim` for expandable segments."""

    def _alloc_expandable(self, pool: BlockPool, size: int, stream: int = 0) -> Block | None:
        """`try_allocate_expandable_block`: map pages at the end of a free range until it fits.

        The memory-fraction check takes reserved + the request, as `alloc_block` does before it maps;
        the pages mapped after it must still fit in the device's usable memory.
        """
        if self._fraction_limit is not None and self.reserved + size > self._fraction_limit:
            return None
        candidate = self._find_expandable_block(pool, size, stream)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = following
        pool.remove(candidate)
        return candidate

    def _find_expandable_block(self, pool: BlockPool, size: int, stream: int) -> Block:
        for addr in sorted(pool.unmapped):
            start = pool.unmapped[addr]
            if start.stream != stream:
                continue            # each stream grows its own expandable segment
            if start.prev is not None and not start.prev.allocated:
                start = start.prev
            room, block = 0, start
            while room < size and block is not None and not block.allocated:
                room += block.size
                block = block.next
            if room >= size:
                return start
        page = SMALL_BUFFER if pool.small else LARGE_BUFFER
        va_size = self.capacity_bytes + self.capacity_bytes // 8 if self.capacity_bytes else _NO_LIMIT_VA
        va_size = -(-va_size // page) * page
        # PyTorch's `segment` stat counts cudaMalloc'd segments; an expandable one is not among them.
        segment = ExpandableSegment(self._take_addresses(va_size, hinted=False), va_size, page)
        block = Block(va_size, segment.base, pool, segment, stream)
        block.mapped = False
        pool.insert(block)
        return block

    def _map_block(self, block: Block, nbytes: int) -> bool:
        segment, pool = block.segment, block.pool
        pages = segment.pages_to_map(block.addr, nbytes)
        mapped = len(pages) * segment.page
        if self._usable is not None and self.reserved + mapped > self._usable:
            return False
        segment.mapped.update(pages)
        pool.remove(block)
        block.mapped = True
        if mapped < block.size:
            rest = Block(block.size - mapped, block.addr + mapped, pool, segment, block.stream)
            rest.mapped = False
            link_after(block, rest)
            pool.insert(rest)
            block.size = mapped
        self._try_merge(block, block.prev)
        self._try_merge(block, block.next)
        pool.insert(block)
        self._add_reserved(mapped)
        self.num_device_malloc += 1             # one per map call, as PyTorch counts it
        return True

    def _unmap_block(self, block: Block) -> None:
        segment, pool = block.segment, block.pool
        pages = segment.pages_to_unmap(block.addr, block.size)
        if not pages:
            return
        pool.remove(block)
        start, nbytes = segment.page_addr(pages.start), len(pages) * segment.page
        if start > block.addr:
            before = Block(start - block.addr, block.addr, pool, segment, block.stream)
            link_before(block, before)
            pool.insert(before)
        after_size = block.addr + block.size - (start + nbytes)
        if after_size > 0:
            after = Block(after_size, start + nbytes, pool, segment, block.stream)
            link_after(block, after)
            pool.insert(after)
        block.addr, block.size, block.mapped = start, nbytes, False
        segment.mapped.difference_update(pages)
        self._try_merge(block, block.prev)
        self._try_merge(block, block.next)
        pool.insert(block)
        self.reserved -= nbytes
        self.num_device_free += 1
