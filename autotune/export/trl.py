"""TRL: an accelerate launch YAML plus the `trl.GRPOConfig` fields (trl 1.16, transformers 5)."""
from __future__ import annotations

import json

import yaml

from autotune.config import TrialConfig
from autotune.export.deepspeed import ds_config
from autotune.export.features import partition_files, unexpressed
from autotune.export.output import ExportOutput

DS_FILE = "ds_config.json"
_MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def grpo_fields(cfg: TrialConfig) -> dict[str, object]:
    """Keyword arguments for `trl.GRPOConfig` (besides output_dir) that carry the trial's policy."""
    w, m = cfg.workload, cfg.memory
    return {
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns).
        "activation_checkpointing": m.actor_gradient_checkpointing,
        # TRL empties the cache every N optimizer steps; an RLHF step is one iteration, so N=1 is
        # the closest it gets to "after each phase".
        "torch_empty_cache_steps": 1 if m.empty_cache_after else None,
        "deepspeed": DS_FILE if m.needs_deepspeed else None,
        "cache_implementation": "static" if m.static_kv_cache else None,
        # The trial loads its weights in cfg.model.dtype; bf16/fp16 alone would be fp32 weights under autocast.
        "model_init_kwargs": {"dtype": cfg.model.dtype} if cfg.model.dtype != "float32" else None,
        "bf16": cfg.model.dtype == "bfloat16",
        "fp16": cfg.model.dtype == "float16",
        "learning_rate": w.actor_lr,
        "per_device_train_batch_size": w.micro_batch,
        "generation_batch_size": w.batch_size * w.group_size,
        "num_generations": w.group_size,
        "max_completion_length": w.gen_len,
        "num_iterations": w.ppo_epochs,
        "temperature": w.temperature,
        "beta": w.kl_coef,
        "epsilon": w.clip_ratio,
        "weight_decay": cfg.optimizer.weight_decay,
        "adam_beta1": cfg.optimizer.beta1,
        "adam_beta2": cfg.optimizer.beta2,
        "adam_epsilon": cfg.optimizer.eps,
        "seed": w.seed,
    }


def accelerate_config(cfg: TrialConfig) -> dict[str, object]:
    """An `accelerate launch --config_file` mapping for one process; DeepSpeed only when the trial used it."""
    out: dict[str, object] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED" if cfg.memory.needs_deepspeed else "NO",
        "num_machines": 1,
        "num_processes": 1,
        "machine_rank": 0,
        "main_training_function": "main",
        "use_cpu": False,
    }
    if cfg.memory.needs_deepspeed:
        # With deepspeed_config_file set, `accelerate launch` refuses mixed_precision (and the other
        # ZeRO keys) in this file: precision lives in ds_config.json ("auto", from GRPOConfig bf16/fp16).
        out["deepspeed_config"] = {"deepspeed_config_file": DS_FILE, "zero3_init_flag": cfg.memory.zero_stage == 3}
    else:
        out["mixed_precision"] = _MIXED_PRECISION[cfg.model.dtype]
    return out


def to_trl(cfg: TrialConfig) -> ExportOutput:
    """accelerate.yaml, grpo_config.yaml (GRPOConfig kwargs), ds_config.json when DeepSpeed is on."""
    files = {
        "accelerate.yaml": yaml.safe_dump(accelerate_config(cfg), sort_keys=False),
        "grpo_config.yaml": yaml.safe_dump(grpo_fields(cfg), sort_keys=False),
    }
    if cfg.memory.needs_deepspeed:
        files[DS_FILE] = json.dumps(ds_config(cfg, "actor", hf_auto=True), indent=2) + "\n"
    files.update(partition_files(cfg))
    warnings = []
    if cfg.algorithm == "ppo":
        warnings.append("algorithm=ppo: TRL >= 1.16 ships no PPO trainer; these are GRPOTrainer settings "
                        "(the critic settings do not apply)")
    if cfg.memory.empty_cache_after and set(cfg.memory.empty_cache_after) != {"actor_train"}:
        warnings.append(f"memory.empty_cache_after={list(cfg.memory.empty_cache_after)}: TRL empties the cache "
                        "once per step (torch_empty_cache_steps=1), not at each phase edge")
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing", "empty_cache_after",
                 "static_kv_cache"}
    warnings += unexpressed(cfg, "TRL", expressed)
    return ExportOutput(files=files, warnings=tuple(warnings))
