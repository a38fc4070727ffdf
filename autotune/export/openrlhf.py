"""OpenRLHF 0.11: the dotted flags of `openrlhf.cli.train_ppo_ray` that carry the trial's policy.

Every flag here is held to OpenRLHF's own argument parser in tests/export/test_targets.py; the
facts behind each choice (with file and line) are in docs/EXPORT_TARGETS.md.
"""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.export.features import args_file_export
from autotune.export.output import ExportOutput

ARGS_FILE = "openrlhf.args"
_PARAM_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}   # --ds.param_dtype has no fp32 choice


def openrlhf_flags(cfg: TrialConfig, gpus: int | None = None) -> list[str]:
    """The flags, one per list item; store_true flags appear only when on.

    OpenRLHF's `--train.batch_size` and `--rollout.batch_size` are global (over every actor GPU),
    while the trial's batches are per GPU, so both are scaled by `gpus` (default the trial's
    world size), and each model is placed on that many GPUs: `train_ppo_ray.py` asserts that
    samples // rollout micro-batch >= actor GPUs, and its GPU counts default to 8.

    Raises:
        ConfigError: `gpus` is below 1.
    """
    m, w = cfg.memory, cfg.workload
    n = export_gpus(cfg, gpus)
    samples = w.batch_size * (w.group_size if cfg.algorithm == "grpo" else 1)    # sequences per GPU
    flags = [f"--ds.zero_stage {m.zero_stage}"]
    if cfg.model.dtype in _PARAM_DTYPE:
        flags.append(f"--ds.param_dtype {_PARAM_DTYPE[cfg.model.dtype]}")
    flags += [f"--actor.num_gpus_per_node {n}", f"--ref.num_gpus_per_node {n}", f"--reward.num_gpus_per_node {n}"]
    if cfg.algorithm == "ppo":
        flags.append(f"--critic.num_gpus_per_node {n}")
    flags += [
        f"--train.micro_batch_size {w.micro_batch}",
        # The trial steps the optimizer after every micro-batch on each GPU: one micro-batch per GPU.
        f"--train.batch_size {w.micro_batch * n}",
        # per GPU; no larger than a GPU's share of the rollout, else it holds fewer batches than GPUs
        f"--rollout.micro_batch_size {min(w.micro_batch, samples)}",
        f"--rollout.batch_size {w.batch_size * n}",
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


def export_gpus(cfg: TrialConfig, gpus: int | None) -> int:
    """The actor GPU count the flags are written for: `gpus`, else the trial's world size."""
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    return cfg.world_size if gpus is None else gpus


def _warnings(cfg: TrialConfig, gpus: int | None) -> list[str]:
    m = cfg.memory
    out = []
    if gpus is None:
        out.append(f"--gpus not given: the batch flags are global in OpenRLHF and are written for "
                   f"{cfg.world_size} GPU(s) per model, the trial's world size; pass --gpus N for another count")
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


def to_openrlhf(cfg: TrialConfig, gpus: int | None = None) -> ExportOutput:
    """openrlhf.args (one flag per line, for `$(grep -v '^#' openrlhf.args)`) plus the FRUGAL partition.

    Args:
        cfg: the trial's config.
        gpus: GPUs per model (actor data-parallel size) the global batch flags are written for;
            default the trial's world size, which a warning says.
    """
    n = export_gpus(cfg, gpus)
    header = (f"# OpenRLHF 0.11 flags from autotune for {n} GPU(s) per model; append to your train_ppo_ray "
              "command line\n")
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing", "critic_gradient_checkpointing",
                 "offload_reference", "offload_reward"}
    return args_file_export(cfg, file=ARGS_FILE, header=header, flags=openrlhf_flags(cfg, n), stack="OpenRLHF 0.11",
                            expressed=expressed, warnings=_warnings(cfg, gpus))
