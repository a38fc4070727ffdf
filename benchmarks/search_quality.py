"""How good is the tuner's search? Its front and recommendation against an exhaustive grid.

On `llama-tiny` PPO (real CPU trials, memory through the allocator simulator), the tuner searches
the default space (`search_spaces/default.yaml`, rebased onto the CPU) for 30 trials with TPE and
the advisor. Ground truth is an exhaustive grid over a reduced space (the optimizer and the main
interventions), run in-process with the same workload. The benchmark reports:

- hypervolume of the tuner's feasible front after 10, 20 and 30 trials, as a share of the grid's,
  in the (reward, peak reserved GiB) plane with reference point (reward 0, the budget);
- the baseline (AdamW, no interventions), the best single intervention, the grid's own pick and
  the tuner's recommendation (policy `min-memory`, reward at least 98% of the best), side by side.

Goals (from the issue): at least 95% of the grid's hypervolume within 30 trials, and a recommended
config with at least 40% lower peak reserved than the baseline at no less than 98% of its reward.

Run `python -m benchmarks.search_quality` (1 sampler seed) or `--full` (3 sampler seeds, a longer
RLHF run per trial so that reward differences are less noisy).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autotune.config import TrialConfig
from autotune.result import TrialRecord, TrialResult
from benchmarks.common import (
    TAG_HELP, THREADS_HELP, Column, OutputDirs, num, output_name, pct, print_table, pyplot,
    write_results,
)

logger = logging.getLogger(__name__)

NAME = "search_quality"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "default.yaml"
MIN_REWARD_RATIO = 0.98


# The reduced space the grid covers exhaustively: each entry is one dimension, each option a set of overrides.
GRID: dict[str, tuple[tuple[tuple[str, Any], ...], ...]] = {
    "optimizer": ((("optimizer.name", "adamw"),),
                  (("optimizer.name", "frugal"), ("optimizer.partition.density", 0.25)),
                  (("optimizer.name", "frugal"), ("optimizer.partition.density", 0.0))),
    "checkpointing": ((), (("memory.actor_gradient_checkpointing", True),
                           ("memory.critic_gradient_checkpointing", True))),
    "offload ref+reward": ((), (("memory.offload_reference", True), ("memory.offload_reward", True))),
    "expandable": ((), (("memory.allocator.expandable_segments", True),)),
}


@dataclass(frozen=True, kw_only=True)
class QualitySettings:
    """The workload every trial runs, the search length, and the sampler seeds."""

    workload: tuple[tuple[str, Any], ...]   # dotted TrialConfig overrides for llama-tiny PPO on the CPU
    checkpoints: tuple[int, ...] = (10, 20, 30)
    seeds: tuple[int, ...] = (0,)
    grid_dims: tuple[str, ...] = ("optimizer", "checkpointing", "offload ref+reward")
    budget_factor: float = 1.2     # budget = this x the baseline's peak reserved: room to explore, not unlimited
    trial_timeout_s: float = 900.0

    @property
    def n_trials(self) -> int:
        return max(self.checkpoints)


TINY_PPO = (("model.actor", "llama-tiny"), ("algorithm", "ppo"), ("device", "cpu"),
             ("workload.prompt_len", 4), ("workload.seed", 0))
REDUCED = QualitySettings(workload=TINY_PPO + (("workload.batch_size", 4), ("workload.micro_batch", 4),
                                                ("workload.gen_len", 8), ("workload.steps", 8)))
FULL = QualitySettings(workload=TINY_PPO + (("workload.batch_size", 8), ("workload.micro_batch", 8),
                                             ("workload.gen_len", 8), ("workload.steps", 24)),
                       seeds=(0, 1, 2), grid_dims=tuple(GRID))


@dataclass(frozen=True, kw_only=True)
class Point:
    """One measured config: its label and the figures the comparison uses."""

    label: str
    status: str
    reward: float | None
    peak_reserved_gb: float | None
    fragmentation: float | None
    feasible: bool
    changes: int = 0            # grid dimensions changed from the baseline (0 for tuner trials)


@dataclass(frozen=True, kw_only=True)
class CheckpointRow:
    """The tuner's study after its first `trials` trials, for one sampler seed."""

    seed: int
    trials: int
    feasible: int
    hypervolume: float
    grid_hypervolume: float
    hv_share: float
    recommended: str
    peak_vs_baseline: float | None     # recommended peak reserved / baseline's
    reward_vs_baseline: float | None
    goal_met: bool                     # >= 40% lower peak at >= 98% of the baseline's reward


@dataclass(frozen=True, kw_only=True)
class ComparisonRow:
    """One contender against the baseline."""

    contender: str
    config: str
    reward: float | None
    peak_reserved_gb: float | None
    fragmentation: float | None
    peak_vs_baseline: float | None
    reward_vs_baseline: float | None


def describe(cfg: TrialConfig) -> str:
    """A short human label of what a config changes from the product defaults."""
    mem, opt, part = cfg.memory, cfg.optimizer, cfg.optimizer.partition
    frugal = f"frugal ρ={part.density:.2g} {part.placement} {part.state_free_rule}"
    parts = ["adamw" if opt.name == "adamw" else frugal]
    flags = {
        # the advisor may move the critic to FRUGAL too; that changes memory and reward alike
        "critic frugal": opt.critic == "frugal",
        "ckpt": mem.actor_gradient_checkpointing or mem.critic_gradient_checkpointing,
        "offload ref": mem.offload_reference, "offload rwd": mem.offload_reward,
        f"zero{mem.zero_stage}": mem.zero_stage > 0, "opt offload": mem.offload_optimizer,
        "static kv": mem.static_kv_cache, "expandable": mem.allocator.expandable_segments,
        f"max_split {mem.allocator.max_split_size_mb}": mem.allocator.max_split_size_mb is not None,
        f"gc {mem.allocator.garbage_collection_threshold}": mem.allocator.garbage_collection_threshold is not None,
        f"roundup {mem.allocator.roundup_power2_divisions}": mem.allocator.roundup_power2_divisions is not None,
        "empty_cache " + "/".join(p[:3] for p in mem.empty_cache_after): bool(mem.empty_cache_after),
    }
    return " + ".join(parts + [name for name, on in flags.items() if on])


def to_point(cfg: TrialConfig, result: TrialResult, *, budget_gb: float | None, feasible: bool = True,
             changes: int = 0) -> Point:
    """A Point from a trial result; infeasible when not ok or over the budget."""
    peak = result.memory.peak_reserved_gb if result.memory is not None else None
    within = peak is not None and (budget_gb is None or peak <= budget_gb)
    return Point(label=describe(cfg), status=result.status, reward=result.reward, peak_reserved_gb=peak,
                 fragmentation=result.memory.fragmentation if result.memory is not None else None,
                 feasible=feasible and result.ok and within and result.reward is not None, changes=changes)


def grid_configs(base: TrialConfig, dims: Sequence[str]) -> list[tuple[TrialConfig, int]]:
    """Every combination of the named GRID dimensions on `base`, with how many differ from the first option.

    The first combination is the baseline: AdamW with no interventions.
    """
    options = [GRID[d] for d in dims]
    out = []
    for combo in itertools.product(*(range(len(o)) for o in options)):
        overrides = [o for dim, i in zip(options, combo) for o in dim[i]]
        out.append((base.replace(**dict(overrides)), sum(i > 0 for i in combo)))
    return out


def run_grid(base: TrialConfig, dims: Sequence[str]) -> list[tuple[TrialConfig, TrialResult, int]]:
    """Run every grid config in this process (results are deterministic for a seed on the CPU)."""
    from autotune.rlhf.trial import run_trial

    results = []
    for i, (cfg, changes) in enumerate(grid_configs(base, dims)):
        result = run_trial(cfg)
        logger.info("grid %d: %s -> %s reward %s peak %.4f GiB", i, describe(cfg), result.status, result.reward,
                    result.memory.peak_reserved_gb if result.memory else float("nan"))
        results.append((cfg, result, changes))
    return results


def hypervolume(points: Sequence[Point], budget_gb: float) -> float:
    """Area of the (reward up, peak down) plane the feasible points dominate, reference (0, budget)."""
    from optuna._hypervolume import compute_hypervolume  # Optuna's exact implementation

    pts = [(-p.reward, p.peak_reserved_gb) for p in points
           if p.feasible and p.reward > 0 and p.peak_reserved_gb < budget_gb]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.array(pts), np.array([0.0, budget_gb])))


def pick(points: Sequence[Point]) -> Point | None:
    """The min-memory pick: lowest peak among feasible points with reward >= 98% of the best."""
    feasible = [p for p in points if p.feasible]
    if not feasible:
        return None
    best = max(p.reward for p in feasible)
    eligible = [p for p in feasible if p.reward >= best - (1 - MIN_REWARD_RATIO) * abs(best)]
    return min(eligible, key=lambda p: (p.peak_reserved_gb, -p.reward))


def ratios(point: Point | None, baseline: Point) -> tuple[float | None, float | None]:
    """(peak / baseline peak, reward / baseline reward); None where either is missing or zero."""
    if point is None or point.peak_reserved_gb is None or not baseline.peak_reserved_gb:
        return None, None
    reward = point.reward / baseline.reward if point.reward is not None and baseline.reward else None
    return point.peak_reserved_gb / baseline.peak_reserved_gb, reward


def goal_met(point: Point | None, baseline: Point) -> bool:
    """At least 40% lower peak reserved than the baseline at no less than 98% of its reward."""
    peak, _ = ratios(point, baseline)
    if peak is None or point.reward is None or baseline.reward is None:
        return False
    return peak <= 0.6 and point.reward >= MIN_REWARD_RATIO * baseline.reward


def search_space(settings: QualitySettings, budget_gb: float) -> Any:
    """The default space rebased onto this benchmark's llama-tiny CPU workload, with the budget."""
    from autotune.tuner.space import load_space

    space = load_space(DEFAULT_SPACE).rebase(dict(settings.workload))
    return dataclasses.replace(space, budget_gb=budget_gb)


def run_tuner(settings: QualitySettings, seed: int, budget_gb: float) -> list[TrialRecord]:
    """One study of `n_trials` trials (TPE + advisor, real `autotune trial` subprocesses) in a scratch folder."""
    from autotune.tuner.controller import SearchSettings, run_search
    from autotune.tuner.launcher import Launcher

    space = search_space(settings, budget_gb)
    with tempfile.TemporaryDirectory(prefix="autotune-quality-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)   # the study's runs/<study>/ folder goes to the scratch dir
        try:
            outcome = run_search(SearchSettings(
                study=f"quality-{seed}", space=space, n_trials=settings.n_trials, budget_gb=budget_gb,
                sampler="tpe", seed=seed, advisor=True, track=False,
                launcher=Launcher(timeout_s=settings.trial_timeout_s)))
        finally:
            os.chdir(cwd)
    return sorted(outcome.records, key=lambda r: r.number)


def tuner_points(records: Sequence[TrialRecord], budget_gb: float) -> list[Point]:
    return [to_point(r.config, r.result, budget_gb=budget_gb, feasible=r.feasible) for r in records]


def tuner_pick(records: Sequence[TrialRecord], budget_gb: float) -> Point | None:
    """The tuner's own recommendation (policy min-memory, reward >= 98% of the best), or None."""
    from autotune.errors import NoFeasibleTrialError
    from autotune.tuner.recommend import recommend

    try:
        chosen = recommend(list(records), policy="min-memory", budget_gb=budget_gb, min_reward_ratio=MIN_REWARD_RATIO)
    except NoFeasibleTrialError:
        return None
    return to_point(chosen.record.config, chosen.record.result, budget_gb=budget_gb)


def checkpoint_rows(seed: int, records: Sequence[TrialRecord], checkpoints: Sequence[int], budget_gb: float,
                    grid_hv: float, baseline: Point) -> list[CheckpointRow]:
    """Hypervolume share and the tuner's recommendation after the first k trials, for each k."""
    rows = []
    for k in checkpoints:
        first = records[:k]
        rec = tuner_pick(first, budget_gb)
        hv = hypervolume(tuner_points(first, budget_gb), budget_gb)
        peak, reward = ratios(rec, baseline)
        rows.append(CheckpointRow(seed=seed, trials=len(first), feasible=sum(r.feasible for r in first),
                                  hypervolume=hv, grid_hypervolume=grid_hv, hv_share=hv / grid_hv if grid_hv else 0.0,
                                  recommended=rec.label if rec else "-", peak_vs_baseline=peak,
                                  reward_vs_baseline=reward, goal_met=goal_met(rec, baseline)))
    return rows


def comparison(grid: Sequence[Point], picks: dict[str, Point | None]) -> list[ComparisonRow]:
    """Baseline, best single intervention, the grid's pick and the tuner's picks, against the baseline."""
    baseline = next(p for p in grid if p.changes == 0)
    singles = [p for p in grid if p.changes == 1 and p.feasible
               and baseline.reward is not None and p.reward >= MIN_REWARD_RATIO * baseline.reward]
    contenders = {
        "baseline (AdamW, no interventions)": baseline,
        "best single intervention": min(singles, key=lambda p: p.peak_reserved_gb, default=None),
        "grid search (min-memory pick)": pick(grid),
        **picks,
    }
    rows = []
    for name, point in contenders.items():
        peak, reward = ratios(point, baseline)
        rows.append(ComparisonRow(contender=name, config=point.label if point else "-",
                                  reward=point.reward if point else None,
                                  peak_reserved_gb=point.peak_reserved_gb if point else None,
                                  fragmentation=point.fragmentation if point else None,
                                  peak_vs_baseline=peak, reward_vs_baseline=reward))
    return rows


def front(points: Sequence[Point]) -> list[Point]:
    """The feasible (reward up, peak down) Pareto front, by increasing peak."""
    pool = sorted((p for p in points if p.feasible), key=lambda p: (p.peak_reserved_gb, -p.reward))
    out: list[Point] = []
    for p in pool:
        if not out or p.reward > out[-1].reward:
            out.append(p)
    return out


def plot(grid: Sequence[Point], tuner: Sequence[Point], shares: Sequence[float], budget_gb: float, path: Any) -> None:
    """Left: grid and tuner trials in the (peak, reward) plane with both fronts. Right: HV share by trial."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    mib = 1024.0
    left.scatter([p.peak_reserved_gb * mib for p in grid if p.feasible], [p.reward for p in grid if p.feasible],
                 color="lightgray", label="grid configs", zorder=1)
    done = [(i, p) for i, p in enumerate(tuner) if p.feasible]
    left.scatter([p.peak_reserved_gb * mib for _, p in done], [p.reward for _, p in done],
                 c=[i for i, _ in done], cmap="viridis", s=18, label="tuner trials (colour: order)", zorder=2)
    for points, style, label in ((grid, "k--", "grid front"), (tuner, "r-", "tuner front")):
        line = front(points)
        left.step([p.peak_reserved_gb * mib for p in line], [p.reward for p in line], style, where="post", label=label)
    left.axvline(budget_gb * mib, color="tab:red", alpha=0.3, label="budget")
    left.set(xlabel="peak reserved (MiB, simulated GPU)", ylabel="reward (last quarter)", title="llama-tiny PPO")
    left.legend(fontsize=7, loc="lower right")
    right.plot(range(1, len(shares) + 1), [100 * s for s in shares], marker=".")
    right.axhline(95, color="tab:green", linestyle="--", label="goal: 95%")
    right.set(xlabel="trials", ylabel="hypervolume, % of the grid's", title="Tuner (TPE + advisor), default space")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CHECKPOINT_COLUMNS = (
    Column(key="seed", header="seed"), Column(key="trials", header="trials"), Column(key="feasible", header="feasible"),
    Column(key="hv_share", header="HV / grid HV", fmt=pct),
    Column(key="recommended", header="recommended (min-memory)"),
    Column(key="peak_vs_baseline", header="peak / baseline", fmt=num),
    Column(key="reward_vs_baseline", header="reward / baseline", fmt=num),
    Column(key="goal_met", header="-40% peak at ≥98% reward"),
)
COMPARISON_COLUMNS = (
    Column(key="contender", header="contender"), Column(key="config", header="config"),
    Column(key="reward", header="reward", fmt=num), Column(key="peak_reserved_gb", header="peak MiB",
                                                           fmt=lambda v: "-" if v is None else f"{v * 1024:.1f}"),
    Column(key="fragmentation", header="fragmentation", fmt=pct),
    Column(key="peak_vs_baseline", header="peak / baseline", fmt=num),
    Column(key="reward_vs_baseline", header="reward / baseline", fmt=num),
)


@dataclass(frozen=True, kw_only=True)
class QualityReport:
    """Everything the benchmark measured; `trials` and `hv_shares` are the first seed's study, trial by trial."""

    grid: tuple[Point, ...]
    checkpoints: tuple[CheckpointRow, ...]
    comparison: tuple[ComparisonRow, ...]
    trials: tuple[Point, ...]
    hv_shares: tuple[float, ...]
    budget_gb: float


def run(settings: QualitySettings) -> QualityReport:
    """Grid first (it fixes the baseline and the budget), then one tuner study per sampler seed."""
    base = TrialConfig().replace(**dict(settings.workload))
    grid_runs = run_grid(base, settings.grid_dims)
    baseline_peak = next(r.memory.peak_reserved_gb for _, r, changes in grid_runs if changes == 0)
    budget = settings.budget_factor * baseline_peak
    grid = [to_point(c, r, budget_gb=budget, changes=n) for c, r, n in grid_runs]
    baseline, grid_hv = grid[0], hypervolume(grid, budget)
    checkpoints: list[CheckpointRow] = []
    picks: dict[str, Point | None] = {}
    studies: list[list[Point]] = []
    for seed in settings.seeds:
        records = run_tuner(settings, seed, budget)
        checkpoints += checkpoint_rows(seed, records, settings.checkpoints, budget, grid_hv, baseline)
        picks[f"tuner, {len(records)} trials, seed {seed} (min-memory)"] = tuner_pick(records, budget)
        studies.append(tuner_points(records, budget))
    first = studies[0]
    shares = tuple(hypervolume(first[:k], budget) / grid_hv if grid_hv else 0.0 for k in range(1, len(first) + 1))
    return QualityReport(grid=tuple(grid), checkpoints=tuple(checkpoints), comparison=tuple(comparison(grid, picks)),
                         trials=tuple(first), hv_shares=shares, budget_gb=budget)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="3 sampler seeds and 24 RLHF steps per trial")
    parser.add_argument("--trials", type=int, help="override the study length (checkpoints scale with it)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the sampler seeds, e.g. --seeds 1 2")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tag", help=TAG_HELP)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, dirs: OutputDirs | None = None,
         settings: QualitySettings | None = None) -> QualityReport:
    """Run grid and tuner, print both tables, write runs/bench/search_quality*.{json,csv} and the figure.

    Args:
        argv: command-line arguments (`--full`, `--trials N`, `--seeds K [K ...]`, `--threads N`, `--tag TEXT`).
        dirs: where to write (tests pass a temporary folder).
        settings: replaces the settings the arguments choose (tests pass a tiny search).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)   # the trial subprocesses inherit it
    settings = settings or (FULL if args.full else REDUCED)
    if args.trials:
        n = args.trials
        settings = dataclasses.replace(settings, checkpoints=tuple(sorted({max(1, n // 3), max(1, 2 * n // 3), n})))
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    dirs = (dirs or OutputDirs()).ensure()
    name = output_name(NAME, full=args.full, tag=args.tag)
    report = run(settings)
    print_table(f"Tuner vs grid on llama-tiny PPO (budget {report.budget_gb * 1024:.1f} MiB)",
                report.checkpoints, CHECKPOINT_COLUMNS)
    print_table("Recommendation against the baseline", report.comparison, COMPARISON_COLUMNS)
    extra = {"settings": dataclasses.asdict(settings), "budget_gb": report.budget_gb,
             "hv_shares": list(report.hv_shares)}
    write_results(name, report.checkpoints, dirs, extra=extra)
    write_results(f"{name}_comparison", report.comparison, dirs)
    write_results(f"{name}_grid", report.grid, dirs)
    write_results(f"{name}_trials", report.trials, dirs)
    plot(report.grid, report.trials, report.hv_shares, report.budget_gb, dirs.img / f"{name}.png")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
