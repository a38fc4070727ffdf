"""A GPU memory run is MEMORY_ITERATIONS long: the peak has settled by then.

Checked on the CPU backend, which replays every allocation through the caching-allocator simulator
(the same allocator a GPU run measures): the running peak reserved after MEMORY_ITERATIONS
iterations equals the peak after eight, with and without the interventions that change when
memory is allocated and released.
"""
from __future__ import annotations

import pytest

from autotune.config import TrialConfig
from autotune.tuner.fidelity import MEMORY_ITERATIONS

_SMALL = {"model.actor": "llama-tiny", "device": "cpu", "workload.batch_size": 2, "workload.micro_batch": 2,
          "workload.group_size": 2, "workload.prompt_len": 4, "workload.gen_len": 4, "workload.steps": 8}


@pytest.mark.slow   # three 8-iteration llama-tiny runs: ~25 s of CPU, minutes on a loaded box
@pytest.mark.parametrize("overrides", [
    {},                                                                    # AdamW baseline
    {"optimizer.name": "frugal", "optimizer.critic": "frugal", "optimizer.partition.density": 0.25,
     "optimizer.partition.update_gap": 2},                                 # a rotating partition: state moves
    {"memory.empty_cache_after": ("generation", "actor_train"), "memory.allocator.expandable_segments": True,
     "memory.actor_gradient_checkpointing": True, "memory.offload_reference": True},
], ids=["adamw", "frugal-rotating", "interventions"])
def test_the_peak_settles_within_the_memory_iterations(overrides: dict) -> None:
    from autotune.rlhf.trial import run_trial

    peaks: list[int] = []
    cfg = TrialConfig().replace(**_SMALL, **overrides)
    result = run_trial(cfg, on_iteration=lambda stats, probe: peaks.append(probe.report().peak_reserved_bytes))
    assert result.ok and len(peaks) == 8
    assert peaks[MEMORY_ITERATIONS - 1] == peaks[-1] == result.memory.peak_reserved_bytes
