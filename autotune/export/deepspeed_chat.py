"""DeepSpeed-Chat: flags for step 3 (`training/step3_rlhf_finetuning/main.py`), PPO only."""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import partition_files, unexpressed
from autotune.export.output import ExportOutput

ARGS_FILE = "deepspeed_chat.args"
_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def deepspeed_chat_flags(cfg: TrialConfig) -> list[str]:
    """Step-3 flags; store_true flags appear only when on."""
    m, w = cfg.memory, cfg.workload
    flags = [
        f"--actor_zero_stage {m.zero_stage}",
        f"--critic_zero_stage {m.zero_stage}",
        f"--dtype {_DTYPE[cfg.model.dtype]}",
        f"--per_device_training_batch_size {w.micro_batch}",
        f"--ppo_epochs {w.ppo_epochs}",
        f"--max_answer_seq_len {w.gen_len}",
        f"--max_prompt_seq_len {w.prompt_len}",
        f"--actor_learning_rate {w.actor_lr}",
        f"--critic_learning_rate {w.critic_lr}",
    ]
    switches = (
        ("--offload", m.offload_optimizer),
        ("--offload_reference_model", m.offload_reference),
        ("--actor_gradient_checkpointing", m.actor_gradient_checkpointing),
        ("--critic_gradient_checkpointing", m.critic_gradient_checkpointing),
        # The cache is released by the hybrid engine, so the flag needs it switched on.
        ("--enable_hybrid_engine", _releases_generation_cache(cfg)),
        ("--release_inference_cache", _releases_generation_cache(cfg)),
    )
    return flags + [flag for flag, on in switches if on]


def _releases_generation_cache(cfg: TrialConfig) -> bool:
    return "generation" in cfg.memory.empty_cache_after


def to_deepspeed_chat(cfg: TrialConfig) -> ExportOutput:
    """deepspeed_chat.args, one flag per line. DeepSpeed-Chat builds its own AdamW, so FRUGAL is a warning."""
    header = "# DeepSpeed-Chat step-3 flags from autotune; append to your main.py command line\n"
    files = {ARGS_FILE: header + "\n".join(deepspeed_chat_flags(cfg)) + "\n"}
    files.update(partition_files(cfg))
    warnings = []
    if cfg.algorithm != "ppo":
        warnings.append(f"algorithm={cfg.algorithm}: DeepSpeed-Chat runs PPO only; the memory flags still apply")
    other = sorted(set(cfg.memory.empty_cache_after) - {"generation"})
    if other:
        warnings.append(f"memory.empty_cache_after includes {other}: DeepSpeed-Chat releases only the "
                        "generation cache; call torch.cuda.empty_cache() after those phases yourself")
    if cfg.memory.offload_optimizer:
        warnings.append("--offload offloads the optimizer state of both actor and critic")
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing",
                 "critic_gradient_checkpointing", "offload_reference", "empty_cache_after"}
    warnings += unexpressed(cfg, "DeepSpeed-Chat", expressed)
    return ExportOutput(files=files, warnings=tuple(warnings))
