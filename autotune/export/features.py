"""The memory settings a target may or may not express, as one table.

Each exporter names the features it carries; `unexpressed` turns every other feature that the
config switches on into a warning. A new intervention added here is therefore reported by every
exporter until each one learns it: nothing is dropped silently.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import yaml

from autotune import schema
from autotune.config import TrialConfig
from autotune.export.output import ExportOutput

PARTITION_FILE = "frugal_partition.yaml"


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One setting: when it is on, how to name it, and what to do by hand where a target lacks it."""

    name: str
    is_on: Callable[[TrialConfig], bool]
    describe: Callable[[TrialConfig], str]
    hint: str


FEATURES: tuple[Feature, ...] = (
    Feature(name="zero_stage", is_on=lambda c: c.memory.zero_stage > 0,
            describe=lambda c: f"memory.zero_stage={c.memory.zero_stage}",
            hint="shard optimizer state with the target's own ZeRO/FSDP setting"),
    Feature(name="offload_optimizer", is_on=lambda c: c.memory.offload_optimizer,
            describe=lambda c: "memory.offload_optimizer=true",
            hint="use the target's optimizer-offload setting (DeepSpeed ZeRO-Offload)"),
    Feature(name="actor_gradient_checkpointing", is_on=lambda c: c.memory.actor_gradient_checkpointing,
            describe=lambda c: "memory.actor_gradient_checkpointing=true",
            hint="call actor.gradient_checkpointing_enable() in the training script"),
    Feature(name="critic_gradient_checkpointing",
            is_on=lambda c: c.algorithm == "ppo" and c.memory.critic_gradient_checkpointing,
            describe=lambda c: "memory.critic_gradient_checkpointing=true",
            hint="call critic.gradient_checkpointing_enable() in the training script"),
    Feature(name="offload_reference", is_on=lambda c: c.memory.offload_reference,
            describe=lambda c: "memory.offload_reference=true",
            hint="keep the reference model on the CPU and move it in for the experience phase only"),
    Feature(name="offload_reward", is_on=lambda c: c.memory.offload_reward,
            describe=lambda c: "memory.offload_reward=true",
            hint="keep the reward model on the CPU and move it in for the experience phase only"),
    Feature(name="empty_cache_after", is_on=lambda c: bool(c.memory.empty_cache_after),
            describe=lambda c: f"memory.empty_cache_after={list(c.memory.empty_cache_after)}",
            hint="call torch.cuda.empty_cache() after those phases (see --format env)"),
    Feature(name="static_kv_cache", is_on=lambda c: c.memory.static_kv_cache,
            describe=lambda c: "memory.static_kv_cache=true",
            hint="generate with a preallocated cache: generate(..., cache_implementation='static')"),
    Feature(name="allocator", is_on=lambda c: bool(c.memory.allocator.to_env_string()),
            describe=lambda c: f"PYTORCH_ALLOC_CONF={c.memory.allocator.to_env_string()}",
            hint="export it in the launch environment before CUDA starts (see --format env)"),
    Feature(name="memory_fraction", is_on=lambda c: c.memory.allocator.memory_fraction is not None,
            describe=lambda c: f"memory.allocator.memory_fraction={c.memory.allocator.memory_fraction}",
            hint="call torch.cuda.set_per_process_memory_fraction() at start-up (see --format env)"),
    Feature(name="frugal", is_on=lambda c: bool(frugal_models(c)),
            describe=lambda c: f"FRUGAL optimizer for the {' and '.join(frugal_models(c))}",
            hint=f"build it with autotune.optim.partition from {PARTITION_FILE} "
                 "(docs/EXPORT_TARGETS.md, Rebuilding FRUGAL)"),
)
FEATURE_NAMES = frozenset(f.name for f in FEATURES)


def frugal_models(cfg: TrialConfig) -> tuple[str, ...]:
    """The trained models whose optimizer is FRUGAL ('actor', 'critic'); the critic only under PPO."""
    models = []
    if cfg.optimizer.name == "frugal":
        models.append("actor")
    if cfg.algorithm == "ppo" and cfg.optimizer.critic == "frugal":
        models.append("critic")
    return tuple(models)


def unexpressed(cfg: TrialConfig, stack: str, expressed: frozenset[str] | set[str]) -> list[str]:
    """One warning per feature that is on in `cfg` but missing from `expressed`.

    Raises:
        KeyError: `expressed` names a feature that does not exist (a bug in the exporter).
    """
    unknown = set(expressed) - FEATURE_NAMES
    if unknown:
        raise KeyError(f"unknown export features: {sorted(unknown)}")
    return [f"{f.describe(cfg)}: {stack} has no setting for it; {f.hint}"
            for f in FEATURES if f.name not in expressed and f.is_on(cfg)]


def partition_files(cfg: TrialConfig) -> dict[str, str]:
    """The FRUGAL PartitionSpec as YAML, when any trained model uses FRUGAL; else nothing."""
    models = frugal_models(cfg)
    if not models:
        return {}
    header = (f"# FRUGAL partition for the {' and '.join(models)} (autotune.config.PartitionSpec).\n"
              "# Rebuild: autotune.optim.partition(model, schema.load_yaml(PartitionSpec, this_file))\n")
    body = yaml.safe_dump(schema.to_dict(cfg.optimizer.partition), sort_keys=False)
    return {PARTITION_FILE: header + body}


def args_file_export(cfg: TrialConfig, *, file: str, header: str, flags: list[str], stack: str,
                     expressed: set[str], warnings: list[str]) -> ExportOutput:
    """An export for a stack configured by command-line flags (DeepSpeed-Chat, OpenRLHF).

    Args:
        cfg: the trial's config.
        file: the argument file's name; it holds `header` (a comment line) and then one flag a line.
        header: the file's first line, with its `#` and newline.
        flags: the flags, each with its value.
        stack: the stack's name in the warnings.
        expressed: the features (`FEATURES` names) the flags carry.
        warnings: the exporter's own warnings; one for each feature not expressed follows them.
    """
    files = {file: header + "\n".join(flags) + "\n"}
    files.update(partition_files(cfg))
    return ExportOutput(files=files, warnings=tuple(warnings + unexpressed(cfg, stack, expressed)))


def fsdp_rotation_warnings(cfg: TrialConfig) -> list[str]:
    """A warning when a rotating FRUGAL partition goes to a stack that always shards with FSDP.

    FRUGAL's `rotate` groups need one tensor per block; FSDP replaces a group's tensors by one flat
    buffer, so there only a fixed partition (explicit `layers`, or top/bottom/spread) works. Under
    ZeRO the same combination is already an invalid TrialConfig, so only FSDP stacks need this.
    """
    if not (cfg.optimizer.partition.rotates and frugal_models(cfg)):
        return []
    return ["optimizer.partition.placement=rotate: FSDP flattens parameters, which a rotating FRUGAL "
            "partition cannot use; pick explicit layers or placement top/bottom/spread for this stack"]
