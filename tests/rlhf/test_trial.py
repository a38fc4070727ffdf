"""End-to-end trials of llama-tiny on the CPU backend (real tensors, simulated GPU allocator)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from autotune.config import PHASES, TrialConfig
from autotune.result import TrialResult
from autotune.rlhf.trial import apply_allocator_env, plan_trial, run_trial, step_time, write_result
from autotune.rlhf.zero import deepspeed_config

SMALL = {"workload.batch_size": 4, "workload.prompt_len": 4, "workload.gen_len": 8, "workload.steps": 2,
         "workload.group_size": 2, "workload.micro_batch": 4}



def small(**overrides: object) -> TrialConfig:
    return TrialConfig().replace(**{**SMALL, **overrides})


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_trial_finishes_with_a_complete_result(algorithm):
    cfg = TrialConfig().replace(algorithm=algorithm, **{"workload.steps": 4})
    start = time.perf_counter()
    result = run_trial(cfg)
    assert time.perf_counter() - start < 90   # generous: the 2-core machine is shared
    assert result.status == "ok", result.message
    assert result.backend == "cpu" and result.config_hash == cfg.config_hash()
    expected_phases = PHASES if algorithm == "ppo" else PHASES[:3]
    assert tuple(p.name for p in result.memory.phases) == expected_phases
    for phase in result.memory.phases:
        assert 0 < phase.peak_allocated_bytes <= phase.peak_reserved_bytes
    assert result.memory.peak_reserved_bytes == max(p.peak_reserved_bytes for p in result.memory.phases)
    assert len(result.reward_curve) == 4 and all(0 <= r <= 1 for r in result.reward_curve)
    # the evaluation on the fixed prompts, before and after training, with its standard error
    assert 0 <= result.initial_reward <= 1 and 0 <= result.reward <= 1
    assert result.reward != result.initial_reward
    assert 0 < result.reward_se < 0.05
    assert result.step_time_s > 0 and result.wall_time_s > 0
    assert {"torch", "transformers", "autotune"} <= set(result.versions)
    assert "deepspeed" not in result.versions


def test_step_time_skips_the_warm_up_iteration():
    assert step_time([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert step_time([9.0]) == 9.0
    assert step_time([]) is None


def test_same_seed_same_curve_and_empty_cache_changes_only_memory():
    base = run_trial(small())
    again = run_trial(small())
    emptied = run_trial(small(**{"memory.empty_cache_after": ("generation",)}))
    assert base.reward_curve == again.reward_curve
    assert emptied.reward_curve == base.reward_curve
    assert emptied.memory.peak_reserved_bytes <= base.memory.peak_reserved_bytes
    for name in PHASES:
        assert emptied.memory.phase(name).peak_reserved_bytes <= base.memory.phase(name).peak_reserved_bytes


def test_gradient_checkpointing_lowers_the_actor_train_peak():
    # long enough sequences that activations, not the first AdamW step, set the phase's peak
    longer = {"workload.steps": 1, "workload.batch_size": 8, "workload.micro_batch": 8,
              "workload.prompt_len": 16, "workload.gen_len": 32}
    plain = run_trial(small(**longer))
    ckpt = run_trial(small(**longer, **{"memory.actor_gradient_checkpointing": True}))
    assert ckpt.reward_curve == plain.reward_curve   # same samples: checkpointing recomputes, it does not change
    def peak(result) -> int:
        return result.memory.phase("actor_train").peak_allocated_bytes

    assert peak(ckpt) < peak(plain)


@pytest.mark.parametrize("overrides", [
    {"memory.static_kv_cache": True},
    {"memory.offload_reference": True, "memory.offload_reward": True},
    {"memory.critic_gradient_checkpointing": True},
    {"optimizer.name": "frugal", "optimizer.critic": "frugal"},
])
def test_interventions_keep_the_samples(overrides):
    base = run_trial(small(**{"workload.steps": 1}))
    changed = run_trial(small(**{"workload.steps": 1, **overrides}))
    assert changed.status == "ok", changed.message
    assert changed.reward_curve == base.reward_curve


def test_a_reward_model_score_still_reports_the_task_reward():
    task = run_trial(small(**{"workload.steps": 1}))
    model = run_trial(small(**{"workload.steps": 1, "workload.reward_source": "model"}))
    assert model.status == "ok", model.message
    assert model.reward_curve == task.reward_curve   # same first samples, scored by the task for the curve


def test_offloading_frozen_models_lowers_the_generation_peak():
    base = run_trial(small(**{"workload.steps": 1}))
    off = run_trial(small(**{"workload.steps": 1, "memory.offload_reference": True, "memory.offload_reward": True}))
    assert off.memory.phase("generation").peak_allocated_bytes < base.memory.phase("generation").peak_allocated_bytes


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_plan_agrees_with_the_cpu_trial(algorithm):
    cfg = small(algorithm=algorithm, **{"workload.steps": 1})
    real = run_trial(cfg)
    planned = plan_trial(cfg)
    assert planned.status == "ok" and planned.backend == "fake"
    assert planned.reward is None and planned.reward_curve == ()
    for phase in real.memory.phases:
        fake = planned.memory.phase(phase.name)
        assert fake.peak_allocated_bytes == pytest.approx(phase.peak_allocated_bytes, rel=0.01)
        assert fake.peak_reserved_bytes == pytest.approx(phase.peak_reserved_bytes, rel=0.01)


def test_a_full_device_is_an_oom_in_a_phase_not_a_crash():
    unlimited = run_trial(small(**{"workload.steps": 1}))
    # a device just below the largest phase peak: the models fit, some phase does not
    capacity_gb = 0.99 * unlimited.memory.peak_reserved_bytes / (1 << 30)
    result = run_trial(small(**{"workload.steps": 1}, device_memory_gb=capacity_gb))
    assert result.status == "oom"
    assert result.failed_phase in PHASES
    assert result.message
    assert result.memory is not None


def test_unknown_model_is_an_error_result(tmp_path):
    result = run_trial(small(**{"model.actor": str(tmp_path / "missing-model")}))
    assert result.status == "error"
    assert "does not exist" in result.message


def test_result_is_written_atomically(tmp_path):
    result = plan_trial(small())
    out = tmp_path / "sub" / "result.json"
    write_result(result, out)
    assert TrialResult.load(out) == result
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]


REWARD_RISE = {"workload.steps": 50, "workload.batch_size": 8, "workload.gen_len": 8, "workload.prompt_len": 4}


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "ppo_epochs"), [("ppo", 4), ("grpo", 1)])
def test_reward_rises_over_fifty_steps(algorithm, ppo_epochs):
    # PPO needs several passes over each batch to move within 50 iterations (one pass: 0.14 -> 0.19)
    cfg = TrialConfig().replace(algorithm=algorithm, **REWARD_RISE, **{"workload.ppo_epochs": ppo_epochs})
    result = run_trial(cfg)
    assert result.status == "ok", result.message
    first = sum(result.reward_curve[:10]) / 10
    assert first < 0.2    # a random policy hits the top eighth of the vocabulary
    assert result.reward > first + 0.25, result.reward_curve


@pytest.mark.slow
def test_zero2_with_optimizer_offload_runs_through_deepspeed():
    plain = run_trial(small())
    zero2 = run_trial(small(**{"memory.zero_stage": 2}))
    offload = run_trial(small(**{"memory.zero_stage": 2, "memory.offload_optimizer": True}))
    for result in (zero2, offload):
        assert result.status == "ok", result.message
        assert "deepspeed" in result.versions
        assert result.reward_curve == pytest.approx(plain.reward_curve)
    # by the second generation the optimizer state exists; offloaded, it is off the device
    def generation_peak(result) -> int:
        return result.memory.phase("generation").peak_allocated_bytes

    assert generation_peak(offload) < generation_peak(zero2)
    assert generation_peak(offload) < generation_peak(plain)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_other_zero_stages_run_through_deepspeed(stage):
    result = run_trial(small(**{"memory.zero_stage": stage, "optimizer.name": "frugal",
                                "optimizer.partition.placement": "top"}))
    assert result.status == "ok", result.message
    assert "deepspeed" in result.versions


def test_stage_0_never_imports_deepspeed():
    code = ("import sys; from autotune.config import TrialConfig; from autotune.rlhf.trial import run_trial; "
            "r = run_trial(TrialConfig().replace(**{'workload.steps': 1, 'workload.gen_len': 2})); "
            "print(r.status, 'deepspeed' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.split() == ["ok", "False"], proc.stderr[-2000:]


def test_deepspeed_config_follows_the_memory_policy():
    cfg = small(**{"memory.zero_stage": 3, "memory.offload_optimizer": True, "model.dtype": "bfloat16"})
    ds = deepspeed_config(cfg, micro_batch=4, hidden_size=128)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["reduce_bucket_size"] == 128 * 128
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == 4
    plain = deepspeed_config(small(**{"memory.zero_stage": 1}), micro_batch=4, hidden_size=128)
    assert "offload_optimizer" not in plain["zero_optimization"]


def test_allocator_env_is_set_for_cuda_trials_and_never_overrides_the_callers(monkeypatch):
    cfg = TrialConfig().replace(device="cuda", **{"memory.allocator.expandable_segments": True})
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    apply_allocator_env(cfg.replace(device="cpu"))
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ
    apply_allocator_env(cfg)
    # the primary name for newer PyTorch, the older one for older PyTorch
    assert os.environ["PYTORCH_ALLOC_CONF"] == os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")   # the launcher's or the user's
    apply_allocator_env(cfg)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64"
    assert "PYTORCH_ALLOC_CONF" not in os.environ
