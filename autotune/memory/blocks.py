"""The caching allocator's building blocks: size rules, blocks, pools and expandable segments.

Mirrors the data structures of c10/cuda/CUDACachingAllocator.cpp so that the simulator in
`autotune.memory.allocator` can follow the C++ control flow line by line.
"""
from __future__ import annotations

from bisect import bisect_left, insort

MIN_BLOCK = 512                 # kMinBlockSize: every request is rounded to a multiple of this
SMALL_SIZE = 1 << 20            # kSmallSize: requests up to 1 MiB use the small pool
SMALL_BUFFER = 2 << 20          # kSmallBuffer: small-pool segment size
LARGE_BUFFER = 20 << 20         # kLargeBuffer: large-pool segment size for requests below kMinLargeAlloc
MIN_LARGE_ALLOC = 10 << 20      # kMinLargeAlloc
ROUND_LARGE = 2 << 20           # kRoundLarge: bigger requests get a segment rounded up to this


def round_size(nbytes: int, divisions: int | tuple[int, ...] | None = None) -> int:
    """The block size a request of `nbytes` asks the pools for (`round_size` in the C++).

    Args:
        nbytes: the requested bytes.
        divisions: `roundup_power2_divisions`: one count, or PyTorch's table of 16 counts for the
            power-of-two intervals from 1 MiB up (`AllocatorConfig.roundup_intervals()`); a count
            applies only above 512 * count bytes.
    """
    if nbytes < MIN_BLOCK:
        return MIN_BLOCK
    if isinstance(divisions, tuple):
        divisions = divisions[min(max(nbytes.bit_length() - 1 - 20, 0), len(divisions) - 1)]
    if divisions is not None and divisions > 1 and nbytes > MIN_BLOCK * divisions:
        return _roundup_power2_next_division(nbytes, divisions)
    return -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    if size & (size - 1) == 0:
        return size
    power2_floor = 1 << (size.bit_length() - 1)
    step = power2_floor // divisions
    if step == 0:
        return power2_floor << 1
    floor = size & ~(step - 1)
    return size if floor == size else floor + step


def allocation_size(size: int) -> int:
    """The segment size `cudaMalloc` is asked for on a pool miss (`get_allocation_size`)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class Block:
    """A contiguous range of a segment, free or handed out; prev/next link the segment's pieces."""

    __slots__ = ("size", "addr", "pool", "allocated", "prev", "next", "segment", "mapped", "gc_base", "stream")

    def __init__(self, size: int, addr: int, pool: BlockPool, segment: ExpandableSegment | None = None,
                 stream: int = 0):
        self.size = size
        self.addr = addr
        self.pool = pool
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None
        self.segment = segment          # the expandable segment it lives in, else None
        self.mapped = True
        self.gc_base = 0                # pool.gc_calls when it was last freed: its GC "age" origin
        self.stream = stream            # the stream its segment was allocated on; reused only there

    @property
    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class BlockPool:
    """Free blocks of one pool, sorted by (stream, size, address) as PyTorch's BlockComparatorSize
    sorts them, so best fit looks only at the requesting stream's blocks; unmapped ones by address."""

    __slots__ = ("small", "keys", "by_addr", "unmapped", "gc_calls")

    def __init__(self, small: bool):
        self.small = small
        self.keys: list[tuple[int, int, int]] = []  # sorted (stream, size, addr) of free mapped blocks
        self.by_addr: dict[int, Block] = {}
        self.unmapped: dict[int, Block] = {}        # expandable segments' unmapped ranges
        self.gc_calls = 0                           # get_free_blocks_call_count

    def insert(self, block: Block) -> None:
        if block.mapped:
            insort(self.keys, (block.stream, block.size, block.addr))
            self.by_addr[block.addr] = block
            block.gc_base = self.gc_calls
        else:
            self.unmapped[block.addr] = block

    def remove(self, block: Block) -> None:
        """Take `block` out; it must be in the pool with its current size and address."""
        if not block.mapped:
            del self.unmapped[block.addr]
            return
        i = bisect_left(self.keys, (block.stream, block.size, block.addr))
        del self.keys[i]
        del self.by_addr[block.addr]

    def lower_bound(self, size: int, stream: int = 0) -> int:
        """Index of `stream`'s smallest free block of at least `size` bytes (lowest address among equals).

        The block there may belong to a later stream: callers check `at(i).stream`.
        """
        return bisect_left(self.keys, (stream, size, -1))

    def at(self, index: int) -> Block:
        return self.by_addr[self.keys[index][2]]

    def sorted_blocks(self) -> list[Block]:
        return [self.by_addr[addr] for _, _, addr in self.keys]


class ExpandableSegment:
    """One virtual address range per pool, backed by physical pages mapped on demand."""

    __slots__ = ("base", "size", "page", "mapped")

    def __init__(self, base: int, size: int, page: int):
        self.base = base
        self.size = size
        self.page = page
        self.mapped: set[int] = set()

    def pages_to_map(self, addr: int, nbytes: int) -> range:
        """Pages covering [addr, addr + nbytes), rounded outward."""
        first = (addr - self.base) // self.page
        return range(first, -(-(addr + nbytes - self.base) // self.page))

    def pages_to_unmap(self, addr: int, nbytes: int) -> range:
        """Whole pages inside [addr, addr + nbytes), rounded inward."""
        first = -(-(addr - self.base) // self.page)
        return range(first, max(first, (addr + nbytes - self.base) // self.page))

    def page_addr(self, page: int) -> int:
        return self.base + page * self.page

def grow_size(block: Block) -> int:
    """The size a free block could reach by mapping the unmapped range right after it."""
    following = block.next
    return block.size + (following.size if following is not None and not following.mapped else 0)


def link_after(block: Block, new: Block) -> None:
    """Put `new` right after `block` in its segment's chain."""
    new.prev, new.next = block, block.next
    if block.next is not None:
        block.next.prev = new
    block.next = new


def link_before(block: Block, new: Block) -> None:
    """Put `new` right before `block` in its segment's chain."""
    new.prev, new.next = block.prev, block
    if block.prev is not None:
        block.prev.next = new
    block.prev = new
