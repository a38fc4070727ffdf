"""verl: Hydra overrides for `python -m verl.trainer.main_ppo`. verl trains with FSDP, not DeepSpeed."""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import frugal_models, fsdp_rotation_warnings, partition_files, unexpressed
from autotune.export.output import ExportOutput

OVERRIDES_FILE = "verl_overrides.txt"


def verl_overrides(cfg: TrialConfig) -> dict[str, object]:
    """Hydra key -> value.

    FSDP shards parameters, gradients and optimizer state together (like ZeRO-3) over `fsdp_size`
    GPUs; a size of 1 keeps a full replica per GPU (like ZeRO-0).
    """
    m = cfg.memory
    fsdp_size = 1 if m.zero_stage == 0 else -1     # -1: shard over every GPU
    out: dict[str, object] = {
        "algorithm.adv_estimator": "gae" if cfg.algorithm == "ppo" else "grpo",
        "actor_rollout_ref.model.enable_gradient_checkpointing": m.actor_gradient_checkpointing,
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": fsdp_size,
        "actor_rollout_ref.actor.fsdp_config.param_offload": False,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": m.offload_optimizer,
        "actor_rollout_ref.ref.fsdp_config.param_offload": m.offload_reference,
    }
    if "actor" in frugal_models(cfg):
        out["actor_rollout_ref.actor.optim.optimizer_impl"] = "autotune.optim"
        out["actor_rollout_ref.actor.optim.optimizer"] = "FRUGAL"
    if cfg.algorithm == "ppo":
        out["critic.model.enable_gradient_checkpointing"] = m.critic_gradient_checkpointing
        out["critic.model.fsdp_config.fsdp_size"] = fsdp_size
        out["critic.model.fsdp_config.param_offload"] = False
        out["critic.model.fsdp_config.optimizer_offload"] = m.offload_optimizer
    if m.offload_reward:
        out["reward_model.model.fsdp_config.param_offload"] = True
    return out


def to_verl(cfg: TrialConfig) -> ExportOutput:
    """verl_overrides.txt (one `key=value` per line) plus the FRUGAL partition."""
    lines = [f"{key}={_hydra(value)}" for key, value in verl_overrides(cfg).items()]
    files = {OVERRIDES_FILE: "\n".join(lines) + "\n"}
    files.update(partition_files(cfg))
    warnings = []
    if cfg.memory.zero_stage in (1, 2):
        warnings.append(f"memory.zero_stage={cfg.memory.zero_stage}: verl's FSDP shards parameters too "
                        "(like ZeRO-3); it has no stage 1 or 2")
    if "actor" in frugal_models(cfg):
        warnings.append("FRUGAL in verl: verl hands the optimizer model.parameters(), and FRUGAL without "
                        "partition groups keeps state for everything (AdamW); make verl's optimizer builder pass "
                        "autotune.optim.partition(model, spec) instead (README section Export)")
    if "critic" in frugal_models(cfg):
        warnings.append("optimizer.critic=frugal: set critic.optim the same way as the actor's (README section Export)")
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing",
                 "critic_gradient_checkpointing", "offload_reference", "offload_reward", "frugal"}
    warnings += fsdp_rotation_warnings(cfg)
    warnings += unexpressed(cfg, "verl", expressed)
    return ExportOutput(files=files, warnings=tuple(warnings))


def _hydra(value: object) -> str:
    # Hydra parses lowercase true/false as booleans; Python's str(True) would be a string.
    return str(value).lower() if isinstance(value, bool) else str(value)
