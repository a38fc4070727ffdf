"""Pareto front and recommendation policies, on hand-made records whose answer is worked out here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.memory.report import GiB, MemoryReport, PhaseMemory
from autotune.result import RewardPoint, TrialRecord, TrialResult
from autotune.tuner.recommend import (
    Policy,
    pareto_front,
    recommend,
    recommend_study,
    store_policy,
    stored_policy,
    summary,
    write_outputs,
)


def _rec(number: int, reward: float | None, peak_gb: float, *, frag: float = 0.1, feasible: bool = True,
         reason: str | None = None, se: float | None = None, status: str = "ok", initial: float | None = 0.1,
         points: tuple[RewardPoint, ...] = (), step: float | None = None, **sources: str) -> TrialRecord:
    reserved = int(peak_gb * GiB)
    allocated = int(reserved * (1 - frag))
    phase = PhaseMemory(name="actor_train", peak_allocated_bytes=allocated, peak_reserved_bytes=reserved,
                        end_allocated_bytes=0, end_reserved_bytes=0, wall_time_s=1.0)
    memory = MemoryReport(backend="cpu", phases=(phase,), peak_allocated_bytes=allocated, peak_reserved_bytes=reserved)
    cfg = TrialConfig().replace(**{"workload.seed": number})
    result = TrialResult(config_hash=cfg.config_hash(), status=status, backend="cpu", memory=memory, reward=reward,
                         reward_se=se, initial_reward=None if reward is None else initial, reward_points=points,
                         step_time_s=step, **sources)
    objectives = {"peak_reserved_gb": reserved / GiB} | ({} if reward is None else {"reward": reward})
    return TrialRecord(number=number, config=cfg, result=result, feasible=feasible, advisor_reason=reason,
                       objectives=objectives)


RECORDS = [
    _rec(0, 0.50, 10.0, reason="baseline"),  # dominated by 2 (same peak, lower reward)
    _rec(1, 0.40, 4.0),                       # front: lowest peak
    _rec(2, 0.70, 10.0),                      # front: best reward, peak 10
    _rec(3, 0.69, 6.0),                       # front: 98.6% of the best reward at 6 GiB
    _rec(4, 0.90, 3.0, feasible=False),       # infeasible: never on the front
    _rec(5, 0.60, 7.0),                       # dominated by 3
]


def test_front_is_the_non_dominated_feasible_records() -> None:
    assert [r.number for r in pareto_front(RECORDS)] == [1, 2, 3]


def test_max_reward_within_budget() -> None:
    assert recommend(RECORDS, policy="max-reward").record.number == 2
    rec = recommend(RECORDS, policy="max-reward", budget_gb=8.0)   # 2 is over 8 GiB
    assert rec.record.number == 3 and rec.baseline is not None and rec.baseline.number == 0
    assert "ties the best (0.69" in rec.reason


def test_max_reward_ties_go_to_lower_peak_then_fragmentation() -> None:
    tied = [_rec(0, 0.7, 5.0, frag=0.3), _rec(1, 0.7, 5.0, frag=0.1), _rec(2, 0.7, 6.0, frag=0.0)]
    # 0 and 1 do not dominate each other on (reward, peak); 2 is dominated by both
    assert recommend(tied, policy="max-reward").record.number == 1


def test_min_memory_keeps_reward_gain_within_ratio() -> None:
    # untrained 0.1, baseline 0.5: a gain of 0.4. Trial 3 (0.69) keeps 1.48 of it at 6 GiB; trial 1 (0.40)
    # keeps 0.75, under the 0.8 floor, and over 0.5
    assert recommend(RECORDS, policy="min-memory").record.number == 3
    assert recommend(RECORDS, policy="min-memory", min_reward_ratio=0.5).record.number == 1


def test_nothing_feasible_and_bad_policy_are_errors() -> None:
    with pytest.raises(NoFeasibleTrialError):
        recommend([_rec(0, 0.5, 1.0, feasible=False)])
    with pytest.raises(NoFeasibleTrialError):
        recommend(RECORDS, budget_gb=1.0)
    with pytest.raises(ConfigError):
        recommend(RECORDS, policy="vibes")


def test_outputs_and_summary(tmp_path: Path) -> None:
    rec = recommend(RECORDS, policy="max-reward", budget_gb=8.0)
    pareto_path, yaml_path = write_outputs(rec, RECORDS, tmp_path)
    assert TrialConfig.load(yaml_path) == RECORDS[3].config
    doc = json.loads(pareto_path.read_text())
    assert doc["recommended"] == 3 and [row["number"] for row in doc["front"]] == [1, 2, 3]
    text = summary(rec)
    # gain 0.59 vs the baseline's 0.40 keeps 1.475 of it; peak 6 vs 10 GiB is -40%
    assert "#3" in text and "keeps 1.4" in text and "-40%" in text


def test_max_reward_treats_rewards_within_two_standard_errors_as_ties() -> None:
    close = [_rec(0, 0.70, 10.0, se=0.01), _rec(1, 0.68, 6.0, se=0.01), _rec(2, 0.60, 4.0, se=0.01)]
    # 0.70 - 0.68 = 0.02 < 2 * hypot(0.01, 0.01) = 0.028: a tie, so the lower peak wins
    assert recommend(close, policy="max-reward").record.number == 1
    # without standard errors the difference counts, as before
    exact = [_rec(0, 0.70, 10.0), _rec(1, 0.68, 6.0), _rec(2, 0.60, 4.0)]
    assert recommend(exact, policy="max-reward").record.number == 0


def test_min_memory_ratio_is_against_the_baseline_by_default_and_the_best_on_request() -> None:
    records = [_rec(0, 0.50, 10.0, reason="baseline"), _rec(1, 0.70, 9.0), _rec(2, 0.495, 3.0), _rec(3, 0.40, 2.0)]
    # baseline gain 0.4: trial 2 (0.495) keeps 0.9875 of it at 3 GiB
    assert recommend(records, policy="min-memory").record.number == 2
    # the best trial's gain 0.6: trial 2 keeps 0.66, so only trial 1 qualifies
    assert recommend(records, policy="min-memory", reference="best").record.number == 1
    with pytest.raises(ConfigError, match="reference"):
        recommend(records, policy="min-memory", reference="median")


def test_min_memory_without_any_trial_at_the_ratio_takes_the_best_reward_and_says_so() -> None:
    over = _rec(0, 0.50, 46.0, reason="baseline", status="prescreened", feasible=False)
    rec = recommend([over, _rec(1, 0.30, 20.0), _rec(2, 0.40, 30.0)], policy="min-memory")
    assert rec.record.number == 2
    assert "no trial on the feasible front keeps 0.8 of the baseline's reward gain at its lower bound" in rec.reason


def test_min_memory_noise_never_lets_a_saver_through() -> None:
    """Non-inferiority: the saver must keep the floor at its lower bound, so more noise means fewer pass."""
    exact = [_rec(0, 0.50, 10.0, reason="baseline", se=0.001), _rec(1, 0.43, 3.0, se=0.001)]
    # kept (0.43 - 0.1) / 0.4 = 0.825, SE ~0.004: lower bound 0.817 >= 0.8
    assert recommend(exact, policy="min-memory").record.number == 1
    noisy = [_rec(0, 0.50, 10.0, reason="baseline", se=0.01), _rec(1, 0.43, 3.0, se=0.01)]
    # the same means with SE 0.01: kept 0.825 +- 0.037, lower bound 0.75 < 0.8, so the baseline stays
    rec = recommend(noisy, policy="min-memory")
    assert rec.record.number == 0
    assert "#1" in rec.reason and "more seeds (--reward-seeds) or longer reward runs" in rec.reason


def _seeds(*per_step: tuple[int, tuple[float, ...]]) -> tuple[RewardPoint, ...]:
    return tuple(RewardPoint(step=step, seed_rewards=values) for step, values in per_step)


def test_kept_gain_is_paired_by_seed_and_judged_at_its_lower_bound() -> None:
    from autotune.tuner import gain

    untrained = (0.125, 0.125)
    base = _rec(0, 0.40, 10.0, reason="baseline", points=_seeds((0, untrained), (32, (0.41, 0.39))))
    # seed by seed this config is 0.01 under the baseline: the seeds' own luck (0.41 vs 0.39) cancels out
    close = _rec(1, 0.39, 3.0, points=_seeds((0, untrained), (32, (0.40, 0.38))))
    kept = gain.kept(close.result, base.result)
    # the paired difference is exact (0.01 at both seeds); what is left is the baseline gain's own SE
    # (0.01) through the ratio: 0.01 / 0.275 * 0.01 / 0.275
    assert kept is not None and kept.value == pytest.approx(1 - 0.01 / 0.275)
    assert kept.se == pytest.approx(0.01 / 0.275 * 0.01 / 0.275)
    assert recommend([base, close], policy="min-memory").record.number == 1
    # the same mean with seeds that disagree with the baseline's (+0.04, -0.06): SE 0.05 of a 0.275 gain
    loose = _rec(2, 0.39, 3.0, points=_seeds((0, untrained), (32, (0.45, 0.33))))
    loose_kept = gain.kept(loose.result, base.result)
    assert loose_kept.value == pytest.approx(kept.value) and loose_kept.lower < 0.9
    assert recommend([base, loose], policy="min-memory").record.number == 0


def test_a_spread_that_is_small_by_chance_gives_way_to_the_studys_pooled_one() -> None:
    """A few seeds give a config's own spread few degrees of freedom; the study's pooled spread (and
    Student's t for its degrees of freedom) stops a config near the floor passing on a lucky rerun."""
    from autotune.tuner import gain

    assert gain.bound_factor(1) == 12.71 and gain.bound_factor(3) == 3.18 and gain.bound_factor(100) == 2.0
    untrained = (0.125,) * 4
    base = _rec(0, 0.40, 10.0, reason="baseline", points=_seeds((0, untrained), (32, (0.41, 0.39, 0.41, 0.39))))
    # keeps 0.84 on average; its four seeds differ from the baseline's by the same amount (own spread 0)
    lucky = _rec(1, 0.356, 3.0, points=_seeds((0, untrained), (32, (0.366, 0.346, 0.366, 0.346))))
    alone = recommend([base, lucky], policy="min-memory")
    assert alone.record.number == 1                       # on its own, the zero spread lets it through
    # two other configs of the study show the usual spread of a difference between seeds
    others = [_rec(2, 0.40, 12.0, points=_seeds((0, untrained), (32, (0.45, 0.35, 0.37, 0.43)))),
              _rec(3, 0.40, 11.0, points=_seeds((0, untrained), (32, (0.37, 0.43, 0.45, 0.35))))]
    pooled = recommend([base, lucky, *others], policy="min-memory")
    assert pooled.rule is not None and pooled.rule.pooled is not None and pooled.rule.pooled[1] == 9
    assert not pooled.rule.keeps(lucky) and pooled.rule.undecided(lucky) and pooled.record.number == 0


def test_one_noisy_config_does_not_widen_the_others_bounds() -> None:
    from autotune.tuner import gain

    untrained = (0.125, 0.125)
    base = _rec(0, 0.40, 10.0, reason="baseline", points=_seeds((0, untrained), (32, (0.41, 0.39))))
    steady = [_rec(1, 0.40, 3.0, points=_seeds((0, untrained), (32, (0.42, 0.38)))),
              _rec(2, 0.40, 4.0, points=_seeds((0, untrained), (32, (0.40, 0.40)))),
              _rec(3, 0.40, 5.0, points=_seeds((0, untrained), (32, (0.425, 0.375))))]
    chaotic = _rec(4, 0.40, 6.0, points=_seeds((0, untrained), (32, (0.60, 0.20))))
    calm = recommend([base, *steady], policy="min-memory").rule
    noisy = recommend([base, *steady, chaotic], policy="min-memory").rule
    assert calm is not None and noisy is not None
    # the typical spread is the median over keys: the chaotic key barely moves the others' bounds ...
    assert noisy.kept(steady[0]).se == pytest.approx(calm.kept(steady[0]).se, rel=0.3)
    # ... while its own bound stays as wide as its own seeds say
    assert noisy.kept(chaotic).se > 3 * noisy.kept(steady[0]).se
    assert gain.moderated_variance(0.0, 1, (0.01, 4)) == (pytest.approx(0.0075), 4)


def test_a_config_that_shares_the_baselines_reward_run_keeps_exactly_all_of_it() -> None:
    """Memory knobs do not change the reward key, so such a config reads the baseline's own run: its
    kept gain is 1 with no error, however wide the study's typical spread (a rerun at seeds 10 and 11
    showed AdamW + offloads as "1.00 ± 0.15, under the floor" before this held)."""
    from autotune.tuner import gain

    untrained = (0.125, 0.125)
    base_points = _seeds((0, untrained), (16, (0.25, 0.20)), (32, (0.41, 0.39)))
    base = _rec(0, 0.40, 46.0, reason="baseline", points=base_points)
    offloaded = _rec(1, 0.40, 37.0, points=base_points)
    wide = [_rec(2, 0.35, 21.0, points=_seeds((0, untrained), (16, (0.2, 0.1)), (32, (0.50, 0.20)))),
            _rec(3, 0.30, 30.0, points=_seeds((0, untrained), (16, (0.1, 0.2)), (32, (0.20, 0.40))))]
    rec = recommend([base, offloaded, *wide], policy="min-memory")
    assert rec.rule is not None and rec.rule.pooled is not None and rec.rule.pooled[0] > 0.001
    kept = rec.rule.kept(offloaded)
    assert kept is not None and (kept.value, kept.se) == (1.0, 0.0) and rec.rule.keeps(offloaded)
    assert [est.value for _, est in gain.kept_curve(offloaded.result, base.result)] == [1.0, 1.0]
    assert rec.record.number == 1


def test_a_baseline_that_did_not_learn_leaves_the_choice_to_memory_and_says_so() -> None:
    base = _rec(0, 0.1317, 46.0, reason="baseline", initial=0.1251, points=_seeds((0, (0.1251, 0.1251)),
                                                                                   (8, (0.1317, 0.1297))))
    other = _rec(1, 0.1344, 21.0, initial=0.1251, points=_seeds((0, (0.1251, 0.1251)), (8, (0.1344, 0.1258))))
    rec = recommend([base, other], policy="min-memory")
    assert rec.rule is not None and not rec.rule.judged
    assert rec.record.number == 1 and "on memory alone" in rec.reason and "did not learn" in rec.reason
    text = summary(rec)
    assert "not compared" in text and "rests on memory alone" in text and "%" not in text.split("peak")[0]
    # max-reward has nothing to maximise either
    assert recommend([base, other], policy="max-reward").record.number == 1


def test_summary_gives_the_kept_gain_and_its_learning_curve() -> None:
    untrained = (0.125, 0.125)
    base = _rec(0, 0.40, 10.0, reason="baseline",
                points=_seeds((0, untrained), (8, (0.30, 0.30)), (16, (0.38, 0.37)), (32, (0.41, 0.39))))
    corner = _rec(1, 0.39, 3.0,
                  points=_seeds((0, untrained), (8, (0.20, 0.21)), (16, (0.30, 0.31)), (32, (0.40, 0.38))))
    text = summary(recommend([base, corner], policy="min-memory"))
    assert "reward gain     keeps 0.96 ± 0.00 of the baseline's gain" in text
    assert "at step 8" in text and "at step 32" in text and "still catching up" in text
    assert "reward runs     the baseline's gain 0.275 ± 0.01 over the untrained policy after 32 steps" in text


def test_summary_never_compares_with_a_baseline_that_did_not_complete() -> None:
    over = _rec(0, 0.50, 46.1, reason="baseline", status="prescreened", feasible=False)
    chosen = _rec(1, 0.51, 20.0, memory_source="llama-1b, planned (simulator)",
                  reward_source="smollm2-135m proxy, 8 steps")
    text = summary(recommend([over, chosen], budget_gb=40.0))
    assert "the baseline (AdamW, no interventions) needs more than the budget: 46.1 GiB planned" in text
    assert "baseline 46.1 GiB, -57%; 0.43x" in text
    assert "memory: llama-1b, planned (simulator); reward: smollm2-135m proxy, 8 steps" in text
    # a real OOM's partial peak is never the comparison: the stored plan's figure is
    oom = _rec(0, None, 0.03, reason="baseline", status="oom", feasible=False)
    text = summary(recommend([oom, chosen], baseline_planned_gb=46.1))
    assert "needs more than the budget: 46.1 GiB planned" in text and "0.03" not in text


def test_outputs_name_the_sources(tmp_path: Path) -> None:
    chosen = _rec(1, 0.51, 20.0, memory_source="llama-1b, planned (simulator)",
                  reward_source="smollm2-135m proxy, 8 steps")
    _, yaml_path = write_outputs(recommend([chosen]), [chosen], tmp_path)
    head = yaml_path.read_text().splitlines()[:3]
    assert head == ["# autotune recommendation: trial #1, policy fastest",   # the default policy
                    "# memory: llama-1b, planned (simulator)", "# reward: smollm2-135m proxy, 8 steps"]
    assert TrialConfig.load(yaml_path) == chosen.config
    doc = json.loads((tmp_path / "pareto.json").read_text())
    assert doc["reward_source"] == "smollm2-135m proxy, 8 steps"
    assert doc["front"][0]["memory_source"] == "llama-1b, planned (simulator)"


def test_the_stored_policy_drives_the_study_recommendation() -> None:
    import optuna

    study = optuna.create_study(directions=["maximize", "minimize"])
    assert stored_policy(study) == Policy()
    store_policy(study, Policy(name="min-memory", min_reward_ratio=0.5))
    assert recommend_study(study, RECORDS).record.number == recommend(RECORDS, policy="min-memory",
                                                                      min_reward_ratio=0.5).record.number == 1
    with pytest.raises(ConfigError):
        store_policy(study, Policy(name="vibes"))


def test_fastest_picks_the_faster_of_two_fitting_configs_that_keep_the_reward() -> None:
    records = [_rec(0, 0.50, 30.0, reason="baseline", step=2.0, step_time_source="predicted (A100-80)"),
               _rec(1, 0.50, 20.0, step=1.5), _rec(2, 0.50, 10.0, step=1.8),
               _rec(3, 0.30, 12.0, step=0.5)]        # fastest of all, but it keeps only half the baseline's gain
    assert recommend(records, policy="fastest", budget_gb=40.0).record.number == 1
    # within 15 GiB only #2 keeps the reward (#3 is faster but does not qualify)
    assert recommend(records, policy="fastest", budget_gb=15.0).record.number == 2
    # equal step times: the lower peak wins
    tie = records[:1] + [_rec(1, 0.50, 20.0, step=2.0)]
    assert recommend(tie, policy="fastest", budget_gb=40.0).record.number == 1


def test_fastest_keeps_the_baseline_when_it_fits_and_nothing_is_faster_and_says_so_first() -> None:
    base = _rec(0, 0.50, 46.1, reason="baseline", step=2.0, step_time_source="predicted (A100-80)")
    saver = _rec(1, 0.50, 30.0, step=2.6)        # smaller, but slower: not what an 80 GiB card wants
    rec = recommend([base, saver], budget_gb=80.0)          # the default policy
    assert rec.policy == "fastest" and rec.record.number == 0
    text = summary(rec)
    assert text.splitlines()[0] == ("the baseline (AdamW, no interventions) fits the 80 GiB budget with 33.9 GiB "
                                    "to spare; nothing needs to change.")
    assert "step time       2 s predicted (A100-80)" in text
    # on a 40 GiB card the baseline does not fit: the saver is chosen and no such line is printed
    small = recommend([base, saver], budget_gb=40.0)
    assert small.record.number == 1 and "nothing needs to change" not in summary(small)


def test_fastest_and_min_memory_share_one_reward_rule() -> None:
    from autotune.tuner.recommend import reward_rule

    base = _rec(0, 0.50, 30.0, reason="baseline", step=2.0, se=0.001)
    pool = [base, _rec(1, 0.49, 10.0, step=1.0, se=0.001), _rec(2, 0.40, 5.0, step=0.5, se=0.001)]
    rule = reward_rule(pool, base)
    # gains over the untrained 0.1: #1 keeps 0.975 (lower bound ~0.97), #2 keeps 0.75 (under the 0.8 floor)
    assert [r.number for r in pool if rule.keeps(r)] == [0, 1]
    assert recommend(pool, policy="fastest").record.number == 1
    assert recommend(pool, policy="min-memory").record.number == 1


def test_step_time_source_and_ratio_reach_pareto_json(tmp_path: Path) -> None:
    measured = _rec(0, 0.5, 10.0, reason="baseline", step=3.0, step_time_source="measured (cuda)")
    measured = TrialRecord(**{**measured.__dict__, "result": TrialResult(
        **{**measured.result.__dict__, "predicted_step_time_s": 2.0})})
    write_outputs(recommend([measured]), [measured], tmp_path)
    row = json.loads((tmp_path / "pareto.json").read_text())["front"][0]
    assert row["step_time_source"] == "measured (cuda)" and row["step_time_ratio"] == pytest.approx(1.5)
    # a result written before step_time_source existed still loads
    old = measured.result.to_dict()
    del old["step_time_source"], old["predicted_step_time_s"]
    assert TrialResult.from_dict(old).step_time_source == ""
