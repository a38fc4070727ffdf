"""A recommendation for each GPU size, from one study.

With memory planned at full size and rewards shared by reward key, one study already holds what
every card needs: for each card size the `fastest` policy picks, within that size, the quickest
trial that keeps the reward. A trial the study marked infeasible only because its planned peak is
over the study's own budget (``prescreened``, with a reward) competes for the larger cards.

The step times are those of the study (predicted on its device class, or measured); the table
compares each row with the baseline's time on the same basis.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.config import flatten
from autotune.errors import NoFeasibleTrialError
from autotune.result import TrialRecord
from autotune.tracking import knob_labels
from autotune.tuner.recommend import DEFAULT_MIN_KEPT, find_baseline, recommend

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    import optuna

CARD_SIZES_GB = (24.0, 40.0, 48.0, 80.0)   # RTX 3090/4090, A100-40, L40S/A6000, A100/H100-80
_IGNORED = ("workload.seed",)               # keys that differ between trials without being a saver


@dataclass(frozen=True, kw_only=True)
class GpuRow:
    """One card size's recommendation, or why there is none."""

    budget_gb: float
    trial: int | None = None
    savers: tuple[str, ...] = ()            # "key=value" where the config differs from the baseline's
    label: str = ""                         # the config's knobs in short, e.g. "frugal0+critic ckpt offload-ref"
    peak_gb: float | None = None
    step_time_s: float | None = None
    step_time_source: str = ""
    baseline_step_time_s: float | None = None
    reward: float | None = None
    baseline_reward: float | None = None
    kept_gain: float | None = None          # the share of the baseline's reward gain kept (None: not compared)
    kept_gain_se: float | None = None
    keeps_reward: bool | None = None        # passes the non-inferiority test; None where rewards were not compared
    undecided: bool = False                 # keeps the floor on average but not at its lower bound
    note: str = ""                          # "nothing in the space fits: ..." where no trial does

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self) | {"savers": list(self.savers)}


def card_sizes(budget_gb: float | None, extra_gb: tuple[float, ...] = ()) -> list[float]:
    """The common card sizes plus the budget in use (and any `extra_gb`), ascending, each once."""
    return sorted(set(CARD_SIZES_GB) | ({float(budget_gb)} if budget_gb is not None else set())
                  | {float(gb) for gb in extra_gb})


def savers(record: TrialRecord, baseline: TrialRecord | None) -> tuple[str, ...]:
    """Where `record`'s config differs from the baseline's, as "key=value"."""
    if baseline is None:
        return ()
    mine, base = flatten(record.config), flatten(baseline.config)
    return tuple(f"{k}={mine[k]}" for k in mine if k not in _IGNORED and mine[k] != base.get(k))


def _candidates(records: list[TrialRecord]) -> list[TrialRecord]:
    """Records as candidates for any card: a trial prescreened over the study's budget, whose plan and
    reward are complete, competes (the row's budget then decides whether it fits)."""
    out = []
    for r in records:
        res = r.result
        if not r.feasible and res.status == "prescreened" and res.memory is not None and res.reward is not None \
                and r.objectives:
            r = dataclasses.replace(r, feasible=True, result=dataclasses.replace(res, status="ok"))
        out.append(r)
    return out


def _nothing_fits(records: list[TrialRecord], budget_gb: float) -> str:
    """Why no trial fits: the lowest peak any trial reached, and the phase that holds it."""
    sized = [r for r in records if r.result.memory is not None and r.result.status in ("ok", "prescreened")]
    if not sized:
        return f"nothing in the space fits {budget_gb:g} GiB (no trial has a planned or measured peak)"
    low, mem = min(((r, r.result.memory) for r in sized if r.result.memory is not None),
                   key=lambda pair: pair[1].peak_reserved_gb)
    return (f"nothing in the space fits: the lowest peak is {mem.peak_reserved_gb:.1f} GiB (trial #{low.number}), "
            f"bounded by {mem.peak_phase}")


def by_gpu(records: list[TrialRecord], *, budget_gb: float | None = None, min_reward_ratio: float = DEFAULT_MIN_KEPT,
           reference: str = "baseline", extra_gb: tuple[float, ...] = ()) -> list[GpuRow]:
    """One row per card size (`card_sizes`): the `fastest` recommendation within it, or why there is none."""
    pool = _candidates(records)
    baseline = find_baseline(pool)
    base_step = baseline.result.step_time_s if baseline is not None else None
    base_reward = baseline.result.reward if baseline is not None else None
    rows = []
    for gb in card_sizes(budget_gb, extra_gb):
        try:
            chosen = recommend(pool, policy="fastest", budget_gb=gb, min_reward_ratio=min_reward_ratio,
                               reference=reference)
        except NoFeasibleTrialError:
            rows.append(GpuRow(budget_gb=gb, note=_nothing_fits(pool, gb), baseline_step_time_s=base_step,
                               baseline_reward=base_reward))
            continue
        rec, rule = chosen.record, chosen.rule
        judged = rule is not None and rule.judged
        kept = rule.kept(rec) if judged and rule is not None else None
        mem = rec.result.memory
        rows.append(GpuRow(budget_gb=gb, trial=rec.number, savers=savers(rec, baseline),
                           label=" ".join(knob_labels(rec.config)),
                           peak_gb=mem.peak_reserved_gb if mem is not None else None,
                           step_time_s=rec.result.step_time_s, step_time_source=rec.result.step_time_source,
                           baseline_step_time_s=base_step, reward=rec.result.reward, baseline_reward=base_reward,
                           kept_gain=None if kept is None else kept.value,
                           kept_gain_se=None if kept is None else kept.se,
                           keeps_reward=rule.keeps(rec) if judged and rule is not None else None,
                           undecided=judged and rule is not None and rule.undecided(rec)))
    return rows


def by_gpu_study(study: optuna.Study, records: list[TrialRecord] | None = None,
                 extra_gb: tuple[float, ...] = ()) -> list[GpuRow]:
    """`by_gpu` of a stored study, with its stored budget and reward rule (plus rows for `extra_gb`)."""
    from autotune.attrs import STUDY_ATTR_BUDGET
    from autotune.tuner.recommend import stored_policy
    from autotune.tuner.study import records_of

    policy = stored_policy(study)
    return by_gpu(records_of(study) if records is None else records,
                  budget_gb=study.user_attrs.get(STUDY_ATTR_BUDGET),
                  min_reward_ratio=policy.min_reward_ratio, reference=policy.reference, extra_gb=extra_gb)


def row_for(rows: list[GpuRow], gpu_gb: float) -> GpuRow:
    """The row of card size `gpu_gb` (or, missing, the largest one within it).

    Raises:
        NoFeasibleTrialError: when that row has no config.
    """
    within = [r for r in rows if r.budget_gb <= gpu_gb + 1e-9]
    if not within or within[-1].trial is None:
        note = within[-1].note if within else f"no card size in the table is within {gpu_gb:g} GiB"
        raise NoFeasibleTrialError(f"--gpu-gb {gpu_gb:g}: {note}")
    return within[-1]


def _cells(row: GpuRow) -> list[str]:
    if row.trial is None:
        return [f"{row.budget_gb:g} GiB", row.note, "", "", "", ""]
    step = "-" if row.step_time_s is None else f"{row.step_time_s:.3g} s"
    if row.step_time_s is not None and row.baseline_step_time_s:
        step += f" ({row.step_time_s / row.baseline_step_time_s:.2f}x baseline)"
    kept = "not compared" if row.kept_gain is None else f"{row.kept_gain:.2f} ± {row.kept_gain_se or 0:.2f}"
    if row.undecided:
        kept += " (undecided: nothing here is shown to keep it; more seeds would settle it)"
    elif row.keeps_reward is False:
        kept += " (under the floor: nothing here keeps it)"
    # three significant figures below 1 GiB: a tiny model's 0.0332 GiB must not print as "0.0 GiB"
    peak = "-" if row.peak_gb is None else f"{row.peak_gb:.1f} GiB" if row.peak_gb >= 1 else f"{row.peak_gb:.3g} GiB"
    return [f"{row.budget_gb:g} GiB", f"#{row.trial}", peak, step, kept,
            "none (baseline)" if not row.savers else row.label or ", ".join(row.savers)]


_HEADER = ["GPU", "trial", "planned peak", "step time", "reward gain kept", "savers"]


def _source(rows: list[GpuRow]) -> str:
    sources = sorted({r.step_time_source for r in rows if r.step_time_source})
    return f"step time: {', '.join(sources)}" if sources else ""


def table_text(rows: list[GpuRow]) -> str:
    """The table for a terminal: fixed-width columns (a row that fits nothing spans the rest)."""
    body = [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [_HEADER] + [b for b in body if b[2] or i < 2]) for i in range(len(_HEADER))]
    lines = ["Per GPU size (policy fastest: the quickest config that fits and keeps the reward)"]
    for cells in [_HEADER] + body:
        if not cells[2] and cells is not _HEADER:
            lines.append(f"  {cells[0].ljust(widths[0])}  {cells[1]}")
        else:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    if _source(rows):
        lines.append(f"  ({_source(rows)})")
    return "\n".join(lines)


def table_markdown(rows: list[GpuRow]) -> str:
    """The table as markdown, e.g. for an MLflow text artifact."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for r in rows:
        cells = _cells(r)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if _source(rows):
        lines.append(f"\n{_source(rows)}")
    return "\n".join(lines) + "\n"
