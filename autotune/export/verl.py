"""verl 0.9: Hydra overrides for `python -m verl.trainer.main_ppo`. verl trains with FSDP, not DeepSpeed.

Every key is composed against verl's own packaged ppo_trainer.yaml in tests/export/test_targets.py;
the facts behind each mapping (with file and line) are in docs/EXPORT_TARGETS.md.
"""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import frugal_models, fsdp_rotation_warnings, partition_files, unexpressed
from autotune.export.output import ExportOutput

OVERRIDES_FILE = "verl_overrides.txt"
# The module verl imports in every worker (model.external_lib) and names as optimizer_impl for FRUGAL.
FRUGAL_HOOK = "autotune.export.verl_hook"
_MODEL_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_ACTOR, _REF = "actor_rollout_ref.actor", "actor_rollout_ref.ref"


def _engine(cfg: TrialConfig, prefix: str) -> dict[str, object]:
    """The FSDP engine keys of one trained model (`prefix` is its fsdp config node)."""
    m = cfg.memory
    return {
        # ZeRO-0: a full replica per GPU; ZeRO-1/2: shard, but keep parameters gathered after forward
        # (SHARD_GRAD_OP, like ZeRO-2); ZeRO-3: reshard after forward (FULL_SHARD).
        f"{prefix}.fsdp_size": 1 if m.zero_stage == 0 else -1,
        f"{prefix}.reshard_after_forward": m.zero_stage == 3,
        f"{prefix}.model_dtype": _MODEL_DTYPE[cfg.model.dtype],
        # ZeRO-Offload keeps the state and the update on the CPU: that is FSDP2's offload_policy.
        # verl's optimizer_offload moves the state back to the GPU for every update.
        f"{prefix}.offload_policy": m.offload_optimizer,
        f"{prefix}.param_offload": False,
        f"{prefix}.optimizer_offload": False,
        # FRUGAL's partition needs the original parameters, which FSDP1 keeps only with use_orig_params.
        f"{prefix}.use_orig_params": True,
    }


def verl_overrides(cfg: TrialConfig) -> dict[str, object]:
    """Hydra key -> value, every key one that verl 0.9's ppo_trainer.yaml defines."""
    m, w = cfg.memory, cfg.workload
    frugal = frugal_models(cfg)
    strategy = "fsdp2" if m.offload_optimizer else "fsdp"    # offload_policy exists only under FSDP2
    out: dict[str, object] = {
        "algorithm.adv_estimator": "gae" if cfg.algorithm == "ppo" else "grpo",
        "data.train_batch_size": w.batch_size,
        "data.max_prompt_length": w.prompt_len,
        "data.max_response_length": w.gen_len,
        "actor_rollout_ref.model.enable_gradient_checkpointing": m.actor_gradient_checkpointing,
        f"{_ACTOR}.strategy": strategy,
        f"{_ACTOR}.ppo_micro_batch_size_per_gpu": w.micro_batch,
        f"{_ACTOR}.ppo_epochs": w.ppo_epochs,
        f"{_ACTOR}.optim.lr": w.actor_lr,
        f"{_ACTOR}.optim.weight_decay": cfg.optimizer.weight_decay,
        f"{_ACTOR}.optim.betas": [cfg.optimizer.beta1, cfg.optimizer.beta2],
        **_engine(cfg, f"{_ACTOR}.fsdp_config"),
        f"{_REF}.fsdp_config.model_dtype": _MODEL_DTYPE[cfg.model.dtype],
    }
    if cfg.algorithm == "grpo":
        out["actor_rollout_ref.rollout.n"] = w.group_size
    if "actor" in frugal:
        out["actor_rollout_ref.model.external_lib"] = FRUGAL_HOOK
        out[f"{_ACTOR}.optim.optimizer_impl"] = FRUGAL_HOOK
        out[f"{_ACTOR}.optim.optimizer"] = "FRUGAL"
    if cfg.algorithm == "ppo":
        out.update({
            "critic.model.enable_gradient_checkpointing": m.critic_gradient_checkpointing,
            "critic.strategy": strategy,
            "critic.ppo_micro_batch_size_per_gpu": w.micro_batch,
            "critic.ppo_epochs": w.ppo_epochs,
            "critic.optim.lr": w.critic_lr,
            "critic.optim.weight_decay": cfg.optimizer.weight_decay,
            "critic.optim.betas": [cfg.optimizer.beta1, cfg.optimizer.beta2],
            **_engine(cfg, "critic.fsdp"),
        })
        if "critic" in frugal:
            out["critic.model.external_lib"] = FRUGAL_HOOK
            out["critic.optim.optimizer_impl"] = FRUGAL_HOOK
            out["critic.optim.optimizer"] = "FRUGAL"
    return out


def _warnings(cfg: TrialConfig) -> list[str]:
    m = cfg.memory
    out = []
    if m.offload_optimizer:
        out.append("memory.offload_optimizer=true: exported as FSDP2 offload_policy (strategy=fsdp2), which keeps "
                   "optimizer state and update on the CPU like ZeRO-Offload but also offloads the parameters; "
                   "verl's optimizer_offload is not an equivalent (it moves the state back to the GPU for each update)")
    if not m.offload_reference:
        out.append("memory.offload_reference=false: verl always keeps the reference model's parameters on the CPU "
                   "(FSDP1 CPUOffload / FSDP2 CPUOffloadPolicy for forward-only models); "
                   "the trial kept it on the device")
    if m.offload_reward:
        out.append("memory.offload_reward=true: verl 0.9 serves a reward model through a rollout engine "
                   "(reward.reward_model.rollout.*) with no FSDP param_offload; size it with "
                   "reward.reward_model.rollout.gpu_memory_utilization instead")
    if cfg.model.dtype != "float32":
        out.append(f"model.dtype={cfg.model.dtype}: exported as fsdp_config.model_dtype; verl computes the forward "
                   "under autocast to fsdp_config.mixed_precision.param_dtype (bf16 unless you set it)")
    else:
        out.append("model.dtype=float32: verl computes the forward under bf16 autocast unless "
                   "fsdp_config.mixed_precision.param_dtype=fp32 is set; the trial ran in fp32 throughout")
    if frugal_models(cfg):
        out.append(f"FRUGAL in verl: the exported model.external_lib={FRUGAL_HOOK} must be importable in every Ray "
                   "worker (pip install autotune there) and AUTOTUNE_FRUGAL_PARTITION must give the absolute path of "
                   "frugal_partition.yaml in the workers' environment (docs/EXPORT_TARGETS.md, verl)")
    return out


def to_verl(cfg: TrialConfig) -> ExportOutput:
    """verl_overrides.txt (one `key=value` per line) plus the FRUGAL partition."""
    lines = [f"{key}={_hydra(value)}" for key, value in verl_overrides(cfg).items()]
    files = {OVERRIDES_FILE: "\n".join(lines) + "\n"}
    files.update(partition_files(cfg))
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing",
                 "critic_gradient_checkpointing", "offload_reference", "offload_reward", "frugal"}
    warnings = _warnings(cfg) + fsdp_rotation_warnings(cfg) + unexpressed(cfg, "verl", expressed)
    return ExportOutput(files=files, warnings=tuple(warnings))


def _hydra(value: object) -> str:
    # Hydra parses lowercase true/false as booleans; Python's str(True) would be a string.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    return str(value)
