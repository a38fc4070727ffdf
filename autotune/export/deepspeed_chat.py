"""DeepSpeed-Chat: flags for step 3 (`training/step3_rlhf_finetuning/main.py`), PPO only.

DeepSpeed-Chat is not on the package index. Its flags and start-up checks are kept as a table with
file and line at a pinned commit (docs/EXPORT_TARGETS.md, `DSCHAT_FLAGS` below), and the tests hold
every exported flag set to that table.
"""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import args_file_export
from autotune.export.output import ExportOutput

ARGS_FILE = "deepspeed_chat.args"
DSCHAT_COMMIT = "45b4b7156c8794a3452a5a7d03dbd8d797068569"   # deepspeedai/DeepSpeedExamples, 2026-03-29
MAIN_PY = "applications/DeepSpeed-Chat/training/step3_rlhf_finetuning/main.py"
# Step-3 flags autotune may write: name -> (kind, allowed values or None, main.py line).
DSCHAT_FLAGS: dict[str, tuple[str, tuple[str, ...] | None, int]] = {
    "--per_device_generation_batch_size": ("int", None, 111),
    "--per_device_training_batch_size": ("int", None, 118),
    "--ppo_epochs": ("int", None, 129),
    "--max_prompt_seq_len": ("int", None, 133),
    "--max_answer_seq_len": ("int", None, 137),
    "--actor_learning_rate": ("float", None, 142),
    "--critic_learning_rate": ("float", None, 148),
    "--actor_weight_decay": ("float", None, 153),
    "--critic_weight_decay": ("float", None, 157),
    "--seed": ("int", None, 189),
    "--enable_hybrid_engine": ("store_true", None, 206),
    "--release_inference_cache": ("store_true", None, 218),
    "--offload": ("store_true", None, 237),
    "--dtype": ("str", ("fp16", "bf16"), 240),
    "--offload_reference_model": ("store_true", None, 246),
    "--offload_reward_model": ("store_true", None, 249),
    "--actor_zero_stage": ("int", None, 253),
    "--critic_zero_stage": ("int", None, 258),
    "--actor_gradient_checkpointing": ("store_true", None, 263),
    "--critic_gradient_checkpointing": ("store_true", None, 267),
}
_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}


def deepspeed_chat_flags(cfg: TrialConfig) -> list[str]:
    """Step-3 flags; store_true flags appear only when on."""
    m, w = cfg.memory, cfg.workload
    flags = [f"--actor_zero_stage {m.zero_stage}", f"--critic_zero_stage {m.zero_stage}"]
    if cfg.model.dtype in _DTYPE:
        flags.append(f"--dtype {_DTYPE[cfg.model.dtype]}")
    flags += [
        f"--per_device_generation_batch_size {w.batch_size}",
        f"--per_device_training_batch_size {w.micro_batch}",
        f"--ppo_epochs {w.ppo_epochs}",
        f"--max_answer_seq_len {w.gen_len}",
        f"--max_prompt_seq_len {w.prompt_len}",
        f"--actor_learning_rate {w.actor_lr}",
        f"--critic_learning_rate {w.critic_lr}",
        f"--actor_weight_decay {cfg.optimizer.weight_decay}",
        f"--critic_weight_decay {cfg.optimizer.weight_decay}",
        f"--seed {w.seed}",
    ]
    # The reference and reward models are ZeRO-offloaded only when their stage is 3 (rlhf_engine.py
    # sets stage 0 below it, where offload_param does nothing).
    switches = (
        ("--offload", m.offload_optimizer),
        ("--offload_reference_model", m.offload_reference and m.zero_stage == 3),
        ("--offload_reward_model", m.offload_reward and m.zero_stage == 3),
        ("--actor_gradient_checkpointing", m.actor_gradient_checkpointing),
        ("--critic_gradient_checkpointing", m.critic_gradient_checkpointing),
    )
    return flags + [flag for flag, on in switches if on]


def _warnings(cfg: TrialConfig) -> list[str]:
    m = cfg.memory
    out = []
    if cfg.algorithm != "ppo":
        out.append(f"algorithm={cfg.algorithm}: DeepSpeed-Chat runs PPO only; the memory flags still apply")
    if cfg.model.dtype == "float32":
        out.append("model.dtype=float32: DeepSpeed-Chat's --dtype takes fp16 or bf16 only; --dtype is left out, "
                   "so it trains in its default fp16, with less memory than the trial measured")
    if m.empty_cache_after:
        out.append(f"memory.empty_cache_after={list(m.empty_cache_after)}: DeepSpeed-Chat frees the generation cache "
                   "only through its hybrid engine (--enable_hybrid_engine --release_inference_cache), which swaps "
                   "in DeepSpeed's inference kernels for generation and is refused at start-up with ZeRO-2 + "
                   "--offload without LoRA; not exported. Call get_accelerator().empty_cache() after those phases "
                   "in DeepSpeedPPOTrainer (generate_experience / train_rlhf) instead")
    if m.offload_optimizer:
        out.append("--offload offloads the optimizer state of both actor and critic")
        if m.zero_stage == 3:
            out.append("--offload at ZeRO-3 also offloads the trained parameters (offload_param in ds_utils.py "
                       "get_train_ds_config), which the trial did not; set offload_param device to 'none' there "
                       "to match it")
    for on, flag, what in ((m.offload_reference, "--offload_reference_model", "offload_reference"),
                           (m.offload_reward, "--offload_reward_model", "offload_reward")):
        if on and m.zero_stage != 3:
            out.append(f"memory.{what}=true: DeepSpeed-Chat's {flag} acts only at ZeRO-3 (below it that model "
                       "runs at stage 0 and the flag does nothing); not exported")
    return out


def to_deepspeed_chat(cfg: TrialConfig) -> ExportOutput:
    """deepspeed_chat.args, one flag per line. DeepSpeed-Chat builds its own Adam, so FRUGAL is a warning."""
    header = "# DeepSpeed-Chat step-3 flags from autotune; append to your main.py command line\n"
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing",
                 "critic_gradient_checkpointing", "offload_reference", "offload_reward", "empty_cache_after"}
    return args_file_export(cfg, file=ARGS_FILE, header=header, flags=deepspeed_chat_flags(cfg), stack="DeepSpeed-Chat",
                            expressed=expressed, warnings=_warnings(cfg))
