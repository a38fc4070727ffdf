"""Smoke tests of the paper-reproduction benchmarks: tiny settings, real code paths, expected columns.

The pure helpers (ordering claims, best combination, hypervolume, the min-memory pick) are checked
against figures worked out by hand.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import frugal_pretrain as fp, rlhf_fragmentation as rf, search_quality as sq
from benchmarks.common import OutputDirs


def _dirs(tmp_path: Path) -> OutputDirs:
    return OutputDirs(raw=tmp_path / "raw", img=tmp_path / "img")


def _csv_header(path: Path) -> list[str]:
    with path.open() as handle:
        return next(csv.reader(handle))


# -- FRUGAL pretraining --------------------------------------------------------------------------
TINY_PRETRAIN = dataclasses.replace(
    fp.REDUCED, hidden=32, layers=2, intermediate=64, heads=2, seq_len=16, batch=2, steps=4, update_gap=2,
    evals=1, val_batches=1, corpus_bytes=50_000, seeds=(0,),
)


def test_frugal_pretrain_runs_and_writes_its_columns(tmp_path: Path) -> None:
    summary = fp.main([], dirs=_dirs(tmp_path), settings=TINY_PRETRAIN)

    assert [s.method for s in summary] == [m.name for m in fp.METHODS]
    header = _csv_header(tmp_path / "raw" / "frugal_pretrain.csv")
    for column in ("method", "seed", "val_loss", "val_ppl", "state_bytes", "step_time_s", "opt_step_time_s"):
        assert column in header
    assert (tmp_path / "img" / "frugal_pretrain.png").stat().st_size > 0
    saved = json.loads((tmp_path / "raw" / "frugal_pretrain.json").read_text())
    assert {"machine", "rows", "summary", "ordering", "settings"} <= set(saved)


def test_frugal_state_bytes_match_the_partition(tmp_path: Path) -> None:
    # AdamW keeps two fp32 moments per parameter (plus one step scalar per tensor); FRUGAL at ρ = 0
    # keeps them only for the non-eligible parameters: embeddings, LM head and norms.
    model = fp.build_model(TINY_PRETRAIN, seed=0)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    non_eligible = 2 * 256 * config.hidden_size + (2 * config.num_hidden_layers + 1) * config.hidden_size
    rows = {r.method: r for r in fp.run(TINY_PRETRAIN, [m for m in fp.METHODS if m.name in ("adamw", "frugal-0")])}

    assert rows["adamw"].state_bytes == pytest.approx(8 * n_params, rel=0.01)
    assert rows["frugal-0"].state_bytes == pytest.approx(8 * non_eligible, rel=0.02)


def test_ordering_claims_compare_mean_losses() -> None:
    def row(method: str, loss: float) -> fp.SummaryRow:
        return fp.SummaryRow(method=method, seeds=1, val_loss=loss, val_loss_std=0.0, val_ppl=0.0, state_bytes=0,
                             state_ratio=1.0, step_time_ratio=1.0, opt_step_time_ratio=1.0)

    paper_like = [row("adamw", 2.00), row("frugal-0.25", 2.005), row("frugal-0", 2.10), row("galore", 2.30),
                  row("badam", 2.305)]
    assert all(fp.ordering_checks(paper_like).values())
    reversed_ = [row("adamw", 2.3), row("frugal-0.25", 2.2), row("frugal-0", 2.1)]
    checks = fp.ordering_checks(reversed_)
    assert checks == {"adamw ≳ frugal-0.25": False, "frugal-0.25 > frugal-0": False}


# -- RLHF memory ---------------------------------------------------------------------------------
def test_rlhf_fragmentation_plans_each_intervention(tmp_path: Path) -> None:
    shape = rf.WorkloadShape(batch_size=2, prompt_len=4, gen_len=2, dtype="float32")
    chosen = [i for i in rf.INTERVENTIONS if i.name in ("none", "empty_cache after every phase")]
    tiny = rf.Pairing(name="tiny", actor="llama-tiny")
    rows = rf.main(["--cpu-steps", "0"], dirs=_dirs(tmp_path), shape=shape, pairings=[tiny], interventions=chosen)

    assert [r.intervention for r in rows][:2] == ["none", "empty_cache after every phase"]
    assert all(r.status == "ok" for r in rows)
    assert rows[0].reserved_vs_none == 1.0
    for r in rows:
        assert r.peak_allocated_bytes <= r.peak_reserved_bytes
        assert r.peak_phase in rf.PHASES
    header = _csv_header(tmp_path / "raw" / "rlhf_fragmentation.csv")
    for column in ("pairing", "intervention", "peak_reserved_bytes", "peak_allocated_bytes", "fragmentation",
                   "peak_phase", "reserved_vs_none"):
        assert column in header
    assert (tmp_path / "img" / "rlhf_fragmentation.png").stat().st_size > 0


def _plan_row(name: str, reserved: int) -> rf.PlanRow:
    return rf.PlanRow(pairing="p", intervention=name, status="ok", peak_reserved_bytes=reserved,
                      peak_allocated_bytes=reserved, fragmentation=0.0, peak_phase="actor_train",
                      reserved_vs_none=None)


def test_best_combination_takes_the_best_helpful_intervention_of_each_kind() -> None:
    rows = [_plan_row("none", 100), _plan_row("empty_cache after generation", 90),
            _plan_row("empty_cache after every phase", 80), _plan_row("gradient checkpointing", 70),
            _plan_row("expandable_segments", 100), _plan_row("max_split_size_mb 128", 120)]
    combo = rf.best_combination(rows, rf.INTERVENTIONS)

    assert combo.name == "best combination: gradient checkpointing + empty_cache after every phase"
    overrides = dict(combo.overrides)
    assert overrides["memory.empty_cache_after"] == rf.PHASES
    assert overrides["memory.actor_gradient_checkpointing"] is True
    assert not any(key.startswith("memory.allocator") for key in overrides)  # neither allocator setting helped
    assert rf.best_combination([_plan_row("none", 100), _plan_row("ZeRO stage 1", 100)], rf.INTERVENTIONS) is None


def test_reserved_ratios_are_per_pairing() -> None:
    rows = [dataclasses.replace(_plan_row(name, reserved), pairing=pairing)
            for pairing, name, reserved in (("a", "none", 200), ("a", "x", 150), ("b", "none", 100), ("b", "x", 150))]
    assert [r.reserved_vs_none for r in rf.with_ratios(rows)] == [1.0, 0.75, 1.0, 1.5]


def test_cpu_check_runs_real_iterations() -> None:
    shape = rf.WorkloadShape(batch_size=2, prompt_len=4, gen_len=2, dtype="float32")
    rows = rf.cpu_check(2, shape=shape, pairing=rf.Pairing(name="tiny", actor="llama-tiny"))

    assert [r.intervention for r in rows] == list(rf.CPU_INTERVENTIONS)
    assert all(r.status == "ok" and r.pairing == "tiny x2 iterations" for r in rows)
    assert rows[0].reserved_vs_none == 1.0
    for r in rows:
        assert len(r.phase_reserved_bytes) == len(rf.PHASES) and r.peak_phase in rf.PHASES
        assert max(r.phase_reserved_bytes) == r.peak_reserved_bytes


# -- search quality ------------------------------------------------------------------------------
def _point(reward: float, peak: float, feasible: bool = True, se: float = 0.0) -> sq.Point:
    return sq.Point(label=f"{reward}@{peak}", reward=reward, reward_se=se, peak_reserved_gb=peak, feasible=feasible)


def test_hypervolume_is_the_dominated_area() -> None:
    # reference (reward floor 0, budget 2): one point (0.5, 1) dominates a 0.5 x 1 box; adding
    # (0.25, 0.5) adds the strip 0.25 x 0.5; an infeasible point adds nothing.
    assert sq.hypervolume([_point(0.5, 1.0)], 2.0, 0.0) == pytest.approx(0.5)
    points = [_point(0.5, 1.0), _point(0.25, 0.5), _point(0.9, 0.1, feasible=False)]
    assert sq.hypervolume(points, 2.0, 0.0) == pytest.approx(0.5 + 0.125)
    # a point at or below the reward floor, or over the budget, dominates nothing
    assert sq.hypervolume([_point(0.2, 1.0), _point(0.9, 2.5)], 2.0, 0.2) == 0.0


def test_grid_pick_takes_the_lowest_peak_at_98_percent_of_the_baseline_reward() -> None:
    baseline = _point(0.50, 1.0)
    points = [baseline, _point(0.495, 0.55), _point(0.40, 0.2), _point(0.51, 0.7)]
    # floor 0.98 * 0.50 = 0.49: 0.495 @ 0.55 is the lowest peak above it; 0.40 @ 0.2 is below it
    assert sq.grid_pick(points, baseline) == points[1]
    # within two standard errors of the floor counts as a tie
    tied = _point(0.485, 0.3, se=0.004)
    assert sq.grid_pick([*points, tied], baseline) == tied
    assert not sq.goal_met(points[1], baseline)            # only 45% lower
    assert sq.goal_met(_point(0.49, 0.5), baseline)        # 50% lower at exactly 98%
    assert not sq.goal_met(_point(0.48, 0.4), baseline)    # reward below 98%
    assert [p.peak_reserved_gb for p in sq.front(points)] == [0.2, 0.55, 0.7]


def test_grid_starts_with_the_baseline_and_covers_every_combination(tmp_path: Path) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text("base: {device: cpu}\n"
                          "dimensions:\n  optimizer.name: [adamw, frugal]\n"
                          "  memory.actor_gradient_checkpointing: [false, true]\n"
                          "  memory.offload_reference: [false, true]\n"
                          "objectives:\n  - {metric: reward, direction: maximize}\n"
                          "  - {metric: peak_reserved_gb, direction: minimize}\n")
    from autotune.tuner.space import load_space

    configs = sq.grid_configs(load_space(space_file))
    assert len(configs) == 2 * 2 * 2
    first = configs[0]
    assert first.optimizer.name == "adamw" and not first.memory.actor_gradient_checkpointing
    assert not first.memory.offload_reference
    assert len({c.config_hash() for c in configs}) == len(configs)


@pytest.mark.slow
def test_search_quality_runs_grid_and_tuner(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("base: {device: cuda}\n"
                     "dimensions:\n  optimizer.name: [adamw, frugal]\n  memory.offload_reference: [false, true]\n"
                     "objectives:\n  - {metric: reward, direction: maximize}\n"
                     "  - {metric: peak_reserved_gb, direction: minimize}\n"
                     "constraints:\n  - peak_reserved_gb <= budget\n")
    settings = dataclasses.replace(sq.REDUCED, space=space, checkpoints=(2, 4), workload=sq.REDUCED.workload + (
        ("workload.steps", 2), ("workload.ppo_epochs", 1)))
    report = sq.main(["--cache", str(tmp_path / "cache")], dirs=_dirs(tmp_path), settings=settings)

    assert len(report.grid) == 4 and report.reward_keys == 2   # offload is reward-neutral: 2 keys for 4 configs
    # offloading the reference model shrinks the planned peak
    assert report.grid[1].peak_reserved_gb < report.grid[0].peak_reserved_gb
    assert [r.trials for r in report.checkpoints] == [2, 4]
    # four trials (the grid, the advisor aside) need at most the grid's two reward runs
    assert report.checkpoints[-1].reward_runs <= 2 and report.checkpoints[-1].cache_hit_rate >= 0.5
    assert report.comparison[0].peak_vs_baseline == 1.0
    for name, columns in (("search_quality", ("trials", "hv_share", "reward_runs", "cache_hit_rate", "goal_met")),
                          ("search_quality_comparison", ("contender", "peak_reserved_gb", "reward", "phases_gb")),
                          ("search_quality_grid", ("label", "reward", "peak_reserved_gb", "feasible"))):
        header = _csv_header(tmp_path / "raw" / f"{name}.csv")
        assert all(c in header for c in columns), (name, header)
    assert (tmp_path / "img" / "search_quality.png").stat().st_size > 0
