"""The configs every export test uses: the golden one and a ZeRO-3 + offload + FRUGAL one."""
from __future__ import annotations

from autotune.config import TrialConfig

# One config that switches on most of what exporters must carry.
GOLDEN_CONFIG = TrialConfig().replace(**{
    "model.dtype": "bfloat16",
    "memory.zero_stage": 2,
    "memory.offload_optimizer": True,
    "memory.actor_gradient_checkpointing": True,
    "memory.offload_reference": True,
    "memory.empty_cache_after": ["generation", "actor_train"],
    "memory.allocator.expandable_segments": True,
    "memory.allocator.max_split_size_mb": 256,
    "optimizer.name": "frugal",
    "optimizer.partition.placement": "spread",   # ZeRO flattens groups, so a rotating partition is invalid
    "optimizer.partition.density": 0.5,
})

# ZeRO-3 with optimizer offload, reference and reward offload, FRUGAL on actor and critic, fp32.
ZERO3_FRUGAL_CONFIG = TrialConfig().replace(**{
    "memory.zero_stage": 3,
    "memory.offload_optimizer": True,
    "memory.offload_reference": True,
    "memory.offload_reward": True,
    "memory.critic_gradient_checkpointing": True,
    "optimizer.name": "frugal",
    "optimizer.critic": "frugal",
    "optimizer.partition.placement": "top",
    "optimizer.partition.density": 0.5,
})

CASES = {"golden": GOLDEN_CONFIG, "zero3-offload-frugal": ZERO3_FRUGAL_CONFIG,
         "stage0-fp32-adamw": TrialConfig(),
         "stage1-fp16-grpo": TrialConfig().replace(**{"model.dtype": "float16", "memory.zero_stage": 1,
                                                      "algorithm": "grpo"})}
