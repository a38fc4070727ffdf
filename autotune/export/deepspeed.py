"""DeepSpeed JSON: the very config the trial passed to `deepspeed.initialize`, one file per trained model.

The ZeRO section comes from `autotune.rlhf.zero.deepspeed_config`, the function the trial itself calls,
so the exported buckets, thresholds and flags are the ones that were measured. Only one thing is
added: an `optimizer` section for a model that trained with AdamW, so the file also launches on its
own (`torch_adam: true` makes DeepSpeed build `torch.optim.AdamW`, the optimizer the trial passed).
FRUGAL is never in the JSON: it is a client optimizer (docs/EXPORT_TARGETS.md, "Export to your training stack").
"""
from __future__ import annotations

import json

from autotune.config import TrialConfig
from autotune.export.features import frugal_models, partition_files, unexpressed
from autotune.export.output import ExportOutput


def model_hidden_size(cfg: TrialConfig, model: str = "actor") -> int:
    """The hidden size of the trained model ('actor' or 'critic'): the trial sizes ZeRO buckets from it."""
    from autotune.rlhf.models import model_config  # transformers: only exports that need a bucket size

    name = cfg.model.actor if model == "actor" else cfg.model.critic_name
    return int(model_config(name).hidden_size)


def ds_config(cfg: TrialConfig, model: str = "actor", *, hf_auto: bool = False) -> dict:
    """The DeepSpeed config dict for one trained model ('actor' or 'critic').

    Args:
        cfg: the trial config.
        model: which trained model; it picks the learning rate, the optimizer and the hidden size.
        hf_auto: write "auto" where the Hugging Face Trainer fills the value in itself (batch size,
            accumulation, precision), since it refuses a DeepSpeed config that disagrees with its
            arguments; the Trainer then passes its own (client) optimizer.
    """
    from autotune.rlhf.zero import deepspeed_config

    out = deepspeed_config(cfg, micro_batch=cfg.workload.micro_batch, hidden_size=model_hidden_size(cfg, model))
    if hf_auto:
        out.update(train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps="auto")
        out["bf16"] = {"enabled": "auto"}
        out["fp16"] = {"enabled": "auto"}
    elif model not in frugal_models(cfg):
        out["optimizer"] = _adamw_section(cfg, model)
    return out


def _adamw_section(cfg: TrialConfig, model: str) -> dict:
    opt = cfg.optimizer
    lr = cfg.workload.actor_lr if model == "actor" else cfg.workload.critic_lr
    params = {"lr": lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps, "weight_decay": opt.weight_decay,
              # torch.optim.AdamW, as in the trial; otherwise DeepSpeed picks FusedAdam or DeepSpeedCPUAdam.
              "torch_adam": True}
    return {"type": "AdamW", "params": params}


def reference_ds_config(cfg: TrialConfig) -> dict:
    """An inference config for the frozen reference model: ZeRO-3 parameter offload to the CPU."""
    out: dict = {
        "train_micro_batch_size_per_gpu": cfg.workload.micro_batch,
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True}},
    }
    if cfg.model.dtype in ("bfloat16", "float16"):
        out["bf16" if cfg.model.dtype == "bfloat16" else "fp16"] = {"enabled": True}
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
