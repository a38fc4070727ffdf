"""An RLHF-shaped fragmentation scenario (after Zhou et al. 2024): growing KV caches interleaved
with long-lived blocks during generation, then a large training allocation.

Run with `-s -o log_cli=true --log-cli-level=INFO` to see the figures.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from autotune.memory.allocator import AllocatorConfig, CachingAllocatorSim
from autotune.memory.report import fragmentation

logger = logging.getLogger(__name__)
KiB, MiB = 1 << 10, 1 << 20

LAYERS, TOKENS, TOKEN_KV_BYTES = 4, 48, 192 * KiB     # a layer's K+V for one new token, whole batch
LONG_LIVED_EVERY, LONG_LIVED_BYTES = 6, 3 * MiB      # sampled tokens / logprobs kept for training
TRAIN_BYTES = (96 * MiB, 64 * MiB)                   # activations and gradients


@dataclass(frozen=True, kw_only=True)
class Outcome:
    released_bytes: int             # what empty_cache gave back at the phase edge
    train_peak_allocated: int
    train_peak_reserved: int

    @property
    def train_fragmentation(self) -> float:
        return fragmentation(self.train_peak_allocated, self.train_peak_reserved)


def run_iteration(config: AllocatorConfig, *, empty_cache: bool) -> Outcome:
    sim = CachingAllocatorSim(config)
    kv = [sim.malloc(TOKEN_KV_BYTES) for _ in range(LAYERS)]
    kept = []
    for t in range(2, TOKENS + 1):
        for layer in range(LAYERS):
            # torch.cat: the longer cache exists before the shorter one is freed.
            grown = sim.malloc(t * TOKEN_KV_BYTES)
            sim.free(kv[layer])
            kv[layer] = grown
        if t % LONG_LIVED_EVERY == 0:
            kept.append(sim.malloc(LONG_LIVED_BYTES))
    for handle in kv:
        sim.free(handle)
    before = sim.reserved
    if empty_cache:
        sim.empty_cache()
    released = before - sim.reserved
    sim.reset_peak_stats()
    train = [sim.malloc(n) for n in TRAIN_BYTES]
    stats = sim.stats()
    for handle in train + kept:
        sim.free(handle)
    return Outcome(released_bytes=released, train_peak_allocated=stats["peak_allocated_bytes"],
                   train_peak_reserved=stats["peak_reserved_bytes"])


@pytest.mark.parametrize("env", ["", "max_split_size_mb:64"])
def test_empty_cache_between_phases_cuts_reserved_and_fragmentation(env):
    config = AllocatorConfig.from_env_string(env)
    kept_cache = run_iteration(config, empty_cache=False)
    emptied = run_iteration(config, empty_cache=True)
    logger.info("%s: training peak reserved %.1f -> %.1f MiB, fragmentation %.3f -> %.3f",
                env or "defaults", kept_cache.train_peak_reserved / MiB, emptied.train_peak_reserved / MiB,
                kept_cache.train_fragmentation, emptied.train_fragmentation)
    # The same blocks are live in training either way.
    assert emptied.train_peak_allocated == kept_cache.train_peak_allocated
    # The big training tensors fit in no cached generation segment, so whatever empty_cache
    # released is exactly what the training phase no longer holds in reserve.
    assert emptied.released_bytes > 0
    assert kept_cache.train_peak_reserved - emptied.train_peak_reserved == emptied.released_bytes
    assert emptied.train_fragmentation < kept_cache.train_fragmentation
    # Some fragmentation survives: long-lived blocks pin segments that empty_cache cannot free.
    assert emptied.train_fragmentation > 0


def test_expandable_segments_leave_less_fragmentation_than_empty_cache():
    fixed = run_iteration(AllocatorConfig(), empty_cache=True)
    expandable = run_iteration(AllocatorConfig(expandable_segments=True), empty_cache=True)
    logger.info("empty_cache with fixed segments: fragmentation %.3f; with expandable segments: %.3f",
                fixed.train_fragmentation, expandable.train_fragmentation)
    assert expandable.train_peak_reserved < fixed.train_peak_reserved
