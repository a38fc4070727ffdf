"""The recommendation: from the feasible Pareto front, one config, picked by a stated policy.

Rewards are compared on the gain they keep (autotune.tuner.gain): the share of the baseline's gain
over the untrained policy that a config keeps, with its standard error over training seeds. A reward
comparison is made only once the baseline's reward run learned (its gain is at least
`gain.MIN_LEARNING_Z` standard errors); otherwise the recommendation rests on memory alone and says so.

Policies:
  * ``fastest`` (default): among the feasible trials within the budget that keep the reward (the
    rule below), the lowest step time (measured, else predicted by autotune.tuner.step_time), ties
    to the lower peak. A production run wants the quickest config that fits and keeps the reward,
    not memory savers it does not need. Step time is not an objective of the default space, so it
    picks from every feasible trial, not only the front.
  * ``min-memory``: the lowest reserved peak among the trials that keep the reward.
  A trial keeps the reward when the lower bound of its kept gain (kept - 2 SE) is at or above
  ``min_reward_ratio`` (a non-inferiority test, so noise never lets a riskier config through). The
  gain is the baseline's by default, the best trial's with ``reference="best"``.
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
from typing import TYPE_CHECKING

from autotune import files
from autotune.attrs import STUDY_ATTR_BASELINE_PLAN, STUDY_ATTR_BUDGET, STUDY_ATTR_POLICY
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.result import TrialRecord, TrialResult
from autotune.tuner import fidelity, gain
from autotune.tuner.metrics import MAXIMIZED

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    import optuna

POLICIES = ("fastest", "max-reward", "min-memory")
REFERENCES = ("baseline", "best")
TIE_STANDARD_ERRORS = 2.0
# The share of the baseline's reward gain a saver must keep, at its lower bound. Measured on the
# default proxy (llama-tiny-16, 64 steps, 2 seeds; docs/RESULTS.md section 3a): a config whose seeds
# differ from the baseline's by the usual spread has a kept-gain SE of about 0.07; with that spread
# pooled over a study's ~5 reward keys (Student's t of about 2.6), one that learns exactly as well
# as the baseline has a lower bound near 0.82. A floor of 0.8 lets such a config through; 0.95
# would stop every saver at two seeds, whatever it keeps.
DEFAULT_MIN_KEPT = 0.8


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How a study picks its recommendation; stored in the study's user attributes."""

    name: str = "fastest"
    min_reward_ratio: float = DEFAULT_MIN_KEPT   # fastest, min-memory: the share of the reference's reward gain to keep
    reference: str = "baseline"      # fastest, min-memory: whose reward gain is the yardstick

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
    rule: RewardRule | None = None             # how rewards were judged (None: no reward at all)
    budget_gb: float | None = None             # the budget it was picked within


@dataclass(frozen=True, kw_only=True)
class RewardRule:
    """How a study judges rewards: against whose gain, at what floor, and whether the reward moved.

    Attributes:
        reference: The record whose gain over the untrained policy is the yardstick (the baseline).
        reference_name: How outputs name it ("the baseline's").
        floor: The share of that gain a config must keep, at its lower bound.
        learning: The reference's reward run: its gain in standard errors; None without scores.
    """

    reference: TrialRecord | None
    reference_name: str
    floor: float
    learning: gain.Learning | None
    pooled: tuple[float, int] | None = None   # the study's seed spread of a gain difference, and its dof

    @property
    def judged(self) -> bool:
        """Rewards are compared only when the reference's run learned."""
        return self.learning is not None and self.learning.learned

    def kept(self, record: TrialRecord) -> gain.Estimate | None:
        if self.reference is None:
            return None
        if record is self.reference:
            return gain.Estimate(value=1.0, se=0.0)
        return gain.kept(record.result, self.reference.result, pooled=self.pooled)

    def keeps(self, record: TrialRecord) -> bool:
        """The non-inferiority test: the kept gain's lower bound is at or above the floor."""
        found = self.kept(record)
        return found is not None and found.lower >= self.floor - 1e-12

    def undecided(self, record: TrialRecord) -> bool:
        """Keeps the floor on average, but its lower bound does not: more seeds or steps would tell."""
        found = self.kept(record)
        return found is not None and found.value >= self.floor and not self.keeps(record)

    def describe(self) -> str:
        """One line on how rewards were judged: the reference's learning check, or why none is compared."""
        if not self.judged:
            return f"reward: not compared ({self.why_unjudged()}); this recommendation rests on memory alone"
        return f"reward runs: {self.reference_name} {self.learning.describe()}"   # type: ignore[union-attr]

    def why_unjudged(self) -> str:
        if self.learning is None:
            return "the reward runs have no untrained score to measure a gain from"
        return f"the reward runs did not learn: {self.reference_name} {self.learning.describe()}"


def _peak(r: TrialRecord) -> float:
    return r.result.memory.peak_reserved_gb if r.result.memory is not None else math.inf


def _frag(r: TrialRecord) -> float:
    return r.result.memory.fragmentation if r.result.memory is not None else math.inf


def _step(r: TrialRecord) -> float:
    return r.result.step_time_s if r.result.step_time_s is not None else math.inf


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


def recommend(records: list[TrialRecord], *, policy: str = "fastest", budget_gb: float | None = None,
              min_reward_ratio: float = DEFAULT_MIN_KEPT, reference: str = "baseline",
              baseline_planned_gb: float | None = None) -> Recommendation:
    """Pick one trial from the feasible front.

    Raises:
        NoFeasibleTrialError: when no trial is feasible (and within `budget_gb`, if given).
        ConfigError: for an unknown policy or reference, or a ratio outside (0, 1].
    """
    Policy(name=policy, min_reward_ratio=min_reward_ratio, reference=reference).check()
    front = [r for r in pareto_front(records) if budget_gb is None or _peak(r) <= budget_gb]
    if policy == "fastest":   # step time is no objective of the front: every feasible trial competes
        front = [r for r in records if r.feasible and r.result.ok and r.objectives
                 and (budget_gb is None or _peak(r) <= budget_gb)]
    if not front:
        where = f" within {budget_gb:g} GiB" if budget_gb is not None else ""
        raise NoFeasibleTrialError(f"no feasible completed trial{where} among {len(records)} trials")
    within = f"within the {budget_gb:g} GiB budget" if budget_gb is not None else "on the feasible front"
    baseline = find_baseline(records)
    rule = reward_rule(front, baseline, reference=reference, floor=min_reward_ratio, records=records)
    timed = [r for r in front if r.result.step_time_s is not None]
    if not rule.judged and policy == "fastest" and timed:
        chosen = min(timed, key=lambda r: (_step(r), _peak(r)))
        reason = (f"lowest step time ({_step(chosen):.3g} s, {chosen.result.step_time_source or 'measured'}) {within}, "
                  f"on memory and time alone: {rule.why_unjudged()}")
    elif not rule.judged:
        chosen = min(front, key=lambda r: (_peak(r), _frag(r)))
        reason = (f"lowest peak ({_peak(chosen):.4g} GiB) {within}, on memory alone: "
                  f"{rule.why_unjudged()}")
    elif policy == "max-reward":
        best = max(front, key=_reward)
        tied = [r for r in front if _reward(r) >= _reward(best) - _tie_margin(r, best)]
        chosen = min(tied, key=lambda r: (_peak(r), -_reward(r), _frag(r)))
        reason = (f"lowest peak ({_peak(chosen):.4g} GiB) among {len(tied)} of {_trials(len(front))} {within} whose "
                  f"reward ties the best ({_reward(best):.4g}, within two standard errors)")
    else:
        chosen, reason = _keeping(front, rule, within, fastest=policy == "fastest")
    return Recommendation(record=chosen, baseline=baseline, policy=policy, reason=reason,
                          baseline_planned_gb=baseline_planned_gb, rule=rule, budget_gb=budget_gb)


def reward_rule(front: list[TrialRecord], baseline: TrialRecord | None, *, reference: str = "baseline",
                floor: float = DEFAULT_MIN_KEPT, records: list[TrialRecord] | None = None) -> RewardRule:
    """Whose gain the front is judged against, whether that run learned, and the seed spread of a
    gain difference pooled over every scored config of `records` (the front's, by default)."""
    ref: TrialRecord | None
    if reference == "baseline" and baseline is not None and baseline.result.reward is not None:
        ref, name = baseline, "the baseline's"
    else:
        scored = [r for r in front if r.result.reward is not None]
        ref = max(scored, key=_reward) if scored else None
        name = "the best trial's" if reference == "best" else "the best trial's (the baseline has no reward)"
    learning = gain.learning(ref.result) if ref is not None else None
    pooled = None
    if ref is not None:
        curves = {r.result.reward_key or str(r.number): gain.points(r.result)
                  for r in (records if records is not None else front) if r is not ref and r.result.reward is not None
                  and (r.result.reward_key != ref.result.reward_key or not r.result.reward_key)}
        pooled = gain.pooled_variance(list(curves.values()), gain.points(ref.result))
    return RewardRule(reference=ref, reference_name=name, floor=floor, learning=learning, pooled=pooled)


def _keeping(pool: list[TrialRecord], rule: RewardRule, within: str, *, fastest: bool) -> tuple[TrialRecord, str]:
    """Among the trials that keep the reward gain: the fastest (or the lowest peak); the most kept where none does."""
    eligible = [r for r in pool if rule.keeps(r)]
    floor = f"{rule.floor:g} of {rule.reference_name} reward gain"
    if not eligible:   # e.g. the baseline is over the budget and every trial within it keeps less
        chosen = max(pool, key=lambda r: (_kept_value(rule, r), -_peak(r)))
        return chosen, (f"no trial {within} keeps {floor} at its lower bound; the most kept "
                        f"instead ({_describe_kept(rule.kept(chosen))})")
    timed = [r for r in eligible if r.result.step_time_s is not None]
    if fastest and timed:
        chosen = min(timed, key=lambda r: (_step(r), _peak(r), -_kept_value(rule, r)))
        reason = (f"lowest step time ({_step(chosen):.3g} s, {chosen.result.step_time_source or 'measured'}) among "
                  f"{_trials(len(timed))} {within} that keep at least {floor} (kept - 2 SE)")
        better = [r for r in pool
                  if rule.undecided(r) and r.result.step_time_s is not None and _step(r) < _step(chosen)]
        edge = "a lower step time"
    else:
        chosen = min(eligible, key=lambda r: (_peak(r), -_kept_value(rule, r), _frag(r)))
        reason = (f"lowest peak ({_peak(chosen):.4g} GiB) among {_trials(len(eligible))} {within} that keep at least "
                  f"{floor} (kept - 2 SE)")
        better = [r for r in pool if rule.undecided(r) and _peak(r) < _peak(chosen)]
        edge = "a lower peak"
    if better:
        numbers = ", ".join(f"#{r.number}" for r in better)
        one = len(better) == 1
        reason += (f"; {_trials(len(better))} with {edge} ({numbers}) keep{'s' if one else ''} it on average but not "
                   f"at the lower bound: more seeds (--reward-seeds) or longer reward runs (--reward-steps) would "
                   f"settle {'it' if one else 'them'}")
    return chosen, reason


def _kept_value(rule: RewardRule, record: TrialRecord) -> float:
    found = rule.kept(record)
    return found.value if found is not None else -math.inf


def _describe_kept(found: gain.Estimate | None) -> str:
    return "kept gain unknown" if found is None else f"keeps {found.describe('.2f')} of the gain"


def _trials(n: int) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def store_policy(study: optuna.Study, policy: Policy) -> None:
    """Record the policy in the study, so every later reader recommends the same trial."""
    policy.check()
    study.set_user_attr(STUDY_ATTR_POLICY, {"name": policy.name, "min_reward_ratio": policy.min_reward_ratio,
                                            "reference": policy.reference})


def stored_policy(study: optuna.Study) -> Policy:
    """The study's policy; the defaults for a study written before policies were stored."""
    return Policy(**study.user_attrs.get(STUDY_ATTR_POLICY, {}))


def recommend_study(study: optuna.Study, records: list[TrialRecord] | None = None, *,
                    budget_gb: float | None = None) -> Recommendation:
    """The one recommendation path: the study's records, its stored policy and its budget.

    Args:
        study: an Optuna study written by `autotune search`.
        records: its records, when the caller has them already.
        budget_gb: overrides the study's stored budget.

    Raises:
        NoFeasibleTrialError: when no trial is feasible within the budget.
    """
    from autotune.tuner.study import records_of

    records = records_of(study) if records is None else records
    policy = stored_policy(study)
    budget = budget_gb if budget_gb is not None else study.user_attrs.get(STUDY_ATTR_BUDGET)
    stored_plan = study.user_attrs.get(STUDY_ATTR_BASELINE_PLAN)
    plan = TrialResult.from_dict(stored_plan) if stored_plan else None
    planned_gb = plan.memory.peak_reserved_gb if plan is not None and plan.memory is not None else None
    return recommend(records, policy=policy.name, budget_gb=budget, min_reward_ratio=policy.min_reward_ratio,
                     reference=policy.reference, baseline_planned_gb=planned_gb)


def sources(result: TrialResult) -> str:
    """"memory: ...; reward: ...; step time: ..." for a result that names its sources; "" otherwise."""
    parts = [f"{name}: {src}" for name, src in (("memory", result.memory_source), ("reward", result.reward_source),
                                                ("step time", result.step_time_source)) if src]
    return "; ".join(parts)


def _row(r: TrialRecord, rule: RewardRule | None = None) -> dict[str, object]:
    memory = r.result.memory
    kept = rule.kept(r) if rule is not None else None
    return {
        "number": r.number, "objectives": r.objectives, "reward": r.result.reward, "reward_se": r.result.reward_se,
        "initial_reward": r.result.initial_reward,
        "kept_gain": None if kept is None else kept.value, "kept_gain_se": None if kept is None else kept.se,
        "keeps_reward": None if rule is None or not rule.judged else rule.keeps(r),
        "reward_points": [{"step": p.step, "rewards": list(p.seed_rewards)} for p in r.result.reward_points],
        "peak_reserved_gb": None if memory is None else memory.peak_reserved_gb,
        "fragmentation": None if memory is None else memory.fragmentation,
        "step_time_s": r.result.step_time_s, "step_time_source": r.result.step_time_source,
        "predicted_step_time_s": r.result.predicted_step_time_s, "step_time_ratio": r.result.step_time_ratio,
        "config_hash": r.result.config_hash,
        "memory_source": r.result.memory_source, "reward_source": r.result.reward_source,
        "advisor_reason": r.advisor_reason, "config": r.config.to_dict(),
    }


def write_outputs(recommendation: Recommendation, records: list[TrialRecord], out_dir: Path, *,
                  by_gpu: list[dict[str, object]] | None = None, reward_proxy: str | None = None) -> tuple[Path, Path]:
    """Write `pareto.json` (the front, the choice and, if given, the per-GPU table of
    autotune.tuner.by_gpu) and `recommended.yaml` (a full TrialConfig). `reward_proxy`, the model the
    rewards came from when not the study's own, puts what a proxy cannot establish in both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto_path, yaml_path = out_dir / "pareto.json", out_dir / "recommended.yaml"
    chosen = recommendation.record
    rule = recommendation.rule
    doc = {"policy": recommendation.policy, "reason": recommendation.reason, "recommended": chosen.number,
           "memory_source": chosen.result.memory_source, "reward_source": chosen.result.reward_source,
           "reward_rule": _rule_doc(rule), "step_time_source": chosen.result.step_time_source,
           "front": [_row(r, rule) for r in pareto_front(records)]}
    if chosen not in pareto_front(records):   # fastest picks beyond the front: its row must be there too
        doc["recommended_row"] = _row(chosen, rule)
    if by_gpu is not None:
        doc["by_gpu"] = by_gpu
    if reward_proxy:
        doc["reward_proxy"] = {"model": reward_proxy, "caveat": fidelity.PROXY_CAVEAT}
    files.write_text(pareto_path, json.dumps(doc, indent=2) + "\n")
    header = [f"# autotune recommendation: trial #{chosen.number}, policy {recommendation.policy}"]
    header += [f"# {line}" for line in sources(chosen.result).split("; ") if line]
    header += [f"# {line}" for line in reward_lines(recommendation)]
    if reward_proxy:
        header.append(f"# reward proxy: {fidelity.PROXY_CAVEAT}")
    files.write_text(yaml_path, "\n".join(header) + "\n" + chosen.config.dump())
    return pareto_path, yaml_path


def _rule_doc(rule: RewardRule | None) -> dict[str, object] | None:
    if rule is None:
        return None
    learning = rule.learning
    return {"judged": rule.judged, "floor": rule.floor, "reference": rule.reference_name,
            "min_learning_z": gain.MIN_LEARNING_Z,
            "bound": "kept - t(97.5%, dof) x SE (2 x SE where the SE is the prompts' alone)",
            "typical_seed_variance": None if rule.pooled is None else rule.pooled[0],
            "typical_seed_variance_dof": None if rule.pooled is None else rule.pooled[1],
            "reference_gain": None if learning is None else learning.gain.value,
            "reference_gain_se": None if learning is None else learning.gain.se,
            "reference_gain_z": None if learning is None else learning.gain.z,
            "summary": None if learning is None else learning.describe()}


def reward_lines(recommendation: Recommendation) -> list[str]:
    """What the reward says about the choice, as plain lines: the gain kept, or why none is judged."""
    rule, rec = recommendation.rule, recommendation.record
    if rule is None or rec.result.reward is None:
        return []
    if not rule.judged:
        return [rule.describe()]
    found = rule.kept(rec)
    kept = "unknown" if found is None else f"{found.describe('.2f')} (lower bound {found.lower:.2f})"
    return [f"reward: keeps {kept} of {rule.reference_name} reward gain; floor {rule.floor:g}", rule.describe()]


def _curve_line(recommendation: Recommendation) -> str | None:
    """The kept gain along the run, and whether it is still rising at the end."""
    rule, rec = recommendation.rule, recommendation.record
    if rule is None or not rule.judged or rule.reference is None or rec is rule.reference:
        return None
    curve = gain.kept_curve(rec.result, rule.reference.result, pooled=rule.pooled)
    if len(curve) < 2:
        return None
    text = ", ".join(f"{est.value:.2f} ± {est.se:.2f} at step {step}" for step, est in curve)
    trend = "; still catching up (longer runs may close the gap)" if gain.catching_up(curve) else ""
    return f"kept gain {text}{trend}"


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
    planned = (base.result.memory.peak_reserved_gb if base.result.status == "prescreened" and base.result.memory
               else planned_gb)
    if base.result.status in ("oom", "prescreened") and planned is not None:
        return [f"  the baseline (AdamW, no interventions) needs more than the budget: {planned:.4g} GiB planned"], \
            planned, reward
    return [f"  the baseline (#{base.number}) did not complete ({base.result.status}: {base.result.message}); "
            "no memory comparison"], None, reward


def _baseline_fits(recommendation: Recommendation) -> list[str]:
    """The first line when the baseline completed within the budget: nothing needs to change."""
    base, budget = recommendation.baseline, recommendation.budget_gb
    if base is None or budget is None or not (base.feasible and base.result.ok) or _peak(base) > budget:
        return []
    return [f"the baseline (AdamW, no interventions) fits the {budget:g} GiB budget with "
            f"{budget - _peak(base):.1f} GiB to spare; nothing needs to change."]


def summary(recommendation: Recommendation, *, cost: str | None = None) -> str:
    """A short human summary: the chosen trial, its figures and sources, its gain over the baseline, and why.

    Args:
        recommendation: from `recommend` or `recommend_study`.
        cost: the predicted step time of the chosen config by phase (autotune.tuner.step_time), if known.
    """
    rec = recommendation.record
    mem = rec.result.memory
    notes, base_peak, base_reward = _baseline_lines(recommendation.baseline, recommendation.baseline_planned_gb)
    lines = _baseline_fits(recommendation)
    why = rec.advisor_reason or "sampled"
    lines.append(f"Recommended: trial #{rec.number} ({why}), policy {recommendation.policy}")
    if sources(rec.result):
        lines.append(f"  sources         {sources(rec.result)}")
    if rec.result.reward is not None:
        lines += _reward_summary(recommendation, base_reward)
    if mem is not None:
        change = _change(mem.peak_reserved_gb, base_peak, " GiB")
        lines.append(f"  peak reserved   {mem.peak_reserved_gb:.4g} GiB{change}")
        lines.append(f"  fragmentation   {mem.fragmentation:.1%}")
    base = recommendation.baseline
    if rec.result.step_time_s is not None:
        base_step = base.result.step_time_s if base is not None else None
        source = rec.result.step_time_source or "measured"
        ratio = rec.result.step_time_ratio
        vs = f"; {ratio:.2f}x the prediction" if ratio is not None else ""
        change = _change(rec.result.step_time_s, base_step)
        lines.append(f"  step time       {rec.result.step_time_s:.3g} s {source}{change}{vs}")
    if cost:
        lines.append(f"  step time by phase  {cost}")
    lines += notes
    lines.append(f"  why: {recommendation.reason}")
    return "\n".join(lines)


def _reward_summary(recommendation: Recommendation, base_reward: float | None) -> list[str]:
    """The summary's reward lines: the kept gain with its bound and curve, or why rewards were not compared."""
    rec, rule = recommendation.record, recommendation.rule
    se = f" ± {rec.result.reward_se:.2g}" if rec.result.reward_se else ""
    untrained = f"untrained {rec.result.initial_reward:.4g}" if rec.result.initial_reward is not None else ""
    baseline = f"baseline {base_reward:.4g}" if base_reward is not None else ""
    context = "; ".join(filter(None, (untrained, baseline)))
    lines = [f"  reward          {rec.result.reward:.4g}{se}" + (f" ({context})" if context else "")]
    if rule is None or not rule.judged:
        why = rule.why_unjudged() if rule is not None else "no reward rule"
        return lines + [f"  reward gain     not compared: {why}",
                        "                  this recommendation rests on memory alone"]
    found = rule.kept(rec)
    if found is not None:
        lines.append(f"  reward gain     keeps {found.describe('.2f')} of {rule.reference_name} gain "
                     f"(lower bound {found.lower:.2f}, floor {rule.floor:g})")
    curve = _curve_line(recommendation)
    if curve:
        lines.append(f"  learning curve  {curve}")
    if rule.learning is not None:
        lines.append(f"  reward runs     {rule.reference_name} {rule.learning.describe()}")
    return lines
