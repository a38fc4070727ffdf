"""DeepSpeed JSON: ZeRO stage, optimizer offload, precision and the optimizer, one file per trained model."""
from __future__ import annotations

import json

from autotune.config import TrialConfig
from autotune.export.features import frugal_models, partition_files, unexpressed
from autotune.export.output import ExportOutput

_PRECISION_KEY = {"bfloat16": "bf16", "float16": "fp16"}


def ds_config(cfg: TrialConfig, model: str = "actor", *, hf_auto: bool = False) -> dict:
    """The DeepSpeed config dict for one trained model ('actor' or 'critic').

    Args:
        cfg: the trial config.
        model: which trained model; it picks the learning rate and the optimizer.
        hf_auto: write "auto" where the Hugging Face Trainer fills the value in itself (batch size,
            precision, optimizer), since it refuses a DeepSpeed config that disagrees with its arguments.
    """
    out: dict = {
        "train_micro_batch_size_per_gpu": "auto" if hf_auto else cfg.workload.micro_batch,
        "gradient_accumulation_steps": "auto" if hf_auto else 1,
        "zero_optimization": _zero_section(cfg),
    }
    precision = _PRECISION_KEY.get(cfg.model.dtype)
    if precision:
        out[precision] = {"enabled": "auto" if hf_auto else True}
    if model in frugal_models(cfg):
        if cfg.memory.zero_stage > 0:
            # ZeRO refuses a client optimizer it has not been tested with unless told otherwise.
            out["zero_allow_untested_optimizer"] = True
        if cfg.memory.offload_optimizer:
            # Otherwise ZeRO-Offload insists on DeepSpeedCPUAdam and rejects FRUGAL.
            out["zero_force_ds_cpu_optimizer"] = False
    elif not hf_auto:
        out["optimizer"] = _adamw_section(cfg, model)
    return out


def _zero_section(cfg: TrialConfig) -> dict:
    zero: dict = {"stage": cfg.memory.zero_stage}
    if cfg.memory.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.memory.zero_stage == 3:
        # autotune never offloads trained parameters; say so rather than leave DeepSpeed's default implicit.
        zero["offload_param"] = {"device": "none"}
    return zero


def _adamw_section(cfg: TrialConfig, model: str) -> dict:
    opt = cfg.optimizer
    lr = cfg.workload.actor_lr if model == "actor" else cfg.workload.critic_lr
    params = {"lr": lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps, "weight_decay": opt.weight_decay}
    return {"type": "AdamW", "params": params}


def reference_ds_config(cfg: TrialConfig) -> dict:
    """An inference config for the frozen reference model: ZeRO-3 parameter offload to the CPU."""
    out: dict = {
        "train_micro_batch_size_per_gpu": cfg.workload.micro_batch,
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True}},
    }
    precision = _PRECISION_KEY.get(cfg.model.dtype)
    if precision:
        out[precision] = {"enabled": True}
    return out


def to_deepspeed(cfg: TrialConfig) -> ExportOutput:
    """DeepSpeed JSON files for the actor (and the critic under PPO), plus the FRUGAL partition."""
    files = {"ds_config.json": _dump(ds_config(cfg, "actor"))}
    if cfg.algorithm == "ppo":
        files["ds_config_critic.json"] = _dump(ds_config(cfg, "critic"))
    expressed = {"zero_stage", "offload_optimizer"}
    # DeepSpeed offloads a frozen model's parameters only under ZeRO-3, so only then is it a config.
    if cfg.memory.offload_reference and cfg.memory.zero_stage == 3:
        files["ds_config_reference.json"] = _dump(reference_ds_config(cfg))
        expressed.add("offload_reference")
    files.update(partition_files(cfg))
    return ExportOutput(files=files, warnings=tuple(unexpressed(cfg, "DeepSpeed JSON", expressed)))


def _dump(config: dict) -> str:
    return json.dumps(config, indent=2) + "\n"
