"""The recommendation: from the feasible Pareto front, one config, picked by a stated policy.

Policies:
  * ``min-memory`` (default): the lowest reserved peak among trials whose reward is at least
    ``min_reward_ratio`` (0.98) of the reference reward (the baseline's by default, the best one
    with ``reference="best"``), a shortfall within two standard errors counting as a tie. autotune
    is a memory tuner: by default it keeps the baseline's reward and spends the rest on memory.
  * ``max-reward``: within the memory budget, the trials whose reward ties the best one (within
    two standard errors of the difference) compete on the lower reserved peak, then the higher
    reward, then the lower fragmentation.

The policy is stored in the study (`store_policy`), and `search`, `pareto` and `export --storage`
all call `recommend_study`, so they cannot disagree.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import files
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.result import TrialRecord, TrialResult
from autotune.tuner.metrics import MAXIMIZED

POLICIES = ("max-reward", "min-memory")
REFERENCES = ("baseline", "best")
STUDY_ATTR_POLICY = "autotune.policy"
TIE_STANDARD_ERRORS = 2.0


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How a study picks its recommendation; stored in the study's user attributes."""

    name: str = "min-memory"
    min_reward_ratio: float = 0.98
    reference: str = "baseline"      # min-memory: the reward the ratio is measured against

    def check(self) -> None:
        """Raises ConfigError for an unknown policy or reference, or a ratio outside (0, 1]."""
        if self.name not in POLICIES:
            raise ConfigError(f"unknown policy {self.name!r} (choose from {', '.join(POLICIES)})")
        if self.reference not in REFERENCES:
            raise ConfigError(f"unknown reward reference {self.reference!r} (choose from {', '.join(REFERENCES)})")
        if not 0 < self.min_reward_ratio <= 1:
            raise ConfigError(f"--min-reward-ratio must be in (0, 1], got {self.min_reward_ratio}")


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """The chosen trial, the baseline it is compared with, and why it won."""

    record: TrialRecord
    baseline: TrialRecord | None
    policy: str
    reason: str
    baseline_planned_gb: float | None = None   # the baseline's full-size plan, where it did not complete


def _peak(r: TrialRecord) -> float:
    return r.result.memory.peak_reserved_gb if r.result.memory is not None else math.inf


def _frag(r: TrialRecord) -> float:
    return r.result.memory.fragmentation if r.result.memory is not None else math.inf


def _reward(r: TrialRecord) -> float:
    return r.result.reward if r.result.reward is not None else -math.inf


def _se(r: TrialRecord) -> float:
    return r.result.reward_se or 0.0


def _tie_margin(a: TrialRecord, b: TrialRecord) -> float:
    """Two standard errors of the difference between two trials' rewards (0 without errors)."""
    return TIE_STANDARD_ERRORS * math.hypot(_se(a), _se(b))


def _dominates(a: TrialRecord, b: TrialRecord) -> bool:
    """a is at least as good on every objective and better on one (directions from MAXIMIZED)."""
    better = False
    for name, va in a.objectives.items():
        vb = b.objectives.get(name)
        if vb is None:
            return False
        sa, sb = (va, vb) if name in MAXIMIZED else (-va, -vb)
        if sa < sb:
            return False
        better |= sa > sb
    return better


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """The feasible, completed records that no other such record dominates, in trial order."""
    pool = [r for r in records if r.feasible and r.result.ok and r.objectives]
    return [r for r in pool if not any(_dominates(o, r) for o in pool if o is not r)]


def find_baseline(records: list[TrialRecord]) -> TrialRecord | None:
    return next((r for r in records if r.advisor_reason == "baseline"), None)


def recommend(records: list[TrialRecord], *, policy: str = "min-memory", budget_gb: float | None = None,
              min_reward_ratio: float = 0.98, reference: str = "baseline",
              baseline_planned_gb: float | None = None) -> Recommendation:
    """Pick one trial from the feasible front.

    Raises:
        NoFeasibleTrialError: when no trial is feasible (and within `budget_gb`, if given).
        ConfigError: for an unknown policy or reference, or a ratio outside (0, 1].
    """
    Policy(name=policy, min_reward_ratio=min_reward_ratio, reference=reference).check()
    front = [r for r in pareto_front(records) if budget_gb is None or _peak(r) <= budget_gb]
    if not front:
        where = f" within {budget_gb:g} GiB" if budget_gb is not None else ""
        raise NoFeasibleTrialError(f"no feasible completed trial{where} among {len(records)} trials")
    within = f"within the {budget_gb:g} GiB budget" if budget_gb is not None else "on the feasible front"
    baseline = find_baseline(records)
    if policy == "max-reward":
        best = max(front, key=_reward)
        tied = [r for r in front if _reward(r) >= _reward(best) - _tie_margin(r, best)]
        chosen = min(tied, key=lambda r: (_peak(r), -_reward(r), _frag(r)))
        reason = (f"lowest peak ({_peak(chosen):.4g} GiB) among {len(tied)} of {_trials(len(front))} {within} whose "
                  f"reward ties the best ({_reward(best):.4g}, within two standard errors)")
    else:
        ref, ref_name = _reference(front, baseline, reference)
        floor = _reward(ref) - (1 - min_reward_ratio) * abs(_reward(ref))  # a ratio that also works for negative rewards
        eligible = [r for r in front if _reward(r) >= floor - _tie_margin(r, ref)]
        if eligible:
            chosen = min(eligible, key=lambda r: (_peak(r), -_reward(r), _frag(r)))
            reason = (f"lowest peak ({_peak(chosen):.4g} GiB) among {_trials(len(eligible))} {within} whose reward is "
                      f"at least {min_reward_ratio:g} of the {ref_name} ({_reward(ref):.4g}), within two standard errors")
        else:   # e.g. the baseline is over the budget and every trial within it scores lower
            chosen = min(front, key=lambda r: (-_reward(r), _peak(r), _frag(r)))
            reason = (f"no trial {within} keeps {min_reward_ratio:g} of the {ref_name} ({_reward(ref):.4g}); "
                      f"the highest reward instead ({_reward(chosen):.4g})")
    return Recommendation(record=chosen, baseline=baseline, policy=policy, reason=reason,
                          baseline_planned_gb=baseline_planned_gb)


def _trials(n: int) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def _reference(front: list[TrialRecord], baseline: TrialRecord | None, reference: str) -> tuple[TrialRecord, str]:
    """The record min-memory measures the ratio against, and its name for the reason."""
    if reference == "baseline" and baseline is not None and baseline.result.reward is not None:
        return baseline, "baseline's reward"
    best = max(front, key=_reward)
    if reference == "baseline":
        return best, "best reward (the baseline has no reward)"
    return best, "best reward"


def store_policy(study: Any, policy: Policy) -> None:
    """Record the policy in the study, so every later reader recommends the same trial."""
    policy.check()
    study.set_user_attr(STUDY_ATTR_POLICY, {"name": policy.name, "min_reward_ratio": policy.min_reward_ratio,
                                            "reference": policy.reference})


def stored_policy(study: Any) -> Policy:
    """The study's policy; the defaults for a study written before policies were stored."""
    return Policy(**study.user_attrs.get(STUDY_ATTR_POLICY, {}))


def recommend_study(study: Any, records: list[TrialRecord] | None = None, *,
                    budget_gb: float | None = None) -> Recommendation:
    """The one recommendation path: the study's records, its stored policy and its budget.

    Args:
        study: an Optuna study written by `autotune search`.
        records: its records, when the caller has them already.
        budget_gb: overrides the study's stored budget.

    Raises:
        NoFeasibleTrialError: when no trial is feasible within the budget.
    """
    from autotune.tuner.measure import STUDY_ATTR_BASELINE_PLAN
    from autotune.tuner.study import STUDY_ATTR_BUDGET, records_of

    records = records_of(study) if records is None else records
    policy = stored_policy(study)
    budget = budget_gb if budget_gb is not None else study.user_attrs.get(STUDY_ATTR_BUDGET)
    stored_plan = study.user_attrs.get(STUDY_ATTR_BASELINE_PLAN)
    plan = TrialResult.from_dict(stored_plan) if stored_plan else None
    planned_gb = plan.memory.peak_reserved_gb if plan is not None and plan.memory is not None else None
    return recommend(records, policy=policy.name, budget_gb=budget, min_reward_ratio=policy.min_reward_ratio,
                     reference=policy.reference, baseline_planned_gb=planned_gb)


def sources(result: TrialResult) -> str:
    """"memory: ...; reward: ..." for a result that names its sources; "" otherwise."""
    parts = [f"{name}: {src}" for name, src in (("memory", result.memory_source), ("reward", result.reward_source)) if src]
    return "; ".join(parts)


def _row(r: TrialRecord) -> dict[str, object]:
    memory = r.result.memory
    return {
        "number": r.number, "objectives": r.objectives, "reward": r.result.reward, "reward_se": r.result.reward_se,
        "peak_reserved_gb": None if memory is None else memory.peak_reserved_gb,
        "fragmentation": None if memory is None else memory.fragmentation,
        "step_time_s": r.result.step_time_s, "config_hash": r.result.config_hash,
        "memory_source": r.result.memory_source, "reward_source": r.result.reward_source,
        "advisor_reason": r.advisor_reason, "config": r.config.to_dict(),
    }


def write_outputs(recommendation: Recommendation, records: list[TrialRecord], out_dir: Path) -> tuple[Path, Path]:
    """Write `pareto.json` (the front and the choice) and `recommended.yaml` (a full TrialConfig)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto_path, yaml_path = out_dir / "pareto.json", out_dir / "recommended.yaml"
    chosen = recommendation.record
    doc = {"policy": recommendation.policy, "reason": recommendation.reason, "recommended": chosen.number,
           "memory_source": chosen.result.memory_source, "reward_source": chosen.result.reward_source,
           "front": [_row(r) for r in pareto_front(records)]}
    files.write_text(pareto_path, json.dumps(doc, indent=2) + "\n")
    header = [f"# autotune recommendation: trial #{chosen.number}, policy {recommendation.policy}"]
    header += [f"# {line}" for line in sources(chosen.result).split("; ") if line]
    files.write_text(yaml_path, "\n".join(header) + "\n" + chosen.config.dump())
    return pareto_path, yaml_path


def _change(new: float | None, old: float | None, unit: str = "") -> str:
    if new is None or old is None:
        return ""
    rel = f", {100 * (new - old) / abs(old):+.0f}%" if old else ""
    ratio = f"; {new / old:.2f}x" if unit and old else ""
    return f" (baseline {old:.4g}{unit}{rel}{ratio})"


def _baseline_lines(base: TrialRecord | None, planned_gb: float | None) -> tuple[list[str], float | None, float | None]:
    """Lines about a baseline that did not complete, and the peak and reward to compare with."""
    if base is None:
        return [], None, None
    reward = base.result.reward
    if base.result.ok and base.feasible and base.result.memory is not None:
        return [], base.result.memory.peak_reserved_gb, reward
    # a prescreened (planned) baseline carries its whole planned peak; an OOM only a partial one
    planned = base.result.memory.peak_reserved_gb if base.result.status == "prescreened" and base.result.memory else planned_gb
    if base.result.status in ("oom", "prescreened") and planned is not None:
        return [f"  the baseline (AdamW, no interventions) needs more than the budget: {planned:.4g} GiB planned"], \
            planned, reward
    return [f"  the baseline (#{base.number}) did not complete ({base.result.status}: {base.result.message}); "
            "no memory comparison"], None, reward


def summary(recommendation: Recommendation, *, cost: str | None = None) -> str:
    """A short human summary: the chosen trial, its figures and sources, its gain over the baseline, and why.

    Args:
        recommendation: from `recommend` or `recommend_study`.
        cost: the predicted step-time cost of its savers (autotune.tuner.cost), if known.
    """
    rec = recommendation.record
    mem = rec.result.memory
    notes, base_peak, base_reward = _baseline_lines(recommendation.baseline, recommendation.baseline_planned_gb)
    lines = [f"Recommended: trial #{rec.number} ({rec.advisor_reason or 'sampled'}), policy {recommendation.policy}"]
    if sources(rec.result):
        lines.append(f"  sources         {sources(rec.result)}")
    if rec.result.reward is not None:
        se = f" ± {rec.result.reward_se:.2g}" if rec.result.reward_se else ""
        lines.append(f"  reward          {rec.result.reward:.4g}{se}{_change(rec.result.reward, base_reward)}")
    if mem is not None:
        lines.append(f"  peak reserved   {mem.peak_reserved_gb:.4g} GiB{_change(mem.peak_reserved_gb, base_peak, ' GiB')}")
        lines.append(f"  fragmentation   {mem.fragmentation:.1%}")
    base = recommendation.baseline
    if rec.result.step_time_s is not None:
        base_step = base.result.step_time_s if base is not None else None
        lines.append(f"  step time       {rec.result.step_time_s:.3g} s measured{_change(rec.result.step_time_s, base_step)}")
    if cost:
        lines.append(f"  step-time cost  predicted: {cost}")
    lines += notes
    lines.append(f"  why: {recommendation.reason}")
    return "\n".join(lines)
