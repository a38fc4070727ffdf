"""The advisor: small, named rules that read one trial's per-phase memory and propose a next config.

Each rule is a pure function `(TrialRecord) -> Proposal | None`. The controller applies a
proposal to the trial's config, queues it with `study.enqueue_trial`, and stores the reason in the
new trial's user attributes, so a reviewer sees why the tuner tried it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport
from autotune.result import TrialRecord

# A phase whose reserved peak holds this share of free cache has fragmentation worth releasing.
FRAGMENTED = 0.25
# Within this share of the device, a trial counts as under memory pressure even if it fitted.
PRESSURE = 0.9
_MIN_DENSITY = 0.05


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """A change to try next: dotted-path overrides of the trial's config, and why."""

    rule: str
    overrides: dict[str, object]
    reason: str

    def apply(self, config: TrialConfig) -> TrialConfig:
        return config.replace(**self.overrides)


Rule = Callable[[TrialRecord], "Proposal | None"]


def _pressured(record: TrialRecord) -> bool:
    """Out of memory, pre-screened out, infeasible, or close to the device's capacity."""
    if record.result.status in ("oom", "prescreened") or not record.feasible:
        return True
    capacity, memory = record.config.device_memory_gb, record.result.memory
    return capacity is not None and memory is not None and memory.peak_reserved_gb >= PRESSURE * capacity


def _hot_phase(record: TrialRecord) -> str | None:
    """Where the trial failed, else the phase that set its reserved peak."""
    memory = record.result.memory
    return record.result.failed_phase or (memory.peak_phase if memory is not None else None)


def empty_cache_after_fragmented_generation(record: TrialRecord) -> Proposal | None:
    """Generation leaves its KV-cache churn as free-but-reserved blocks: release them after it."""
    memory: MemoryReport | None = record.result.memory
    phase = memory.phase("generation") if memory is not None else None
    sites = record.config.memory.empty_cache_after
    if phase is None or phase.fragmentation < FRAGMENTED or "generation" in sites:
        return None
    return Proposal(
        rule="empty_cache_after_fragmented_generation",
        overrides={"memory.empty_cache_after": (*sites, "generation")},
        reason=f"generation phase fragmented ({phase.fragmentation:.0%} of its reserved peak unused), "
        "so empty_cache after generation",
    )


def expandable_segments_when_fragmented(record: TrialRecord) -> Proposal | None:
    """Whole-run fragmentation that empty_cache cannot fix needs expandable segments."""
    memory = record.result.memory
    if memory is None or memory.fragmentation < FRAGMENTED or record.config.memory.allocator.expandable_segments:
        return None
    return Proposal(
        rule="expandable_segments_when_fragmented",
        overrides={"memory.allocator.expandable_segments": True},
        reason=f"{memory.fragmentation:.0%} of the reserved peak is fragmentation, so expandable_segments",
    )


def _less_state(cfg: TrialConfig, owner: str) -> tuple[dict[str, object], str] | None:
    """The next step down in optimizer memory for `owner` ("name": the actor, "critic": the critic).

    AdamW -> FRUGAL, then halve the shared partition's density, then ZeRO-Offload the state.
    """
    density = cfg.optimizer.partition.density
    if getattr(cfg.optimizer, owner) == "adamw":
        overrides: dict[str, object] = {f"optimizer.{owner}": "frugal"}
        if cfg.optimizer.name == "adamw":   # the partition is unused so far: start at the paper's 0.25
            overrides.update({"optimizer.partition.layers": None, "optimizer.partition.density": 0.25})
        if cfg.memory.zero_stage > 0 and cfg.optimizer.partition.rotates:
            overrides["optimizer.partition.placement"] = "spread"   # ZeRO flattens groups: no rotation
        start = overrides.get("optimizer.partition.density", density)
        return overrides, f"FRUGAL with density {start:g} instead of AdamW"
    if cfg.optimizer.partition.layers is None and density > 0:
        lower = 0.0 if density / 2 < _MIN_DENSITY else round(density / 2, 4)
        return {"optimizer.partition.density": lower}, f"lower density {density:g} -> {lower:g}"
    if cfg.memory.zero_stage >= 1 and not cfg.memory.offload_optimizer:
        return {"memory.offload_optimizer": True}, "offload optimizer state to the CPU"
    return None


def _shrink_state(record: TrialRecord, *, phase: str, owner: str, rule: str, whose: str = "") -> Proposal | None:
    """The optimizer-state rule for one model: `phase` sets the peak under pressure, so `owner` keeps less."""
    if not _pressured(record) or _hot_phase(record) != phase:
        return None
    step = _less_state(record.config, owner)
    if step is None:
        return None
    overrides, change = step
    return Proposal(rule=rule, overrides=overrides,
                    reason=f"{phase.replace('_', '-')} peak dominated by optimizer state, so {change}{whose}")


def shrink_optimizer_state(record: TrialRecord) -> Proposal | None:
    """Actor training sets the peak under pressure: keep less optimizer state, or move it off the GPU."""
    return _shrink_state(record, phase="actor_train", owner="name", rule="shrink_optimizer_state")


def shrink_critic_optimizer_state(record: TrialRecord) -> Proposal | None:
    """Critic training sets the peak under pressure: the critic's optimizer state is the lever."""
    return _shrink_state(record, phase="critic_train", owner="critic", rule="shrink_critic_optimizer_state",
                         whose=" for the critic")


def offload_models_on_experience_oom(record: TrialRecord) -> Proposal | None:
    """Experience runs four models at once: keep reference and reward on the CPU between uses."""
    mem = record.config.memory
    if not _pressured(record) or _hot_phase(record) != "experience" or (mem.offload_reference and mem.offload_reward):
        return None
    what = "OOM" if record.result.status == "oom" else "memory pressure"
    return Proposal(
        rule="offload_models_on_experience_oom",
        overrides={"memory.offload_reference": True, "memory.offload_reward": True},
        reason=f"{what} in experience, so move the reference and reward models to the CPU",
    )


def checkpoint_actor_on_train_oom(record: TrialRecord) -> Proposal | None:
    """An actor-train OOM is often activations: recompute them instead of storing them."""
    if record.result.status != "oom" or record.result.failed_phase != "actor_train":
        return None
    if record.config.memory.actor_gradient_checkpointing:
        return None
    return Proposal(
        rule="checkpoint_actor_on_train_oom",
        overrides={"memory.actor_gradient_checkpointing": True},
        reason="OOM in actor training, so gradient checkpointing on the actor",
    )


RULES: tuple[Rule, ...] = (
    offload_models_on_experience_oom,
    shrink_optimizer_state,
    shrink_critic_optimizer_state,
    checkpoint_actor_on_train_oom,
    empty_cache_after_fragmented_generation,
    expandable_segments_when_fragmented,
)


def advise(record: TrialRecord, rules: tuple[Rule, ...] = RULES) -> list[Proposal]:
    """Every rule's proposal for `record`, in rule order (most targeted first)."""
    return [p for p in (rule(record) for rule in rules) if p is not None]
