"""The Pareto front of a stored study, as a terminal table and (on request) in MLflow."""
from __future__ import annotations

import io
import logging

from autotune.attrs import STUDY_ATTR_BUDGET
from autotune.errors import NoFeasibleTrialError, TrackingError
from autotune.result import TrialRecord
from autotune.tuner.recommend import Recommendation, pareto_front, recommend_study
from autotune.tuner.study import load_study, records_of, study_dir

log = logging.getLogger(__name__)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def front_table(records: list[TrialRecord], recommendation: Recommendation | None) -> str:
    """The feasible front as a rich table rendered to text; the recommended trial is starred."""
    from rich.console import Console
    from rich.table import Table

    front = pareto_front(records)
    rule = recommendation.rule if recommendation is not None else None
    title = f"Pareto front: {len(front)} of {len(records)} trials"
    if recommendation is not None and recommendation.record not in front:   # fastest looks beyond the front
        front = front + [recommendation.record]
        title += f" (+ the recommended #{recommendation.record.number}, faster though dominated on the objectives)"
    table = Table(title=title,
                  caption="\n".join(filter(None, (_sources_caption(front), _rule_caption(recommendation)))))
    for name in ("#", "reward", "± se", "gain kept", "peak reserved GiB", "fragmentation", "step s", "optimizer",
                 "why tried"):
        table.add_column(name, justify="left" if name in ("optimizer", "why tried") else "right")
    chosen = recommendation.record.number if recommendation is not None else None
    for r in front:
        mem = r.result.memory
        opt = r.config.optimizer
        kept = rule.kept(r) if rule is not None and rule.judged else None
        table.add_row(
            f"{'*' if r.number == chosen else ''}{r.number}", _fmt(r.result.reward, ".4g"),
            _fmt(r.result.reward_se, ".2g"),
            "-" if kept is None or rule is None else f"{kept.describe('.2f')}{'' if rule.keeps(r) else ' (under)'}",
            _fmt(None if mem is None else mem.peak_reserved_gb, ".4g"),
            _fmt(None if mem is None else mem.fragmentation, ".1%"), _fmt(r.result.step_time_s, ".3g"),
            opt.name if opt.name == "adamw" else f"frugal {opt.partition.density:g}", r.advisor_reason or "sampled")
    buffer = io.StringIO()
    Console(file=buffer, width=120, force_terminal=False).print(table)
    return buffer.getvalue().rstrip()


def _rule_caption(recommendation: Recommendation | None) -> str:
    """How rewards were judged: the kept gain against the floor, or why they were not compared."""
    if recommendation is None or recommendation.rule is None or recommendation.record.result.reward is None:
        return ""
    return recommendation.rule.describe()


def _sources_caption(front: list[TrialRecord]) -> str:
    """Where the front's objectives came from, one line per distinct source."""
    memory = sorted({r.result.memory_source for r in front if r.result.memory_source})
    reward = sorted({r.result.reward_source for r in front if r.result.reward_source})
    step = sorted({r.result.step_time_source for r in front if r.result.step_time_source})
    lines = [f"memory: {', '.join(memory)}"] if memory else []
    lines += [f"reward: {'; '.join(reward)}"] if reward else []
    lines += [f"step time: {', '.join(step)}"] if step else []
    return "\n".join(lines) if lines else ""


def _records_and_choice(study_name: str, storage: str | None,
                        budget_gb: float | None) -> tuple[list[TrialRecord], Recommendation | None, float | None]:
    study = load_study(study_name, storage)
    records = records_of(study)
    budget = budget_gb if budget_gb is not None else study.user_attrs.get(STUDY_ATTR_BUDGET)
    try:
        return records, recommend_study(study, records, budget_gb=budget), budget
    except NoFeasibleTrialError as exc:
        log.info("no recommendation: %s", exc)
        return records, None, budget


def render_front(study_name: str, storage: str | None = None, *, budget_gb: float | None = None) -> str:
    """`autotune pareto`: the front of a stored study, with the default policy's choice starred.

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    records, recommendation, _ = _records_and_choice(study_name, storage, budget_gb)
    return front_table(records, recommendation)


def render_by_gpu(study_name: str, storage: str | None = None) -> str:
    """`autotune pareto --by-gpu`: the fastest config that fits each GPU size (autotune.tuner.by_gpu).

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    from autotune.tuner.by_gpu import by_gpu_study, table_text

    return table_text(by_gpu_study(load_study(study_name, storage)))


def log_front(study_name: str, storage: str | None = None, *, tracking_uri: str | None = None,
              budget_gb: float | None = None) -> None:
    """`autotune pareto --log`: hand the study's records and recommendation to the MLflow tracker."""
    from autotune.tracking import StudyTracker
    from autotune.tuner.study import default_storage

    records, recommendation, _ = _records_and_choice(study_name, storage, budget_gb)
    out = study_dir(study_name)
    pareto_json, recommended = out / "pareto.json", out / "recommended.yaml"
    tracker = StudyTracker(study_name=study_name, storage_url=storage or default_storage(study_name),
                           tracking_uri=tracking_uri)
    try:
        tracker.finish_search(records, recommendation, pareto_json if pareto_json.is_file() else None,
                              recommended if recommended.is_file() else None)
    finally:
        tracker.close()
    if tracker.down:   # the tracker warned and stood down: logging the front was the whole command
        raise TrackingError(f"the front was not logged: MLflow at {tracker.tracking_uri} failed (see the warning "
                            "above); run the same command again once it is reachable")
