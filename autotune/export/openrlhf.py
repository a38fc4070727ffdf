"""OpenRLHF 0.11: the dotted flags of `openrlhf.cli.train_ppo_ray` that carry the trial's policy.

Every flag here is held to OpenRLHF's own argument parser in tests/export/test_targets.py; the
facts behind each choice (with file and line) are in docs/EXPORT_TARGETS.md.
"""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import partition_files, unexpressed
from autotune.export.output import ExportOutput

ARGS_FILE = "openrlhf.args"
_PARAM_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}   # --ds.param_dtype has no fp32 choice


def openrlhf_flags(cfg: TrialConfig) -> list[str]:
    """The flags, one per list item; store_true flags appear only when on."""
    m, w = cfg.memory, cfg.workload
    flags = [f"--ds.zero_stage {m.zero_stage}"]
    if cfg.model.dtype in _PARAM_DTYPE:
        flags.append(f"--ds.param_dtype {_PARAM_DTYPE[cfg.model.dtype]}")
    flags += [
        f"--train.micro_batch_size {w.micro_batch}",
        # The trial steps the optimizer after every micro-batch; on N GPUs multiply by N.
        f"--train.batch_size {w.micro_batch}",
        f"--rollout.micro_batch_size {w.micro_batch}",
        f"--rollout.batch_size {w.batch_size}",
        f"--rollout.max_new_tokens {w.gen_len}",
        f"--data.max_len {w.prompt_len + w.gen_len}",
        f"--train.max_epochs {w.ppo_epochs}",
        f"--actor.adam.lr {w.actor_lr}",
        f"--critic.adam.lr {w.critic_lr}",
    ]
    if cfg.algorithm == "grpo":
        flags += ["--algo.advantage.estimator group_norm", f"--rollout.n_samples_per_prompt {w.group_size}"]
    # --ref.offload / --reward.offload act only at ZeRO-3 (below it the eval config has stage 0).
    switches = (
        ("--ds.adam_offload", m.offload_optimizer),
        ("--actor.gradient_checkpointing_enable", m.actor_gradient_checkpointing),
        ("--ref.offload", m.offload_reference and m.zero_stage == 3),
        ("--reward.offload", m.offload_reward and m.zero_stage == 3),
    )
    return flags + [flag for flag, on in switches if on]


def _warnings(cfg: TrialConfig) -> list[str]:
    m = cfg.memory
    out = []
    if cfg.model.dtype == "float32":
        out.append("model.dtype=float32: OpenRLHF trains in --ds.param_dtype bf16 or fp16 only (default bf16); "
                   "the trial's fp32 memory is not what OpenRLHF will use")
    for on, flag, what in ((m.offload_reference, "--ref.offload", "offload_reference"),
                           (m.offload_reward, "--reward.offload", "offload_reward")):
        if on and m.zero_stage != 3:
            out.append(f"memory.{what}=true: OpenRLHF's {flag} acts only with --ds.zero_stage 3 (below it the "
                       f"flag does nothing); not exported. Use --ds.zero_stage 3 {flag}, or keep that model on "
                       "other GPUs (--ref.num_gpus_per_node / --reward.num_gpus_per_node)")
    if cfg.algorithm == "ppo" and m.actor_gradient_checkpointing != m.critic_gradient_checkpointing:
        out.append("--actor.gradient_checkpointing_enable also checkpoints the critic (ppo_critic.py reads the "
                   "actor's flag); OpenRLHF cannot checkpoint only one of them, the trial did")
    out.append("colocation: the trial ran every model on one device; for the same footprint pass "
               "--train.colocate_all (or --train.colocate_actor_ref and --train.colocate_critic_reward), "
               "which this export leaves to you because it depends on your GPU count")
    return out


def to_openrlhf(cfg: TrialConfig) -> ExportOutput:
    """openrlhf.args (one flag per line, for `$(grep -v '^#' openrlhf.args)`) plus the FRUGAL partition."""
    header = "# OpenRLHF 0.11 flags from autotune; append to your train_ppo_ray command line\n"
    files = {ARGS_FILE: header + "\n".join(openrlhf_flags(cfg)) + "\n"}
    files.update(partition_files(cfg))
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing", "critic_gradient_checkpointing",
                 "offload_reference", "offload_reward"}
    warnings = _warnings(cfg) + unexpressed(cfg, "OpenRLHF 0.11", expressed)
    return ExportOutput(files=files, warnings=tuple(warnings))
