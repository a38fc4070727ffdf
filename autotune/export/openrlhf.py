"""OpenRLHF 0.11: the dotted command-line flags of `openrlhf.cli.train_ppo_ray` that carry the policy.

Only flags documented for OpenRLHF 0.11 are written (see DESIGN.md, "Ecosystem facts"); every other
setting becomes a warning.
"""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import partition_files, unexpressed
from autotune.export.output import ExportOutput

ARGS_FILE = "openrlhf.args"


def openrlhf_flags(cfg: TrialConfig) -> list[str]:
    """The flags, one per list item; store_true flags appear only when on."""
    m = cfg.memory
    flags = [f"--ds.zero_stage {m.zero_stage}"]
    switches = (
        ("--ds.adam_offload", m.offload_optimizer),
        ("--actor.gradient_checkpointing_enable", m.actor_gradient_checkpointing),
        ("--ref.offload", m.offload_reference),
        ("--reward.offload", m.offload_reward),
    )
    flags += [flag for flag, on in switches if on]
    return flags


def to_openrlhf(cfg: TrialConfig) -> ExportOutput:
    """openrlhf.args (one flag per line, for `$(cat openrlhf.args)`) plus the FRUGAL partition."""
    header = "# OpenRLHF 0.11 flags from autotune; append to your train_ppo_ray command line\n"
    files = {ARGS_FILE: header + "\n".join(openrlhf_flags(cfg)) + "\n"}
    files.update(partition_files(cfg))
    expressed = {"zero_stage", "offload_optimizer", "actor_gradient_checkpointing", "offload_reference",
                 "offload_reward"}
    return ExportOutput(files=files, warnings=tuple(unexpressed(cfg, "OpenRLHF 0.11", expressed)))
