"""The simulator against the caching-allocator rules; every expected number is worked out by hand."""
from __future__ import annotations

import pytest

from autotune.errors import ConfigError
from autotune.memory.allocator import AllocatorConfig, CachingAllocatorSim, SimulatedOutOfMemoryError

KiB, MiB = 1 << 10, 1 << 20


def sim(capacity_bytes: int | None = None, **config) -> CachingAllocatorSim:
    return CachingAllocatorSim(AllocatorConfig(**config), capacity_bytes=capacity_bytes)


def test_stats_keys_are_exactly_the_documented_ones():
    assert set(sim().stats()) == {
        "allocated_bytes", "reserved_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
        "inactive_split_bytes", "segments", "num_device_malloc", "num_device_free",
        "num_alloc_retries", "num_ooms",
    }


def test_small_request_rounds_to_512_and_reserves_a_2mib_segment():
    s = sim()
    s.malloc(1000)
    st = s.stats()
    assert st["allocated_bytes"] == 1024            # 1000 rounded up to 2 x 512
    assert st["reserved_bytes"] == 2 * MiB          # kSmallBuffer
    assert st["inactive_split_bytes"] == 2 * MiB - 1024
    assert st["segments"] == 1


def test_tiny_request_takes_the_512_byte_minimum():
    s = sim()
    s.malloc(1)
    assert s.stats()["allocated_bytes"] == 512


def test_medium_large_request_reserves_a_20mib_segment():
    s = sim()
    s.malloc(5 * MiB)
    st = s.stats()
    assert st["reserved_bytes"] == 20 * MiB         # kLargeBuffer for 1 MiB < size < 10 MiB
    assert st["allocated_bytes"] == 5 * MiB
    assert st["inactive_split_bytes"] == 15 * MiB


def test_big_request_reserves_its_size_rounded_to_2mib():
    s = sim()
    s.malloc(12 * MiB)
    assert s.stats()["reserved_bytes"] == 12 * MiB
    t = sim()
    t.malloc(13 * MiB)
    assert t.stats()["reserved_bytes"] == 14 * MiB


def test_large_remainder_of_at_most_1mib_is_not_split_and_counts_as_allocated():
    s = sim()
    s.malloc(19 * MiB + 512 * KiB)          # segment 20 MiB, remainder 0.5 MiB <= kSmallSize
    st = s.stats()
    assert st["allocated_bytes"] == 20 * MiB
    assert st["inactive_split_bytes"] == 0


def test_freed_segment_is_reused_by_best_fit():
    s = sim()
    a = s.malloc(6 * MiB)        # segment A: 20 MiB
    b = s.malloc(15 * MiB)       # does not fit A's 14 MiB rest: segment B, 16 MiB
    s.free(a)
    s.free(b)                    # cached: A 20 MiB and B 16 MiB, both whole
    s.malloc(13 * MiB)           # best fit is B; taking A would leave 18 MiB without a home
    s.malloc(18 * MiB)           # A serves it
    st = s.stats()
    assert st["reserved_bytes"] == 36 * MiB
    assert st["num_device_malloc"] == 2
    assert st["allocated_bytes"] == 13 * MiB + 18 * MiB


def test_small_pool_split_and_merge_track_inactive_split():
    s = sim()
    a = s.malloc(1000)
    b = s.malloc(1000)
    assert s.stats()["inactive_split_bytes"] == 2 * MiB - 2048
    s.free(a)                    # a cannot merge (b is live): one more inactive piece
    assert s.stats()["inactive_split_bytes"] == 2 * MiB - 1024
    s.free(b)                    # merges with both neighbours: the segment is whole again
    assert s.stats()["inactive_split_bytes"] == 0
    assert s.stats()["reserved_bytes"] == 2 * MiB


def test_large_pool_split_and_merge_track_inactive_split():
    s = sim()
    a = s.malloc(4 * MiB)
    b = s.malloc(4 * MiB)        # carved from the 16 MiB rest of a's segment
    assert s.stats()["inactive_split_bytes"] == 12 * MiB
    assert s.stats()["reserved_bytes"] == 20 * MiB
    s.free(a)
    assert s.stats()["inactive_split_bytes"] == 16 * MiB
    s.free(b)
    assert s.stats()["inactive_split_bytes"] == 0


def test_empty_cache_frees_only_entirely_free_segments():
    s = sim()
    s.malloc(4 * MiB)            # keeps segment A (20 MiB) partly live
    c = s.malloc(30 * MiB)       # segment B (30 MiB)
    s.free(c)
    s.empty_cache()
    st = s.stats()
    assert st["reserved_bytes"] == 20 * MiB
    assert st["inactive_split_bytes"] == 16 * MiB
    assert (st["segments"], st["num_device_free"]) == (1, 1)
    assert st["peak_reserved_bytes"] == 50 * MiB


def test_max_split_size_keeps_small_requests_out_of_oversize_blocks():
    limited, plain = sim(max_split_size_mb=64), sim()
    for s in (limited, plain):
        s.free(s.malloc(100 * MiB))
        s.malloc(30 * MiB)
    assert limited.stats()["reserved_bytes"] == 130 * MiB      # new 30 MiB segment
    assert plain.stats()["reserved_bytes"] == 100 * MiB        # split the cached 100 MiB block
    assert plain.stats()["inactive_split_bytes"] == 70 * MiB


def test_max_split_size_oversize_request_takes_whole_block_within_20mib():
    s = sim(max_split_size_mb=64)
    s.free(s.malloc(100 * MiB))
    h = s.malloc(81 * MiB)       # 100 < 81 + 20: served by the cached block, never split
    assert s.stats()["allocated_bytes"] == 100 * MiB
    assert s.stats()["inactive_split_bytes"] == 0
    s.free(h)
    s.malloc(80 * MiB)           # 100 >= 80 + 20: too wasteful, a new 80 MiB segment
    assert s.stats()["reserved_bytes"] == 180 * MiB


def test_max_split_releases_oversize_cached_block_before_full_retry():
    s = sim(capacity_bytes=150 * MiB, max_split_size_mb=64)
    s.free(s.malloc(100 * MiB))
    s.malloc(80 * MiB)           # 100 + 80 > 150: release the oversize block, then allocate
    st = s.stats()
    assert st["reserved_bytes"] == 80 * MiB
    assert st["num_alloc_retries"] == 0     # served before the release-everything retry
    assert st["num_device_free"] == 1


def test_expandable_segments_map_20mib_pages():
    s = sim(expandable_segments=True)
    a = s.malloc(5 * MiB)
    assert s.stats()["reserved_bytes"] == 20 * MiB
    b = s.malloc(30 * MiB)       # 15 MiB free at the end of the mapping + one more page
    assert s.stats()["reserved_bytes"] == 40 * MiB
    assert s.stats()["allocated_bytes"] == 35 * MiB
    s.malloc(1000)               # the small pool has its own segment with 2 MiB pages
    assert s.stats()["reserved_bytes"] == 42 * MiB
    s.free(b)                    # bytes [5, 40) MiB free: the page [20, 40) can be unmapped
    s.empty_cache()
    assert s.stats()["reserved_bytes"] == 22 * MiB
    s.free(a)
    s.empty_cache()
    assert s.stats()["reserved_bytes"] == 2 * MiB
    assert len(s.snapshot()) == 1            # the fully unmapped large segment is released
    assert s.stats()["segments"] == 0        # PyTorch's `segment` stat leaves expandable segments out


def test_expandable_segments_reserve_less_than_fixed_segments_for_the_same_requests():
    fixed, expandable = sim(), sim(expandable_segments=True)
    for s in (fixed, expandable):
        s.malloc(5 * MiB)
        s.malloc(30 * MiB)
    assert fixed.stats()["reserved_bytes"] == 50 * MiB
    assert expandable.stats()["reserved_bytes"] == 40 * MiB


def test_capacity_miss_releases_cache_and_retries_before_oom():
    s = sim(capacity_bytes=40 * MiB)
    s.free(s.malloc(30 * MiB))
    b = s.malloc(35 * MiB)       # 30 cached + 36 > 40: free the cache, retry, fits
    st = s.stats()
    assert (st["reserved_bytes"], st["num_alloc_retries"], st["num_device_free"]) == (36 * MiB, 1, 1)
    with pytest.raises(SimulatedOutOfMemoryError) as info:
        s.malloc(10 * MiB)       # 36 live + 10 > 40, nothing to release
    assert isinstance(info.value, MemoryError)
    st = s.stats()
    assert (st["num_alloc_retries"], st["num_ooms"]) == (2, 1)
    assert st["allocated_bytes"] == 36 * MiB        # the failed request left no trace
    s.free(b)


def test_roundup_power2_divisions_rounds_to_a_quarter_of_the_power_of_two():
    s = sim(roundup_power2_divisions=4)
    s.malloc(1363149)            # 1.3 MiB: between 1 and 2 MiB, quarters of 256 KiB -> 1.5 MiB
    assert s.stats()["allocated_bytes"] == 1536 * KiB
    t = sim(roundup_power2_divisions=4)
    t.malloc(1500)               # <= 512 * 4: plain 512 rounding
    assert t.stats()["allocated_bytes"] == 1536


def _gc_run(fraction: float | None, torch_version: tuple[int, int]) -> int:
    config = AllocatorConfig(garbage_collection_threshold=0.5, memory_fraction=fraction)
    s = CachingAllocatorSim(config, capacity_bytes=100 * MiB, torch_version=torch_version)
    a, b = s.malloc(30 * MiB), s.malloc(30 * MiB)
    s.free(a)
    s.free(b)
    s.malloc(40 * MiB)       # a miss with 60 MiB reserved > 0.5 x allowed: GC first, if armed
    return s.stats()["reserved_bytes"]


@pytest.mark.parametrize(("fraction", "torch_version", "reserved_mib"), [
    (0.999, (2, 13), 40),    # a fraction below 1.0 arms the GC in every version
    (1.0, (2, 9), 40),       # before 2.10 any set fraction, 1.0 included, armed it
    (1.0, (2, 10), 100),     # from 2.10 a fraction of 1.0 is dropped, and the GC with it
    (None, (2, 9), 100),     # no fraction: the threshold never acts
])
def test_garbage_collection_threshold_acts_only_under_a_fraction(fraction, torch_version, reserved_mib):
    assert _gc_run(fraction, torch_version) == reserved_mib * MiB


def test_reset_peak_stats_restarts_peaks_from_current():
    s = sim()
    s.free(s.malloc(30 * MiB))
    s.reset_peak_stats()
    st = s.stats()
    assert st["peak_allocated_bytes"] == 0
    assert st["peak_reserved_bytes"] == 30 * MiB


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_malloc_rejects_a_bad_size(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        sim().malloc(bad)


def test_double_free_and_unknown_handle_raise():
    s = sim()
    h = s.malloc(100)
    s.free(h)
    with pytest.raises(ValueError, match="double free or unknown handle"):
        s.free(h)
    with pytest.raises(ValueError, match="double free or unknown handle"):
        s.free(12345)
    assert s.stats()["allocated_bytes"] == 0


def test_zero_byte_malloc_allocates_nothing():
    s = sim()
    s.free(s.malloc(0))
    assert s.stats()["reserved_bytes"] == 0


@pytest.mark.parametrize("text, fragment", [
    ("expandable_segments", "not of the form key:value"),
    ("max_split_size_mb:lots", "cannot parse"),
    ("pinned_memory:True", "unknown key 'pinned_memory'"),
    ("max_split_size_mb:8", "at least 20"),
])
def test_malformed_allocator_string_is_rejected(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AllocatorConfig.from_env_string(text)


def test_allocator_string_parses_the_env_syntax():
    cfg = AllocatorConfig.from_env_string("expandable_segments:True,max_split_size_mb:128")
    assert cfg.expandable_segments and cfg.max_split_size_bytes == 128 * MiB


def test_a_cached_block_is_reused_only_on_its_own_stream():
    same, other = sim(), sim()
    same.free(same.malloc(5 * MiB, stream=1))
    same.malloc(5 * MiB, stream=1)
    other.free(other.malloc(5 * MiB, stream=1))
    other.malloc(5 * MiB, stream=2)          # a side stream (ZeRO, FSDP) cannot take stream 1's block
    assert same.stats()["reserved_bytes"] == 20 * MiB
    assert other.stats()["reserved_bytes"] == 40 * MiB
    assert {s["stream"] for s in other.snapshot()} == {1, 2}


def test_empty_cache_releases_every_streams_free_segments():
    s = sim()
    for stream in (0, 7):
        s.free(s.malloc(5 * MiB, stream=stream))
    s.empty_cache()
    assert s.stats()["reserved_bytes"] == 0
