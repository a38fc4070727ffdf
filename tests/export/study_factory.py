"""Trial records with hand-picked figures, and an Optuna study on disk stored the way the tuner stores one."""
from __future__ import annotations

from pathlib import Path

from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport, PhaseMemory
from autotune.result import USER_ATTR_CONFIG, USER_ATTR_REASON, USER_ATTR_RESULT, TrialRecord, TrialResult

OBJECTIVES = ["peak_reserved_gb", "reward"]
GiB = 1 << 30


def make_record(number: int, *, reserved_gib: float, allocated_gib: float, reward: float | None,
                status: str = "ok", feasible: bool = True, reason: str | None = None,
                memory_source: str = "", reward_source: str = "") -> TrialRecord:
    """A trial whose actor_train phase holds the whole-run peak and generation half of it."""
    phases = (
        PhaseMemory(name="generation", peak_allocated_bytes=int(allocated_gib * GiB) // 2,
                    peak_reserved_bytes=int(reserved_gib * GiB) // 2, end_allocated_bytes=0,
                    end_reserved_bytes=0, wall_time_s=0.1),
        PhaseMemory(name="actor_train", peak_allocated_bytes=int(allocated_gib * GiB),
                    peak_reserved_bytes=int(reserved_gib * GiB), end_allocated_bytes=0,
                    end_reserved_bytes=0, wall_time_s=0.2),
    )
    memory = MemoryReport(backend="cpu", phases=phases, peak_allocated_bytes=int(allocated_gib * GiB),
                          peak_reserved_bytes=int(reserved_gib * GiB))
    curve = (0.0, 0.25, 0.5) if reward is not None else ()
    result = TrialResult(config_hash=f"h{number}", status=status, backend="cpu", memory=memory,
                         reward=reward, reward_curve=curve, step_time_s=0.05 if reward is not None else None,
                         initial_reward=0.1 if reward is not None else None,
                         message="" if status == "ok" else f"{status} in actor_train",
                         memory_source=memory_source, reward_source=reward_source)
    config = TrialConfig().replace(**{"memory.zero_stage": number % 3})
    return TrialRecord(number=number, config=config, result=result, feasible=feasible, advisor_reason=reason,
                       objectives={"peak_reserved_gb": reserved_gib})


def tiny_study() -> list[TrialRecord]:
    """Five trials: two on the front, one dominated, one OOM and one prescreened."""
    return [
        make_record(0, reserved_gib=2.0, allocated_gib=1.5, reward=0.5, reason="baseline",
                    memory_source="llama-1b, planned (simulator)", reward_source="smollm2-135m proxy, 8 steps"),
        make_record(1, reserved_gib=1.0, allocated_gib=0.75, reward=0.4, reason="empty_cache after generation"),
        make_record(2, reserved_gib=3.0, allocated_gib=2.0, reward=0.3),
        make_record(3, reserved_gib=4.0, allocated_gib=4.0, reward=None, status="oom", feasible=False),
        make_record(4, reserved_gib=0.0, allocated_gib=0.0, reward=None, status="prescreened", feasible=False),
    ]


def make_study(name: str, storage: str, records: list[TrialRecord]) -> None:
    """Write `records` as trials of a new study: ok ones COMPLETE with their objectives, others FAIL."""
    import optuna
    from optuna.trial import TrialState

    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "maximize"])
    study.set_user_attr("autotune.objectives", OBJECTIVES)
    for record in records:
        trial = study.ask()
        trial.set_user_attr(USER_ATTR_CONFIG, record.config.to_dict())
        trial.set_user_attr(USER_ATTR_RESULT, record.result.to_dict())
        if record.advisor_reason:
            trial.set_user_attr(USER_ATTR_REASON, record.advisor_reason)
        if record.result.ok and record.result.reward is not None:
            study.tell(trial, [record.result.memory.peak_reserved_gb, record.result.reward])
        else:
            study.tell(trial, state=TrialState.FAIL)
