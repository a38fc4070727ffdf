"""Random malloc/free sequences keep the simulator's books consistent, under every setting."""
from __future__ import annotations

import random

import pytest

from autotune.memory.allocator import AllocatorConfig, CachingAllocatorSim, SimulatedOutOfMemoryError

MiB = 1 << 20
CONFIGS = [
    "",
    "max_split_size_mb:64",
    "expandable_segments:True",
    "roundup_power2_divisions:4",
    "garbage_collection_threshold:0.6",
]


def check_books(sim: CachingAllocatorSim) -> None:
    stats, segments = sim.stats(), sim.snapshot()
    assert stats["reserved_bytes"] == sum(s["total_size"] for s in segments)
    assert stats["allocated_bytes"] == sum(s["allocated_size"] for s in segments)
    # PyTorch's `segment` stat leaves expandable segments out
    assert stats["segments"] == sum(not s["expandable"] for s in segments)
    inactive_split = 0
    for seg in segments:
        blocks = seg["blocks"]
        # Blocks tile their segment without gaps or overlaps.
        for left, right in zip(blocks, blocks[1:]):
            assert left["address"] + left["size"] == right["address"]
            # Free neighbours of the same kind are always merged.
            assert not (left["state"] == right["state"] != "active_allocated")
        if not seg["expandable"] and len(blocks) > 1:
            inactive_split += sum(b["size"] for b in blocks if b["state"] == "inactive")
        for b in blocks:
            if b["state"] != "unmapped":
                assert b["size"] % 512 == 0
    assert stats["inactive_split_bytes"] == inactive_split
    assert stats["peak_reserved_bytes"] >= stats["reserved_bytes"]
    assert stats["peak_allocated_bytes"] >= stats["allocated_bytes"]


@pytest.mark.parametrize("env", CONFIGS)
def test_random_traffic_keeps_the_books(env):
    rng = random.Random(env)
    config = AllocatorConfig.from_env_string(env)
    if config.garbage_collection_threshold:
        config = AllocatorConfig(garbage_collection_threshold=config.garbage_collection_threshold,
                                 memory_fraction=0.9)
    sim = CachingAllocatorSim(config, capacity_bytes=512 * MiB)
    live: list[tuple[int, int]] = []
    for step in range(3000):
        if live and rng.random() < 0.5:
            handle, size = live.pop(rng.randrange(len(live)))
            assert sim.block_size(handle) >= size
            sim.free(handle)
        elif step % 500 == 499:
            sim.empty_cache()
        else:
            size = int(rng.choice([rng.randint(1, 4096), rng.randint(4096, 2 * MiB), rng.randint(2 * MiB, 48 * MiB)]))
            try:
                live.append((sim.malloc(size), size))
            except SimulatedOutOfMemoryError:
                pass
        if step % 50 == 0:
            check_books(sim)
    for handle, _ in live:
        sim.free(handle)
    sim.empty_cache()
    check_books(sim)
    assert sim.stats()["allocated_bytes"] == 0
    assert sim.stats()["reserved_bytes"] == 0
