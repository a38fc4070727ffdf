"""Reward runs: the key, the neutral knobs (each proven bit-identical on the CPU), the proxy mapping."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autotune.config import TrialConfig
from autotune.rlhf.reward_run import (
    NEUTRAL_KNOBS,
    RewardOutcome,
    default_proxy,
    map_layers,
    reward_config,
    reward_key,
    run_reward,
)

# Short llama-tiny runs: 3 iterations are enough for optimizer state and the KV cache to matter.
SMALL = {"workload.batch_size": 4, "workload.prompt_len": 4, "workload.gen_len": 8, "workload.steps": 3,
         "workload.group_size": 2, "workload.micro_batch": 2, "workload.ppo_epochs": 2}


def small(**overrides: object) -> TrialConfig:
    return TrialConfig().replace(**{**SMALL, **overrides})


# One non-default setting per neutral knob, in the order of NEUTRAL_KNOBS.
NEUTRAL_SETTINGS = {
    "memory.empty_cache_after": {"memory.empty_cache_after": ("generation", "experience", "actor_train")},
    "memory.allocator": {"memory.allocator.expandable_segments": True, "memory.allocator.max_split_size_mb": 64},
    "memory.actor_gradient_checkpointing": {"memory.actor_gradient_checkpointing": True},
    "memory.critic_gradient_checkpointing": {"memory.critic_gradient_checkpointing": True},
    "memory.offload_reference": {"memory.offload_reference": True},
    "memory.offload_reward": {"memory.offload_reward": True},
    "memory.static_kv_cache": {"memory.static_kv_cache": True},
}


@pytest.fixture(scope="module")
def baseline() -> RewardOutcome:
    outcome = run_reward(small())
    assert outcome.ok, outcome.message
    return outcome


def test_every_neutral_knob_has_a_test():
    assert tuple(NEUTRAL_SETTINGS) == NEUTRAL_KNOBS


@pytest.mark.parametrize("knob", NEUTRAL_KNOBS)
def test_a_neutral_knob_leaves_the_reward_bit_identical(knob, baseline):
    from autotune.rlhf.trial import run_trial

    cfg = small(**NEUTRAL_SETTINGS[knob])
    assert cfg != small()
    # the knob at work under the cpu backend's probe (empty_cache, offload moves and the allocator
    # act on the simulated device), against the reward run without it
    measured = run_trial(cfg)
    assert measured.ok and measured.memory is not None, measured.message
    # exact equality, not approx: the curve, the evaluation and its standard error
    assert measured.reward_curve == baseline.reward_curve
    assert (measured.reward, measured.reward_se, measured.initial_reward) == \
        (baseline.reward, baseline.reward_se, baseline.initial_reward)
    assert reward_key(cfg) == reward_key(small())


def test_the_same_key_gives_an_identical_reward(baseline):
    again = run_reward(small(device_memory_gb=4.0))
    assert again.key == baseline.key
    assert again.to_dict() | {"wall_time_s": 0} == baseline.to_dict() | {"wall_time_s": 0}


def test_the_thread_count_does_not_change_the_reward(baseline):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        other = run_reward(small())
    finally:
        torch.set_num_threads(threads)
    assert (other.reward, other.reward_curve) == (baseline.reward, baseline.reward_curve)


def test_a_reward_run_gets_the_reward_the_measured_trial_gets(baseline):
    from autotune.rlhf.trial import run_trial

    measured = run_trial(small())   # traced by the cpu backend's probe, which the reward run skips
    assert measured.memory is not None
    assert (measured.reward, measured.reward_se, measured.reward_curve) == \
        (baseline.reward, baseline.reward_se, baseline.reward_curve)


def test_the_reward_moves_and_has_a_standard_error(baseline):
    assert len(baseline.reward_curve) == 3
    assert baseline.reward != baseline.initial_reward
    assert 0 < baseline.reward_se < 0.05
    assert 0 <= baseline.reward <= 1


@pytest.mark.parametrize("override", [
    {"optimizer.name": "frugal", "optimizer.partition.density": 0.5},
    {"workload.seed": 1},
    {"memory.zero_stage": 2},
    {"model.dtype": "bfloat16"},
    {"algorithm": "grpo"},
])
def test_a_non_neutral_knob_changes_the_key(override):
    assert reward_key(small(**override)) != reward_key(small())


def test_frugal_density_changes_the_key():
    frugal = {"optimizer.name": "frugal"}
    assert reward_key(small(**frugal, **{"optimizer.partition.density": 0.25})) != \
        reward_key(small(**frugal, **{"optimizer.partition.density": 0.5}))


def test_fields_that_cannot_act_are_not_in_the_key():
    # AdamW everywhere: the partition is never read
    assert reward_key(small(**{"optimizer.partition.density": 0.9})) == reward_key(small())
    # GRPO trains no critic
    assert reward_key(small(algorithm="grpo", **{"optimizer.critic": "frugal", "workload.critic_lr": 0.1})) == \
        reward_key(small(algorithm="grpo"))
    # a rotation window that never moves within the run's 3 x 2 x 2 = 12 optimizer steps
    rot = {"optimizer.name": "frugal", "optimizer.partition.placement": "rotate"}
    assert reward_key(small(**rot, **{"optimizer.partition.update_gap": 200})) == \
        reward_key(small(**rot, **{"optimizer.partition.update_gap": 500}))
    assert reward_key(small(**rot, **{"optimizer.partition.update_gap": 5})) != \
        reward_key(small(**rot, **{"optimizer.partition.update_gap": 500}))


def test_a_static_partition_is_keyed_by_the_layers_it_picks():
    static = {"optimizer.name": "frugal", "optimizer.partition.placement": "top"}
    # llama-tiny has 4 layers: density 0.25 and 0.3 both pick layer 3, which is what runs
    assert reward_key(small(**static, **{"optimizer.partition.density": 0.25})) == \
        reward_key(small(**static, **{"optimizer.partition.density": 0.3})) == \
        reward_key(small(**{"optimizer.name": "frugal", "optimizer.partition.layers": (3,)}))
    assert reward_key(small(**static, **{"optimizer.partition.density": 0.25})) != \
        reward_key(small(**static, **{"optimizer.partition.density": 0.5}))


@pytest.mark.slow
def test_partitions_with_one_key_give_one_reward():
    static = {"optimizer.name": "frugal", "optimizer.partition.placement": "top"}
    by_density = run_reward(small(**static, **{"optimizer.partition.density": 0.3}))
    by_layers = run_reward(small(**{"optimizer.name": "frugal", "optimizer.partition.layers": (3,)}))
    assert by_density.key == by_layers.key
    assert (by_density.reward, by_density.reward_curve) == (by_layers.reward, by_layers.reward_curve)
    # a rotation window that never moves within the run's 12 optimizer steps: one key, one reward
    rot = {"optimizer.name": "frugal", "optimizer.partition.placement": "rotate"}
    gap_200 = run_reward(small(**rot, **{"optimizer.partition.update_gap": 200}))
    gap_12 = run_reward(small(**rot, **{"optimizer.partition.update_gap": 12}))
    assert gap_200.key == gap_12.key
    assert (gap_200.reward, gap_200.reward_curve) == (gap_12.reward, gap_12.reward_curve)


def test_the_key_ignores_the_device_and_is_stable():
    assert reward_key(small(device="fake", device_memory_gb=1.0)) == reward_key(small())
    assert len(reward_key(small())) == 16 and reward_key(small()) == reward_key(small())


def test_reward_config_resets_neutral_knobs_and_keeps_the_key():
    cfg = small(device="fake", device_memory_gb=2.0, **NEUTRAL_SETTINGS["memory.static_kv_cache"],
                **NEUTRAL_SETTINGS["memory.empty_cache_after"])
    run = reward_config(cfg, proxy=None)
    assert run.device == "cpu" and run.device_memory_gb is None
    assert run.memory == TrialConfig().memory
    assert reward_key(run) == reward_key(cfg)


def test_the_proxy_takes_over_every_model_and_maps_explicit_layers():
    cfg = small(**{"model.actor": "llama-1b", "optimizer.name": "frugal",
                   "optimizer.partition.layers": (12, 13, 14, 15)})
    run = reward_config(cfg, proxy="llama-small")
    assert run.model.actor == "llama-small" and run.model.critic is None and run.model.reward is None
    assert run.optimizer.partition.layers == (7, 8, 9)   # the top quarter of 16 -> the top of 10
    dense = small(**{"model.actor": "llama-1b", "optimizer.name": "frugal", "optimizer.partition.density": 0.5,
                     "optimizer.partition.placement": "top"})
    # density and placement carry over: the top half of the proxy's 10 layers
    assert reward_config(dense, proxy="llama-small").optimizer.partition.layers == (5, 6, 7, 8, 9)
    rotating = small(**{"model.actor": "llama-1b", "optimizer.name": "frugal", "optimizer.partition.density": 0.5})
    mapped = reward_config(rotating, proxy="llama-small").optimizer.partition
    assert (mapped.density, mapped.placement, mapped.layers) == (0.5, "rotate", None)


def test_the_default_proxy_maps_a_layer_list_one_to_one():
    cfg = small(**{"model.actor": "llama-1b", "optimizer.name": "frugal", "optimizer.partition.layers": (0, 5)})
    proxy = default_proxy("llama-1b", cuda=False)
    assert reward_config(cfg, proxy=proxy).optimizer.partition.layers == (0, 5)
    other = cfg.replace(**{"optimizer.partition.layers": [1, 4]})
    assert reward_key(reward_config(other, proxy=proxy)) != reward_key(reward_config(cfg, proxy=proxy))


def test_map_layers_keeps_share_and_position():
    assert map_layers((0, 1, 2, 3), n_from=16, n_to=32) == tuple(range(8))
    assert map_layers((15,), n_from=16, n_to=30) == (28, 29)
    assert map_layers((0,), n_from=16, n_to=4) == (0,)
    assert map_layers(tuple(range(16)), n_from=16, n_to=10) == tuple(range(10))


def test_default_proxy_runs_small_models_themselves():
    assert default_proxy("llama-tiny", cuda=False) is None
    assert default_proxy("llama-small", cuda=False) is None
    assert default_proxy("smollm2-135m", cuda=False) is None
    # as deep as the model it stands in for, so partitions map layer for layer
    assert default_proxy("llama-1b", cuda=False) == "llama-tiny-16"
    assert default_proxy("opt-1.3b", cuda=False) == "llama-tiny-24"
    assert default_proxy("llama-1b", cuda=True) is None
    assert default_proxy("llama-1b", cuda=False, task="similarity") == "smollm2-135m"   # needs a tokenizer
    assert default_proxy("llama-1b", cuda=False, task="target-token") == "llama-tiny-16"


def test_several_seeds_average_the_single_seed_runs_and_take_the_se_over_seeds(baseline):
    import statistics

    next_seed = run_reward(small(**{"workload.seed": 1}))
    both = run_reward(small(), seeds=2)
    assert both.ok and both.seeds == 2 and both.label.endswith(", 3 steps, 2 seeds")
    assert both.reward == pytest.approx(statistics.fmean([baseline.reward, next_seed.reward]), abs=1e-12)
    assert both.reward_se == pytest.approx(abs(baseline.reward - next_seed.reward) / 2, abs=1e-12)
    assert both.reward_curve == pytest.approx([(a + b) / 2 for a, b in zip(baseline.reward_curve,
                                                                             next_seed.reward_curve)])
    # a separate cache entry: a one-seed outcome never stands in for a two-seed one
    assert both.key == reward_key(small(), seeds=2) != reward_key(small()) == baseline.key
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        run_reward(small(), seeds=0)
    # each seed's curve point by point, in seed order: what the kept gain is paired on
    assert [p.step for p in both.points] == [0, 1, 2, 3]   # 3 steps: the quarter rounds to 1, the half to 2
    assert [p.seed_rewards for p in both.points][-1] == (baseline.reward, next_seed.reward)
    assert both.points[0].seed_rewards == (baseline.initial_reward, next_seed.initial_reward)
    # the seeds in two processes at once: the same bits
    parallel = run_reward(small(), seeds=2, jobs=2)
    assert parallel.points == both.points and parallel.reward == both.reward and parallel.key == both.key


def test_midway_scores_leave_the_run_bit_identical(baseline):
    from autotune.rlhf.trial import run_trial

    plain = run_trial(small(), measure_memory=False)
    assert plain.reward == baseline.reward and plain.reward_curve == baseline.reward_curve
    assert len(plain.reward_points) == 2 and len(baseline.points) == 4    # the ends only, without eval_steps


def test_outcome_label_and_round_trip(tmp_path):
    outcome = RewardOutcome(key="k", model="llama-small", proxy=True, steps=8, reward=0.2, reward_se=0.01)
    assert outcome.label == "llama-small proxy, 8 steps"
    assert RewardOutcome(key="k", model="llama-tiny", steps=4).label == "llama-tiny, 4 steps"
    outcome.save(tmp_path / "r.json")
    assert RewardOutcome.load(tmp_path / "r.json") == outcome


def test_a_failed_run_is_an_outcome_not_an_exception(tmp_path):
    outcome = run_reward(small(**{"model.actor": str(tmp_path / "missing")}))
    assert outcome.status == "error" and "does not exist" in outcome.message
    assert outcome.reward is None
    # a static partition on an unknown model, or on layers the model lacks: still an outcome
    static = {"optimizer.name": "frugal", "optimizer.partition.placement": "top"}
    assert run_reward(small(**static, **{"model.actor": str(tmp_path / "missing")})).status == "error"
    outcome = run_reward(small(**{"optimizer.name": "frugal", "optimizer.partition.layers": (9,)}))
    assert outcome.status == "error" and "layers" in outcome.message


def test_reward_cli_writes_the_outcome(tmp_path):
    cfg = small(**{"workload.steps": 1})
    (tmp_path / "reward.yaml").write_text(cfg.dump())
    proc = subprocess.run([sys.executable, "-m", "autotune", "reward", "--config", str(tmp_path / "reward.yaml"),
                           "--out", str(tmp_path / "out" / "reward.json"), "--proxy-for", "llama-1b", "--seeds", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = RewardOutcome.from_dict(json.loads((tmp_path / "out" / "reward.json").read_text()))
    assert outcome.ok and outcome.proxy and outcome.seeds == 2 and outcome.key == reward_key(cfg, seeds=2)
    assert "2 seeds" in proc.stderr


@pytest.mark.slow
def test_zero_at_world_size_one_is_not_neutral(baseline):
    # why memory.zero_stage stays in the key: DeepSpeed's engine changes the updates in the last bits
    outcome = run_reward(small(**{"memory.zero_stage": 1}))
    assert outcome.ok, outcome.message
    assert (outcome.reward_curve, outcome.reward) != (baseline.reward_curve, baseline.reward)


@pytest.mark.slow
def test_pretrained_smollm2_reward_moves_in_a_short_cpu_run():
    # The real SmolLM2-135M-Instruct: little mass on the target tokens at first; 4 GRPO iterations move it
    # well past its standard error (0.0122 -> 0.0197, SE 0.0012, when measured; README "The reward").
    cfg = TrialConfig().replace(algorithm="grpo", **{
        "model.actor": "smollm2-135m", "workload.steps": 4, "workload.batch_size": 4, "workload.group_size": 2,
        "workload.gen_len": 8, "workload.ppo_epochs": 2, "workload.micro_batch": 8})
    outcome = run_reward(cfg)
    assert outcome.ok, outcome.message
    assert outcome.initial_reward < 0.05
    assert outcome.reward - outcome.initial_reward > 2 * outcome.reward_se, outcome
