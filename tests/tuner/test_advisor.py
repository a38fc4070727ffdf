"""Each advisor rule: given a memory report, it proposes the intended change (and only then)."""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport, PhaseMemory
from autotune.result import TrialRecord, TrialResult
from autotune.tuner import advisor

MiB = 1 << 20


def _phase(name: str, allocated_mib: int, reserved_mib: int) -> PhaseMemory:
    return PhaseMemory(name=name, peak_allocated_bytes=allocated_mib * MiB, peak_reserved_bytes=reserved_mib * MiB,
                       end_allocated_bytes=0, end_reserved_bytes=reserved_mib * MiB, wall_time_s=0.1)


def _record(phases: dict[str, tuple[int, int]], *, status: str = "ok", failed_phase: str | None = None,
            feasible: bool = True, cfg: TrialConfig | None = None) -> TrialRecord:
    ps = tuple(_phase(n, a, r) for n, (a, r) in phases.items())
    report = MemoryReport(backend="cpu", phases=ps, peak_allocated_bytes=max(p.peak_allocated_bytes for p in ps),
                          peak_reserved_bytes=max(p.peak_reserved_bytes for p in ps))
    cfg = cfg or TrialConfig()
    result = TrialResult(config_hash=cfg.config_hash(), status=status,  # type: ignore[arg-type]
                         backend="cpu", memory=report, failed_phase=failed_phase,
                         reward=0.5 if status == "ok" else None)
    return TrialRecord(number=1, config=cfg, result=result, feasible=feasible and status == "ok")


CALM = {"generation": (100, 105), "experience": (100, 105), "actor_train": (100, 105), "critic_train": (90, 95)}


def test_fragmented_generation_gets_empty_cache_after_it() -> None:
    # generation: 60 of 100 MiB reserved were allocated -> 40% fragmentation
    record = _record({**CALM, "generation": (60, 100)})
    proposal = advisor.empty_cache_after_fragmented_generation(record)
    assert proposal is not None
    assert proposal.apply(record.config).memory.empty_cache_after == ("generation",)
    assert "generation" in proposal.reason and "40%" in proposal.reason
    assert advisor.empty_cache_after_fragmented_generation(_record(CALM)) is None
    done = _record({**CALM, "generation": (60, 100)},
                   cfg=TrialConfig().replace(**{"memory.empty_cache_after": ("generation",)}))
    assert advisor.empty_cache_after_fragmented_generation(done) is None


def test_fragmented_run_gets_expandable_segments() -> None:
    record = _record({"generation": (50, 100), "experience": (40, 60)})   # whole run: 1 - 50/100
    proposal = advisor.expandable_segments_when_fragmented(record)
    assert proposal is not None and proposal.apply(record.config).memory.allocator.expandable_segments
    assert advisor.expandable_segments_when_fragmented(_record(CALM)) is None


def test_optimizer_dominated_actor_train_lowers_state_step_by_step() -> None:
    peaks = {**CALM, "actor_train": (300, 320)}
    adamw = _record(peaks, feasible=False)
    first = advisor.shrink_optimizer_state(adamw)
    assert first is not None
    cfg = first.apply(adamw.config)
    assert (cfg.optimizer.name, cfg.optimizer.partition.density) == ("frugal", 0.25)
    second = advisor.shrink_optimizer_state(_record(peaks, feasible=False, cfg=cfg))
    assert second is not None and second.apply(cfg).optimizer.partition.density == 0.125
    zero = cfg.replace(**{"optimizer.partition.density": 0.0, "optimizer.partition.placement": "spread",
                          "memory.zero_stage": 2})
    third = advisor.shrink_optimizer_state(_record(peaks, feasible=False, cfg=zero))
    assert third is not None and third.apply(zero).memory.offload_optimizer
    # under ZeRO the move to FRUGAL takes a static partition, since ZeRO flattens rotating groups
    adamw_zero = _record(peaks, feasible=False, cfg=TrialConfig().replace(**{"memory.zero_stage": 2}))
    to_frugal = advisor.shrink_optimizer_state(adamw_zero)
    assert to_frugal is not None and to_frugal.apply(adamw_zero.config).optimizer.partition.placement == "spread"
    # a comfortable trial, or one whose peak is elsewhere, is left alone
    assert advisor.shrink_optimizer_state(_record(peaks)) is None
    assert advisor.shrink_optimizer_state(_record({**CALM, "experience": (400, 420)}, feasible=False)) is None


def test_critic_train_oom_moves_the_critic_to_frugal() -> None:
    record = _record(CALM, status="oom", failed_phase="critic_train")
    proposal = advisor.shrink_critic_optimizer_state(record)
    assert proposal is not None and "critic" in proposal.reason
    cfg = proposal.apply(record.config)
    assert (cfg.optimizer.critic, cfg.optimizer.name, cfg.optimizer.partition.density) == ("frugal", "adamw", 0.25)
    # with the actor already on FRUGAL at 0.5, the critic shares that partition unchanged
    actor_frugal = TrialConfig().replace(**{"optimizer.name": "frugal", "optimizer.partition.density": 0.5})
    shared = advisor.shrink_critic_optimizer_state(_record(CALM, status="oom", failed_phase="critic_train",
                                                           cfg=actor_frugal))
    assert shared is not None and shared.apply(actor_frugal).optimizer.partition.density == 0.5
    assert advisor.shrink_critic_optimizer_state(_record(CALM, status="oom", failed_phase="actor_train")) is None


def test_oom_in_experience_offloads_reference_and_reward() -> None:
    record = _record(CALM, status="oom", failed_phase="experience")
    proposal = advisor.offload_models_on_experience_oom(record)
    assert proposal is not None
    mem = proposal.apply(record.config).memory
    assert mem.offload_reference and mem.offload_reward
    assert "OOM in experience" in proposal.reason
    assert advisor.offload_models_on_experience_oom(_record(CALM, status="oom", failed_phase="generation")) is None


def test_oom_in_actor_train_checkpoints_the_actor() -> None:
    record = _record(CALM, status="oom", failed_phase="actor_train")
    proposal = advisor.checkpoint_actor_on_train_oom(record)
    assert proposal is not None and proposal.apply(record.config).memory.actor_gradient_checkpointing
    assert advisor.checkpoint_actor_on_train_oom(_record(CALM)) is None


def test_advise_runs_every_rule_and_a_calm_trial_gets_nothing() -> None:
    assert advisor.advise(_record(CALM)) == []
    rules = {p.rule for p in advisor.advise(_record(CALM, status="oom", failed_phase="actor_train"))}
    assert rules == {"shrink_optimizer_state", "checkpoint_actor_on_train_oom"}
