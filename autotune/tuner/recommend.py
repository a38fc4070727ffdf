"""The recommendation: from the feasible Pareto front, one config, picked by a stated policy.

Policies:
  * ``max-reward`` (default): within the memory budget, the highest reward; ties go to the lower
    reserved peak, then the lower fragmentation.
  * ``min-memory``: the lowest reserved peak among trials whose reward is at least
    ``min_reward_ratio`` of the best reward; ties go to the higher reward.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.result import TrialRecord
from autotune.tuner.metrics import MAXIMIZED

POLICIES = ("max-reward", "min-memory")


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """The chosen trial, the baseline it is compared with, and why it won."""

    record: TrialRecord
    baseline: TrialRecord | None
    policy: str
    reason: str


def _peak(r: TrialRecord) -> float:
    return r.result.memory.peak_reserved_gb if r.result.memory is not None else math.inf


def _frag(r: TrialRecord) -> float:
    return r.result.memory.fragmentation if r.result.memory is not None else math.inf


def _reward(r: TrialRecord) -> float:
    return r.result.reward if r.result.reward is not None else -math.inf


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


def recommend(records: list[TrialRecord], *, policy: str = "max-reward", budget_gb: float | None = None,
              min_reward_ratio: float = 0.98) -> Recommendation:
    """Pick one trial from the feasible front.

    Raises:
        NoFeasibleTrialError: when no trial is feasible (and within `budget_gb`, if given).
        ConfigError: for an unknown policy or a ratio outside (0, 1].
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    if not 0 < min_reward_ratio <= 1:
        raise ConfigError(f"--min-reward-ratio must be in (0, 1], got {min_reward_ratio}")
    front = [r for r in pareto_front(records) if budget_gb is None or _peak(r) <= budget_gb]
    if not front:
        where = f" within {budget_gb:g} GiB" if budget_gb is not None else ""
        raise NoFeasibleTrialError(f"no feasible completed trial{where} among {len(records)} trials")
    within = f"within the {budget_gb:g} GiB budget" if budget_gb is not None else "on the feasible front"
    if policy == "max-reward":
        chosen = min(front, key=lambda r: (-_reward(r), _peak(r), _frag(r)))
        reason = (f"highest reward ({_reward(chosen):.4g}) among {len(front)} trials {within}; "
                  "ties broken by lower peak, then lower fragmentation")
    else:
        best = max(_reward(r) for r in front)
        floor = best - (1 - min_reward_ratio) * abs(best)  # a ratio that also works for negative rewards
        eligible = [r for r in front if _reward(r) >= floor]
        chosen = min(eligible, key=lambda r: (_peak(r), -_reward(r), _frag(r)))
        reason = (f"lowest peak ({_peak(chosen):.4g} GiB) among {len(eligible)} trials {within} whose reward "
                  f"is at least {min_reward_ratio:g} of the best ({best:.4g})")
    baseline = next((r for r in records if r.advisor_reason == "baseline"), None)
    return Recommendation(record=chosen, baseline=baseline, policy=policy, reason=reason)


def _row(r: TrialRecord) -> dict[str, object]:
    memory = r.result.memory
    return {
        "number": r.number, "objectives": r.objectives, "reward": r.result.reward,
        "peak_reserved_gb": None if memory is None else memory.peak_reserved_gb,
        "fragmentation": None if memory is None else memory.fragmentation,
        "step_time_s": r.result.step_time_s, "config_hash": r.result.config_hash,
        "advisor_reason": r.advisor_reason, "config": r.config.to_dict(),
    }


def write_outputs(recommendation: Recommendation, records: list[TrialRecord], out_dir: Path) -> tuple[Path, Path]:
    """Write `pareto.json` (the front and the choice) and `recommended.yaml` (a full TrialConfig)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto_path, yaml_path = out_dir / "pareto.json", out_dir / "recommended.yaml"
    doc = {"policy": recommendation.policy, "reason": recommendation.reason,
           "recommended": recommendation.record.number, "front": [_row(r) for r in pareto_front(records)]}
    tmp = pareto_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(pareto_path)
    recommendation.record.config.dump(yaml_path)
    return pareto_path, yaml_path


def _change(new: float | None, old: float | None, unit: str = "") -> str:
    if new is None or old is None:
        return ""
    rel = f", {100 * (new - old) / abs(old):+.0f}%" if old else ""
    return f" (baseline {old:.4g}{unit}{rel})"


def summary(recommendation: Recommendation) -> str:
    """A short human summary: the chosen trial, its figures, its gain over the baseline, and why."""
    rec, base = recommendation.record, recommendation.baseline
    mem, bmem = rec.result.memory, base.result.memory if base is not None else None
    lines = [f"Recommended: trial #{rec.number} ({rec.advisor_reason or 'sampled'}), policy {recommendation.policy}"]
    if rec.result.reward is not None:
        lines.append(f"  reward          {rec.result.reward:.4g}{_change(rec.result.reward, base.result.reward if base else None)}")
    if mem is not None:
        lines.append(f"  peak reserved   {mem.peak_reserved_gb:.4g} GiB"
                     f"{_change(mem.peak_reserved_gb, bmem.peak_reserved_gb if bmem else None, ' GiB')}")
        lines.append(f"  fragmentation   {mem.fragmentation:.1%}")
    if base is not None and not base.result.ok:
        lines.append(f"  baseline (#{base.number}) did not fit: {base.result.status} {base.result.message}")
    lines.append(f"  why: {recommendation.reason}")
    return "\n".join(lines)
