"""The reward gain: what a config's training added over the untrained policy, and how much of the
baseline's gain a memory saver keeps.

A raw reward ratio hides whether anything was learned: on the target-token task chance is 0.125,
so two untrained policies score within 2% of each other and "98% of the baseline's reward" would
pass any config. What a saver can lose is what training adds, so every comparison is made on

    gain  = r - r_untrained                       (per training seed, then averaged)
    kept  = gain_config / gain_baseline           (1 for the baseline itself)

Standard errors cover the training seed (the spread of the per-seed gains, for two or more seeds)
and the evaluation prompts (their standard error, which the seeds share). Configs of one study are
trained at the same seeds, so a difference is taken seed by seed: the seed's luck that both runs
share cancels out. Two seeds give a config's own spread one degree of freedom, so it is shrunk
toward the study's typical spread (the median over its reward keys), weighted by degrees of freedom,
as limma's moderated t does: a spread that is small by chance would otherwise let a config near the
floor pass on one run and fail on a rerun, and one noisy config does not inflate the others'.

Two rules use these figures:
  * learned: the baseline's gain is at least `MIN_LEARNING_Z` standard errors. Below that the
    reward runs are too short (or too noisy) to rank anything, and no reward comparison is made.
  * keeps the reward (a non-inferiority test): the lower bound kept - 2 SE (Student's t for the
    seeds' degrees of freedom instead of 2) is at or above the floor. The burden of proof is on the
    saver, so a noisier reward never lets more configs pass.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from autotune.result import RewardPoint, TrialResult

MIN_LEARNING_Z = 10.0        # the baseline's gain in standard errors before any reward comparison
BOUND_Z = 2.0                # the non-inferiority bound: kept - BOUND_Z * SE must clear the floor ...
# ... where the spread is known; estimated from a few seeds, Student's t for its degrees of freedom
# (97.5%) takes the place of 2: two seeds per config give one degree of freedom each.
_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
         12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def bound_factor(dof: float) -> float:
    """How many standard errors the non-inferiority bound lies below the estimate."""
    if dof >= 30:
        return BOUND_Z
    return _T975[max(d for d in _T975 if d <= max(dof, 1))]


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A figure with its standard error."""

    value: float
    se: float
    dof: float = math.inf      # degrees of freedom behind `se` (inf: a large-sample one, e.g. the prompts')

    @property
    def lower(self) -> float:
        """The non-inferiority bound: value - t(dof) standard errors (2 for a large-sample SE)."""
        return self.value - bound_factor(self.dof) * self.se

    @property
    def upper(self) -> float:
        return self.value + bound_factor(self.dof) * self.se

    @property
    def z(self) -> float:
        """value / se; infinite for an exact non-zero figure."""
        if self.se > 0:
            return self.value / self.se
        return math.inf if self.value > 0 else (-math.inf if self.value < 0 else 0.0)

    def describe(self, fmt: str = ".3g") -> str:
        return f"{self.value:{fmt}} ± {self.se:{fmt}}"


@dataclass(frozen=True, kw_only=True)
class Learning:
    """Whether a reward run learned: its gain over the untrained policy, in standard errors."""

    gain: Estimate
    seeds: int
    steps: int

    @property
    def learned(self) -> bool:
        return self.gain.z >= MIN_LEARNING_Z

    def describe(self) -> str:
        covers = f"over {self.seeds} seeds and the prompts" if self.seeds > 1 else "over the prompts only (one seed)"
        verdict = "learned" if self.learned else f"not learned (under {MIN_LEARNING_Z:g} SE)"
        return (f"gain {self.gain.describe()} over the untrained policy after {self.steps} steps "
                f"({self.gain.z:.1f} SE, {covers}): {verdict}")


def points(result: TrialResult) -> tuple[RewardPoint, ...]:
    """The result's evaluation curve; a result that predates curves gives its two ends, one seed."""
    if result.reward_points:
        return result.reward_points
    if result.reward is None or result.initial_reward is None:
        return ()
    return (RewardPoint(step=0, seed_rewards=(result.initial_reward,)),
            RewardPoint(step=-1, seed_rewards=(result.reward,), prompt_se=result.reward_se or 0.0))


def _seed_gains(start: RewardPoint, end: RewardPoint) -> list[float]:
    return [b - a for a, b in zip(start.seed_rewards, end.seed_rewards)]


def _se(values: list[float], prompt_se: float) -> float:
    """SE of a mean over seeds that share one prompt set: the seeds' spread and the prompts' SE."""
    seed_var = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    return math.sqrt(seed_var + prompt_se ** 2)


def gain_at(curve: tuple[RewardPoint, ...], index: int = -1) -> Estimate | None:
    """The gain over step 0 at `curve[index]` (the end by default)."""
    if len(curve) < 2:
        return None
    gains = _seed_gains(curve[0], curve[index])
    return Estimate(value=statistics.fmean(gains),
                    se=_se(gains, math.hypot(curve[0].prompt_se, curve[index].prompt_se)))


def learning(result: TrialResult) -> Learning | None:
    """Did the run behind `result` learn? None when it has no scores."""
    return learning_from(points(result))


def learning_from(curve: tuple[RewardPoint, ...], *, steps: int | None = None) -> Learning | None:
    """Did the run with this evaluation curve learn? None when it has no scores."""
    found = gain_at(curve)
    if found is None:
        return None
    return Learning(gain=found, seeds=len(curve[-1].seed_rewards),
                    steps=steps if steps is not None else max(curve[-1].step, 0))


def paired_variance(config: tuple[RewardPoint, ...], baseline: tuple[RewardPoint, ...]) -> tuple[float, int] | None:
    """The variance over seeds of the per-seed gain differences at the end, and its degrees of
    freedom; None where the runs are not paired or have one seed."""
    if len(config) < 2 or len(baseline) < 2:
        return None
    mine, theirs = _seed_gains(config[0], config[-1]), _seed_gains(baseline[0], baseline[-1])
    if len(mine) != len(theirs) or len(mine) < 2:
        return None
    return statistics.variance([a - b for a, b in zip(mine, theirs)]), len(mine) - 1


def pooled_variance(curves: list[tuple[RewardPoint, ...]],
                    baseline: tuple[RewardPoint, ...]) -> tuple[float, int] | None:
    """A study's typical seed-to-seed variance of a gain difference, and the degrees of freedom behind it.

    Two seeds give each config's own variance one degree of freedom: by chance it can be tiny, and a
    config near the floor then passes on one run and fails on the next. The typical variance is the
    median over the study's reward keys (one noisy config does not inflate the others'), and its
    degrees of freedom are all the keys' together. Returns (variance, dof).
    """
    found = [v for c in curves if (v := paired_variance(c, baseline)) is not None]
    dof = sum(d for _, d in found)
    return (statistics.median(var for var, _ in found), dof) if dof else None


def moderated_variance(own: float, own_dof: int, pooled: tuple[float, int] | None) -> tuple[float, float]:
    """A config's seed variance shrunk toward the study's typical one, weighted by degrees of freedom
    (the moderated variance of limma's moderated t): (variance, dof)."""
    if pooled is None:
        return own, own_dof
    typical, total_dof = pooled
    others = max(total_dof - own_dof, 0)    # the pool includes this config's own degrees of freedom
    if others == 0:
        return own, own_dof
    return (others * typical + own_dof * own) / (others + own_dof), others + own_dof


def kept_at(config: tuple[RewardPoint, ...], baseline: tuple[RewardPoint, ...], index: int = -1, *,
            pooled: tuple[float, int] | None = None) -> Estimate | None:
    """The share of the baseline's gain that a config keeps at `index` of both curves.

    The difference of the gains is taken seed by seed where both ran the same seeds; its variance
    over seeds is the config's own, moderated toward the study's typical one (`pooled_variance`,
    `moderated_variance`). Its SE and the baseline gain's SE go through the ratio by the delta method.
    """
    base = gain_at(baseline, index)
    if base is None or len(config) < 2 or base.value <= 0:
        return None
    mine = _seed_gains(config[0], config[index])
    theirs = _seed_gains(baseline[0], baseline[index])
    paired = len(mine) == len(theirs)
    if paired:
        diffs = [a - b for a, b in zip(mine, theirs)]
        prompt_se = math.hypot(config[index].prompt_se, baseline[index].prompt_se)
        seed_var, dof = 0.0, math.inf       # one seed: the prompts' (large-sample) SE alone
        if len(diffs) > 1:
            seed_var, dof = moderated_variance(statistics.variance(diffs), len(diffs) - 1, pooled)
        diff = Estimate(value=statistics.fmean(diffs), se=math.sqrt(seed_var / len(diffs) + prompt_se ** 2), dof=dof)
    else:   # different seed counts: independent estimates
        own = Estimate(value=statistics.fmean(mine),
                       se=_se(mine, math.hypot(config[0].prompt_se, config[index].prompt_se)))
        shortest = min(len(mine), len(theirs))
        diff = Estimate(value=own.value - base.value, se=math.hypot(own.se, base.se),
                        dof=shortest - 1 if shortest > 1 else math.inf)
    ratio = diff.value / base.value
    se = math.hypot(diff.se, ratio * base.se) / base.value
    return Estimate(value=1.0 + ratio, se=se, dof=diff.dof)


def kept(config: TrialResult, baseline: TrialResult, *, pooled: tuple[float, int] | None = None) -> Estimate | None:
    """The share of the baseline's reward gain that `config` keeps (None where it cannot be said).

    A config whose reward run is the baseline's (memory knobs only: the same reward key, so the same
    shared run, seed for seed) keeps exactly all of it: there is no difference for the study's typical
    spread to widen.
    """
    if config is baseline or _same_run(config, baseline):
        return Estimate(value=1.0, se=0.0)
    return kept_at(points(config), points(baseline), pooled=pooled)


def _same_run(config: TrialResult, baseline: TrialResult) -> bool:
    mine = points(config)
    return bool(mine) and mine == points(baseline)


def kept_curve(config: TrialResult, baseline: TrialResult, *,
               pooled: tuple[float, int] | None = None) -> list[tuple[int, Estimate]]:
    """The kept gain at each scored step both curves share (after step 0)."""
    mine, theirs = points(config), points(baseline)
    if _same_run(config, baseline):
        return [(point.step, Estimate(value=1.0, se=0.0)) for point in mine[1:]]
    if len(mine) != len(theirs) or any(a.step != b.step for a, b in zip(mine, theirs)):
        found = kept_at(mine, theirs, pooled=pooled)
        return [] if found is None else [(mine[-1].step, found)]
    out = []
    for i in range(1, len(mine)):
        found = kept_at(mine, theirs, i, pooled=pooled if i == len(mine) - 1 else None)
        if found is not None:
            out.append((mine[i].step, found))
    return out


def catching_up(curve: list[tuple[int, Estimate]]) -> bool:
    """The kept gain still rises at the end of the run by more than its noise: longer runs may close it."""
    if len(curve) < 2:
        return False
    (_, before), (_, last) = curve[-2], curve[-1]
    return last.value - before.value > BOUND_Z * math.hypot(last.se, before.se) / 2 and last.value < 1.0
