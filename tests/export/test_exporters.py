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

from autotune import schema
from autotune.config import AllocatorConfig, PartitionSpec, TrialConfig
from autotune.errors import ConfigError
from autotune.export import FORMATS, export_config
from autotune.export.deepspeed_chat import DSCHAT_FLAGS
from autotune.export.features import FEATURES, PARTITION_FILE
from tests.export.configs import CASES, GOLDEN_CONFIG, ZERO3_FRUGAL_CONFIG

GOLDEN = Path(__file__).parent / "golden"
WARNINGS_FILE = "warnings.txt"

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
    # verl offloads the reference model whatever the config, so there the default is what warns.
    assert on.files != base.files or on.warnings != base.warnings


def test_every_feature_has_a_test_config() -> None:
    assert set(FEATURE_OVERRIDES) == {f.name for f in FEATURES}


# -- DeepSpeed --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_deepspeed_json_is_accepted_by_deepspeed(case: str, caplog: pytest.LogCaptureFixture) -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    ds_constants = pytest.importorskip("deepspeed.runtime.constants")
    from deepspeed.runtime.zero.config import ZERO_OPTIMIZATION

    cfg = CASES[case]
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


def test_deepspeed_json_carries_the_trials_buckets_not_deepspeeds_defaults() -> None:
    pytest.importorskip("transformers")
    zero = json.loads(export_config(GOLDEN_CONFIG, "deepspeed").files["ds_config.json"])["zero_optimization"]
    hidden = 128                                     # llama-tiny
    assert zero["reduce_bucket_size"] == hidden * hidden == zero["allgather_bucket_size"]
    assert zero["stage3_param_persistence_threshold"] == 10 * hidden
    assert "stage3_prefetch_bucket_size" in zero


def test_deepspeed_frugal_asks_zero_to_accept_a_client_optimizer() -> None:
    data = json.loads(export_config(GOLDEN_CONFIG, "deepspeed").files["ds_config.json"])
    assert "optimizer" not in data                      # FRUGAL is passed to deepspeed.initialize
    assert data["zero_allow_untested_optimizer"] is True
    assert data["zero_force_ds_cpu_optimizer"] is False
    critic = json.loads(export_config(GOLDEN_CONFIG, "deepspeed").files["ds_config_critic.json"])
    assert critic["optimizer"]["type"] == "AdamW"
    assert critic["optimizer"]["params"]["lr"] == GOLDEN_CONFIG.workload.critic_lr
    assert critic["optimizer"]["params"]["torch_adam"] is True     # torch.optim.AdamW, as the trial used


# -- TRL ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_trl_fields_build_a_grpo_config(case: str, tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    import yaml

    cfg = CASES[case]
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


def test_trl_accelerate_yaml_has_no_mixed_precision_next_to_a_deepspeed_file() -> None:
    import yaml

    with_ds = yaml.safe_load(export_config(GOLDEN_CONFIG, "trl").files["accelerate.yaml"])
    assert with_ds["deepspeed_config"]["deepspeed_config_file"] == "ds_config.json"
    assert "mixed_precision" not in with_ds            # precision travels in ds_config.json ("auto")
    plain = yaml.safe_load(export_config(TrialConfig().replace(**{"model.dtype": "bfloat16"}), "trl")
                           .files["accelerate.yaml"])
    assert plain["mixed_precision"] == "bf16" and plain["distributed_type"] == "NO"


# -- DeepSpeed-Chat: held to the cited table of its main.py ------------------------------------------
def _dschat_args(cfg: TrialConfig) -> dict[str, str | None]:
    text = export_config(cfg, "deepspeed-chat").files["deepspeed_chat.args"]
    lines = [line.split(maxsplit=1) for line in text.splitlines() if line and not line.startswith("#")]
    return {parts[0]: (parts[1] if len(parts) > 1 else None) for parts in lines}


@pytest.mark.parametrize("case", CASES)
def test_deepspeed_chat_flags_hold_to_main_py(case: str) -> None:
    args = _dschat_args(CASES[case])
    for flag, value in args.items():
        assert flag in DSCHAT_FLAGS, f"{flag} is not a step-3 main.py flag"
        kind, choices, _line = DSCHAT_FLAGS[flag]
        assert (value is None) == (kind == "store_true"), flag
        if kind in ("int", "float"):
            {"int": int, "float": float}[kind](value)
        if choices is not None:
            assert value in choices, f"{flag} {value}: main.py allows only {choices}"
    # main.py:391-394 raises at start-up on this combination.
    refused = (args.get("--actor_zero_stage") == "2" and args.get("--critic_zero_stage") == "2"
               and "--enable_hybrid_engine" in args and "--offload" in args)
    assert not refused
    # --release_inference_cache only acts inside the hybrid engine (ds_utils.py get_train_ds_config).
    assert ("--release_inference_cache" in args) <= ("--enable_hybrid_engine" in args)


def test_deepspeed_chat_fp32_and_sub_zero3_offloads_become_warnings() -> None:
    args = _dschat_args(GOLDEN_CONFIG)
    assert "--offload_reference_model" not in args      # ZeRO-2: it would do nothing
    assert "--enable_hybrid_engine" not in args
    assert args["--per_device_generation_batch_size"] == str(GOLDEN_CONFIG.workload.batch_size)
    warnings_ = export_config(GOLDEN_CONFIG, "deepspeed-chat").warnings
    assert any("--offload_reference_model acts only at ZeRO-3" in w for w in warnings_)
    assert any("hybrid engine" in w for w in warnings_)
    fp32 = export_config(TrialConfig(), "deepspeed-chat")
    assert "--dtype" not in fp32.files["deepspeed_chat.args"]
    assert any("--dtype takes fp16 or bf16 only" in w for w in fp32.warnings)
    zero3 = _dschat_args(ZERO3_FRUGAL_CONFIG)
    assert {"--offload_reference_model", "--offload_reward_model", "--offload"} <= set(zero3)
    assert any("also offloads the trained parameters" in w
               for w in export_config(ZERO3_FRUGAL_CONFIG, "deepspeed-chat").warnings)
    grpo = export_config(GOLDEN_CONFIG.replace(algorithm="grpo"), "deepspeed-chat")
    assert any("PPO only" in w for w in grpo.warnings)


# -- OpenRLHF and verl: what the export decides (the targets' own code checks it in test_targets.py) ----
def test_openrlhf_offloads_frozen_models_only_at_zero3() -> None:
    golden = export_config(GOLDEN_CONFIG, "openrlhf")
    assert "--ref.offload" not in golden.files["openrlhf.args"]
    assert any("--ref.offload acts only with --ds.zero_stage 3" in w for w in golden.warnings)
    assert any("also checkpoints the critic" in w for w in golden.warnings)
    assert any("--train.colocate_all" in w for w in golden.warnings)
    zero3 = export_config(ZERO3_FRUGAL_CONFIG, "openrlhf").files["openrlhf.args"]
    assert "--ref.offload" in zero3 and "--reward.offload" in zero3
    assert "--ds.param_dtype" not in zero3                   # fp32 has no OpenRLHF choice ...
    assert any("--ds.param_dtype bf16 or fp16" in w for w in export_config(ZERO3_FRUGAL_CONFIG, "openrlhf").warnings)


def _verl_pairs(cfg: TrialConfig) -> dict[str, str]:
    text = export_config(cfg, "verl").files["verl_overrides.txt"]
    return dict(line.split("=", 1) for line in text.splitlines())


def test_verl_maps_zero_stages_and_offload_to_fsdp() -> None:
    pairs = _verl_pairs(GOLDEN_CONFIG)
    assert pairs["actor_rollout_ref.actor.fsdp_config.reshard_after_forward"] == "false"   # ZeRO-2-like
    assert pairs["actor_rollout_ref.actor.fsdp_config.optimizer_offload"] == "false"
    assert pairs["actor_rollout_ref.actor.fsdp_config.offload_policy"] == "true"
    assert pairs["actor_rollout_ref.actor.strategy"] == "fsdp2"
    assert pairs["actor_rollout_ref.actor.optim.optimizer_impl"] == "autotune.export.verl_hook"
    assert pairs["critic.optim.lr"] == str(GOLDEN_CONFIG.workload.critic_lr)
    assert not any(key.startswith("reward_model.") for key in pairs)
    assert not any("no stage 1 or 2" in w for w in export_config(GOLDEN_CONFIG, "verl").warnings)
    assert _verl_pairs(ZERO3_FRUGAL_CONFIG)["critic.fsdp.reshard_after_forward"] == "true"
    assert any("reward.reward_model.rollout" in w for w in export_config(ZERO3_FRUGAL_CONFIG, "verl").warnings)


def test_rotating_frugal_is_a_warning_for_fsdp_stacks_only() -> None:
    rotating = TrialConfig().replace(**{"optimizer.name": "frugal"})
    fixed = rotating.replace(**{"optimizer.partition.placement": "top"})
    assert any("FSDP flattens parameters" in w for w in export_config(rotating, "verl").warnings)
    assert not any("flattens parameters" in w for w in export_config(fixed, "verl").warnings)
    for fmt in ("deepspeed", "trl", "openrlhf"):   # stage 0 keeps tensors whole; rotate + ZeRO is an invalid config
        assert not any("flattens parameters" in w for w in export_config(rotating, fmt).warnings)


# -- env and yaml ----------------------------------------------------------------------------------
def test_env_line_parses_back_to_the_allocator_config() -> None:
    text = export_config(GOLDEN_CONFIG, "env").files["autotune.env"]
    line = next(row for row in text.splitlines() if row.startswith("export PYTORCH_ALLOC_CONF="))
    assert "export PYTORCH_CUDA_ALLOC_CONF" not in text      # deprecated name in newer PyTorch
    assert "set_expandable_segments" in text
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
