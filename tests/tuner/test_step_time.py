"""The step-time model: each phase moves the way its stated rule says, on hand-made shapes (no model built)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.tuner import step_time
from autotune.tuner.step_time import RECOMPUTE_SHARE, ModelShape, predict

SHAPE = ModelShape(params=1_000_000_000, layers=16, hidden=2048, vocab=32000, kv_dim=512)
SHAPES = {"llama-1b": SHAPE}
BASE = TrialConfig().replace(**{"model.actor": "llama-1b", "model.dtype": "bfloat16"})


def _p(**changes: object) -> step_time.StepTimePrediction:
    return predict(BASE.replace(**changes), "A100-80", shapes=SHAPES)


def test_checkpointing_is_slower_by_the_stated_share_of_training() -> None:
    plain = _p()
    actor = _p(**{"memory.actor_gradient_checkpointing": True})
    both = _p(**{"memory.actor_gradient_checkpointing": True, "memory.critic_gradient_checkpointing": True})
    assert plain.recompute_s == 0
    # actor and critic have the same shape here, so each holds half of the training compute
    assert actor.total_s - plain.total_s == pytest.approx(RECOMPUTE_SHARE * plain.train_s / 2)
    assert both.total_s - plain.total_s == pytest.approx(RECOMPUTE_SHARE * plain.train_s)
    assert both.total_s > actor.total_s > plain.total_s


def test_decoding_reads_the_weights_for_every_token() -> None:
    short, long = _p(**{"workload.gen_len": 16}), _p(**{"workload.gen_len": 64})
    weights_read_s = SHAPE.params * 2 / (2039e9 * step_time.BANDWIDTH_EFFICIENCY)
    assert short.decode_s >= 16 * weights_read_s and long.decode_s >= 64 * weights_read_s
    assert long.decode_s > 4 * short.decode_s * 0.99    # and the KV cache grows with the context


def test_ppo_epochs_scale_training_and_updates_not_generation() -> None:
    four, eight = _p(**{"workload.ppo_epochs": 4}), _p(**{"workload.ppo_epochs": 8})
    assert eight.train_s == pytest.approx(2 * four.train_s)
    assert eight.optimizer_s == pytest.approx(2 * four.optimizer_s)
    assert eight.generation_s == pytest.approx(four.generation_s)


def test_frugal_state_free_share_moves_fewer_bytes_than_adamw() -> None:
    adamw = _p()
    frugal = _p(**{"optimizer.name": "frugal", "optimizer.critic": "frugal", "optimizer.partition.density": 0.0})
    assert 0 < frugal.optimizer_s < adamw.optimizer_s
    offloaded = _p(**{"memory.offload_optimizer": True, "memory.zero_stage": 2})
    assert offloaded.transfer_s > 0 and offloaded.optimizer_s > adamw.optimizer_s   # host updates are slower


def test_offloaded_models_are_copied_over_pcie_once_per_iteration() -> None:
    moved = _p(**{"memory.offload_reference": True}).transfer_s - _p().transfer_s
    assert moved == pytest.approx(SHAPE.params * 2 / 25e9)


def test_zero_collectives_need_more_than_one_rank_and_empty_cache_costs_calls() -> None:
    assert _p(**{"memory.zero_stage": 2}).collective_s == 0
    two = _p(**{"memory.zero_stage": 2, "world_size": 2})
    three = _p(**{"memory.zero_stage": 3, "world_size": 2})
    assert 0 < two.collective_s < three.collective_s
    cached = _p(**{"memory.empty_cache_after": ("generation", "experience")})
    assert cached.empty_cache_s == pytest.approx(2 * step_time.CALLS_PER_EMPTY_CACHE * step_time.DEVICE_CALL_S)
    counted = predict(BASE, "A100-80", shapes=SHAPES, device_calls=30)
    assert counted.empty_cache_s == pytest.approx(30 * step_time.DEVICE_CALL_S)


def test_device_classes_named_chosen_and_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _p().device == "A100-80" and _p().label == "predicted (A100-80)"
    assert predict(BASE, "H100-80", shapes=SHAPES).total_s < _p().total_s
    assert step_time.device_for_budget(24).name == "RTX-3090" and step_time.device_for_budget(80).name == "A100-80"
    with pytest.raises(ConfigError, match="unknown device class 'TPU'"):
        step_time.device("TPU")
    extra = tmp_path / "devices.yaml"
    extra.write_text("MyCard: {bf16_tflops: 100, fp32_tflops: 10, hbm_gb_s: 1000, pcie_gb_s: 20, memory_gib: 32, "
                     "interconnect_gb_s: 20}\n")
    monkeypatch.setattr(step_time, "DEVICES", dict(step_time.DEVICES))   # the added class leaves with the test
    monkeypatch.setenv(step_time.ENV_DEVICES, str(extra))
    assert step_time.device("MyCard").memory_gib == 32
    extra.write_text("Bad: {bf16_tflops: 100}\n")
    with pytest.raises(ConfigError, match="needs exactly"):
        step_time.device("Bad")
