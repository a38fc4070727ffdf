"""Exporters: golden files per format, acceptance by the real libraries, and no silent drops.

Regenerate the golden files after an intended change with `AUTOTUNE_UPDATE_GOLDEN=1 pytest tests/export`.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import pytest

from autotune.config import AllocatorConfig, PartitionSpec, TrialConfig
from autotune.errors import ConfigError
from autotune.export import FORMATS, export_config
from autotune.export.features import FEATURES, PARTITION_FILE
from autotune import schema

GOLDEN = Path(__file__).parent / "golden"
WARNINGS_FILE = "warnings.txt"

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

# A config per feature in autotune.export.features, with only that feature on.
FEATURE_OVERRIDES = {
    "zero_stage": {"memory.zero_stage": 3},
    "offload_optimizer": {"memory.zero_stage": 1, "memory.offload_optimizer": True},
    "actor_gradient_checkpointing": {"memory.actor_gradient_checkpointing": True},
    "critic_gradient_checkpointing": {"memory.critic_gradient_checkpointing": True},
    "offload_reference": {"memory.offload_reference": True},
    "offload_reward": {"memory.offload_reward": True},
    "empty_cache_after": {"memory.empty_cache_after": ["experience"]},
    "static_kv_cache": {"memory.static_kv_cache": True},
    "allocator": {"memory.allocator.expandable_segments": True},
    "memory_fraction": {"memory.allocator.memory_fraction": 0.5},
    "frugal": {"optimizer.name": "frugal"},
}

# OpenRLHF 0.11 dotted flags for train_ppo_ray, as documented (DESIGN.md, "Ecosystem facts");
# openrlhf itself needs a GPU stack and is not installed here.
OPENRLHF_0_11_FLAGS = {"--ds.zero_stage", "--ds.adam_offload", "--actor.gradient_checkpointing_enable",
                       "--ref.offload", "--reward.offload"}
# DeepSpeed-Chat step3_rlhf_finetuning/main.py argparse flags (DeepSpeedExamples, 2023+).
DEEPSPEED_CHAT_FLAGS = {"--actor_zero_stage", "--critic_zero_stage", "--dtype", "--per_device_training_batch_size",
                        "--ppo_epochs", "--max_answer_seq_len", "--max_prompt_seq_len", "--actor_learning_rate",
                        "--critic_learning_rate", "--offload", "--offload_reference_model",
                        "--actor_gradient_checkpointing", "--critic_gradient_checkpointing",
                        "--enable_hybrid_engine", "--release_inference_cache"}
# verl trainer config keys (verl/trainer/config/ppo_trainer.yaml) used by the exporter.
VERL_KEYS = {"algorithm.adv_estimator", "actor_rollout_ref.model.enable_gradient_checkpointing",
             "actor_rollout_ref.actor.fsdp_config.fsdp_size", "critic.model.fsdp_config.fsdp_size",
             "actor_rollout_ref.actor.fsdp_config.param_offload", "actor_rollout_ref.actor.fsdp_config.optimizer_offload",
             "actor_rollout_ref.ref.fsdp_config.param_offload", "actor_rollout_ref.actor.optim.optimizer_impl",
             "actor_rollout_ref.actor.optim.optimizer", "critic.model.enable_gradient_checkpointing",
             "critic.model.fsdp_config.param_offload", "critic.model.fsdp_config.optimizer_offload",
             "reward_model.model.fsdp_config.param_offload"}


def _flags(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_matches_golden_files(fmt: str) -> None:
    out = export_config(GOLDEN_CONFIG, fmt)
    files = {**out.files, WARNINGS_FILE: "".join(w + "\n" for w in out.warnings)}
    folder = GOLDEN / fmt
    if os.environ.get("AUTOTUNE_UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    expected = {p.name: p.read_text() for p in folder.iterdir()}
    assert files == expected


def test_unknown_format_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        export_config(TrialConfig(), "megatron")
    assert "megatron" in str(err.value)
    assert all(fmt in str(err.value) for fmt in FORMATS)


@pytest.mark.parametrize("feature", [f.name for f in FEATURES])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_setting_is_carried_or_warned_about_never_dropped(fmt: str, feature: str) -> None:
    base = export_config(TrialConfig(), fmt)
    on = export_config(TrialConfig().replace(**FEATURE_OVERRIDES[feature]), fmt)
    assert on.files != base.files or len(on.warnings) > len(base.warnings)


def test_every_feature_has_a_test_config() -> None:
    assert set(FEATURE_OVERRIDES) == {f.name for f in FEATURES}


# -- DeepSpeed --------------------------------------------------------------------------------
DS_CASES = {
    "stage0-fp32-adamw": TrialConfig(),
    "golden": GOLDEN_CONFIG,
    "stage3-fp16-ref-offload": TrialConfig().replace(**{"model.dtype": "float16", "memory.zero_stage": 3,
                                                        "memory.offload_reference": True}),
}


@pytest.mark.parametrize("case", DS_CASES)
def test_deepspeed_json_is_accepted_by_deepspeed(case: str, caplog: pytest.LogCaptureFixture) -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    ds_constants = pytest.importorskip("deepspeed.runtime.constants")
    from deepspeed.runtime.zero.config import ZERO_OPTIMIZATION

    cfg = DS_CASES[case]
    known = {v for v in vars(ds_constants).values() if isinstance(v, str)} | {ZERO_OPTIMIZATION}
    for name, text in export_config(cfg, "deepspeed").files.items():
        if not name.endswith(".json"):
            continue
        data = json.loads(text)
        assert set(data) <= known, f"{name}: keys DeepSpeed does not know: {set(data) - known}"
        with caplog.at_level(logging.WARNING):
            parsed = ds_config.DeepSpeedConfig(data)   # sub-sections forbid unknown keys (pydantic)
        assert not [r for r in caplog.records if "unknown" in r.getMessage().lower()]
        if name == "ds_config.json":
            assert parsed.zero_optimization_stage == cfg.memory.zero_stage
            assert parsed.bfloat16_config.enabled == (cfg.model.dtype == "bfloat16")
            assert parsed.float16_config.enabled == (cfg.model.dtype == "float16")
            offload = parsed.zero_config.offload_optimizer
            assert (offload is not None and offload.device == "cpu") == cfg.memory.offload_optimizer
            assert parsed.train_micro_batch_size_per_gpu == cfg.workload.micro_batch


def test_deepspeed_frugal_asks_zero_to_accept_a_client_optimizer() -> None:
    data = json.loads(export_config(GOLDEN_CONFIG, "deepspeed").files["ds_config.json"])
    assert "optimizer" not in data                      # FRUGAL is passed to deepspeed.initialize
    assert data["zero_allow_untested_optimizer"] is True
    assert data["zero_force_ds_cpu_optimizer"] is False
    critic = json.loads(export_config(GOLDEN_CONFIG, "deepspeed").files["ds_config_critic.json"])
    assert critic["optimizer"]["type"] == "AdamW"
    assert critic["optimizer"]["params"]["lr"] == GOLDEN_CONFIG.workload.critic_lr


# -- TRL ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", DS_CASES)
def test_trl_fields_build_a_grpo_config(case: str, tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    import yaml

    cfg = DS_CASES[case]
    out = export_config(cfg, "trl")
    out.write(tmp_path)
    fields = yaml.safe_load(out.files["grpo_config.yaml"])
    if fields["deepspeed"]:
        fields["deepspeed"] = str(tmp_path / fields["deepspeed"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)    # no deprecated field names
        # use_cpu only because this test machine has no GPU for bf16; it is not part of the export.
        grpo = trl.GRPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **fields)
    assert grpo.activation_checkpointing == cfg.memory.actor_gradient_checkpointing
    assert grpo.num_generations == cfg.workload.group_size
    assert (grpo.deepspeed is not None) == cfg.memory.needs_deepspeed
    assert grpo.torch_empty_cache_steps == (1 if cfg.memory.empty_cache_after else None)


def test_trl_accelerate_yaml_loads_in_accelerate(tmp_path: Path) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    out = export_config(GOLDEN_CONFIG, "trl")
    out.write(tmp_path)
    loaded = config_args.ClusterConfig.from_yaml_file(str(tmp_path / "accelerate.yaml"))
    assert str(loaded.distributed_type) in ("DEEPSPEED", "DistributedType.DEEPSPEED")
    assert loaded.deepspeed_config["deepspeed_config_file"] == "ds_config.json"
    assert str(loaded.mixed_precision) in ("bf16", "PrecisionType.BF16")


# -- OpenRLHF, verl, DeepSpeed-Chat: documented flag and key lists --------------------------------
def test_openrlhf_uses_only_documented_0_11_flags() -> None:
    flags = _flags(export_config(GOLDEN_CONFIG, "openrlhf").files["openrlhf.args"])
    assert set(flags) <= OPENRLHF_0_11_FLAGS
    assert {"--ds.adam_offload", "--actor.gradient_checkpointing_enable", "--ref.offload"} <= set(flags)
    assert "--ds.zero_stage 2" in export_config(GOLDEN_CONFIG, "openrlhf").files["openrlhf.args"]
    assert "--reward.offload" not in flags


def test_deepspeed_chat_uses_step3_flags() -> None:
    text = export_config(GOLDEN_CONFIG, "deepspeed-chat").files["deepspeed_chat.args"]
    assert set(_flags(text)) <= DEEPSPEED_CHAT_FLAGS
    assert {"--offload", "--offload_reference_model", "--release_inference_cache", "--enable_hybrid_engine"} <= set(
        _flags(text))
    grpo = export_config(GOLDEN_CONFIG.replace(algorithm="grpo"), "deepspeed-chat")
    assert any("PPO only" in w for w in grpo.warnings)


def test_verl_overrides_are_known_keys_with_hydra_booleans() -> None:
    text = export_config(GOLDEN_CONFIG, "verl").files["verl_overrides.txt"]
    pairs = dict(line.split("=", 1) for line in text.splitlines())
    assert set(pairs) <= VERL_KEYS
    assert pairs["actor_rollout_ref.actor.fsdp_config.optimizer_offload"] == "true"
    assert pairs["actor_rollout_ref.ref.fsdp_config.param_offload"] == "true"
    assert pairs["actor_rollout_ref.actor.optim.optimizer_impl"] == "autotune.optim"
    assert pairs["algorithm.adv_estimator"] == "gae"


def test_rotating_frugal_is_a_warning_for_fsdp_stacks_only() -> None:
    rotating = TrialConfig().replace(**{"optimizer.name": "frugal"})
    fixed = rotating.replace(**{"optimizer.partition.placement": "top"})
    assert any("FSDP flattens parameters" in w for w in export_config(rotating, "verl").warnings)
    assert not any("flattens parameters" in w for w in export_config(fixed, "verl").warnings)
    for fmt in ("deepspeed", "trl", "openrlhf"):   # stage 0 keeps tensors whole; rotate + ZeRO is an invalid config
        assert not any("flattens parameters" in w for w in export_config(rotating, fmt).warnings)


def test_zero3_is_a_warning_where_a_stack_lacks_stages() -> None:
    stage1 = TrialConfig().replace(**{"memory.zero_stage": 1})
    assert any("no stage 1 or 2" in w for w in export_config(stage1, "verl").warnings)


# -- env and yaml ----------------------------------------------------------------------------------
def test_env_line_parses_back_to_the_allocator_config() -> None:
    text = export_config(GOLDEN_CONFIG, "env").files["autotune.env"]
    line = next(l for l in text.splitlines() if l.startswith("export PYTORCH_CUDA_ALLOC_CONF="))
    parsed = AllocatorConfig.from_env_string(line.split("=", 1)[1])
    assert parsed == GOLDEN_CONFIG.memory.allocator
    assert "generation:" in text and "actor_train:" in text


def test_yaml_round_trips_the_full_config(tmp_path: Path) -> None:
    export_config(GOLDEN_CONFIG, "yaml").write(tmp_path)
    assert TrialConfig.load(tmp_path / "trial.yaml") == GOLDEN_CONFIG


def test_partition_spec_travels_and_rebuilds(tmp_path: Path) -> None:
    out = export_config(GOLDEN_CONFIG, "openrlhf")
    out.write(tmp_path)
    assert schema.load_yaml(PartitionSpec, tmp_path / PARTITION_FILE) == GOLDEN_CONFIG.optimizer.partition
    assert PARTITION_FILE not in export_config(TrialConfig(), "openrlhf").files   # AdamW: nothing to carry


def test_exported_partition_rebuilds_the_same_groups_in_a_training_script(tmp_path: Path) -> None:
    optim = pytest.importorskip("autotune.optim")
    transformers = pytest.importorskip("transformers")
    cfg = GOLDEN_CONFIG.replace(**{"optimizer.partition.placement": "top"})
    export_config(cfg, "deepspeed").write(tmp_path)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=64))
    spec = schema.load_yaml(PartitionSpec, tmp_path / PARTITION_FILE)   # what the README's Export snippet does
    rebuilt = optim.partition(model, spec)
    direct = optim.partition(model, cfg.optimizer.partition)
    as_ids = lambda groups: [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])  # noqa: E731
                             for g in groups]
    assert as_ids(rebuilt) == as_ids(direct)
    assert any(g.get("statefull") is False for g in rebuilt)   # density 0.5 of 4 layers: some are state-free
