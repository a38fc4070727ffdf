"""How good is the tuner's search? Its front against the exhaustive grid of the default space.

The flow is the one `autotune search --model llama-1b` takes on a CPU box: memory planned at full
size (fake tensors, allocator simulator), reward from reward runs on the proxy, one per reward key.

- Grid: every config of `search_spaces/default.yaml` (2^7 = 128), each planned once, and one reward
  run per distinct reward key (at most 7). Both are cached under `runs/bench/search_quality_cache/`,
  so a rerun (or a tuner study) never measures a config twice.
- Tuner: the real controller (TPE, advisor, baseline and corner trials, the study's reward cache,
  the min-memory recommendation against the baseline's reward) for 30 trials per sampler seed, with
  `benchmarks/search_lookup.py` as its plan and reward programs, so its trials read the grid's
  measurements instead of repeating them.

It reports, after 10, 20 and 30 trials and for each seed: the tuner's feasible front's hypervolume
as a share of the grid's, in the (reward up, peak reserved down) plane with reference point (the
lowest reward, the budget); reward runs against trials (the reward cache's hit rate); and the
recommendation against the baseline (goal: at most 0.50x its planned peak at >= 98% of its reward).

    python -m benchmarks.search_quality --full   # llama-1b, 3 seeds (the grid: ~1 h on a quiet 2-core box)
    python -m benchmarks.search_quality          # reduced (make bench): llama-tiny, small workload, 1 seed
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotune.config import TrialConfig
from autotune.result import TrialRecord, TrialResult
from autotune.tuner.convergence import hypervolume as exact_hypervolume
from benchmarks import search_lookup as lookup
from benchmarks.common import TAG_HELP, Column, OutputDirs, num, output_name, pct, print_table, pyplot, write_results

logger = logging.getLogger(__name__)

NAME = "search_quality"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "default.yaml"
MIN_REWARD_RATIO = 0.98
PEAK_GOAL = 0.50


@dataclass(frozen=True, kw_only=True)
class QualitySettings:
    """The model and workload, the search length, the sampler seeds and the budget."""

    model: str = "llama-1b"
    space: Path = DEFAULT_SPACE
    workload: tuple[tuple[str, Any], ...] = ()   # dotted TrialConfig overrides on the product defaults
    reward_proxy: str | None = None               # None: autotune's default proxy for the model (or the model)
    checkpoints: tuple[int, ...] = (10, 20, 30)
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_gb: float = 80.0                       # the search's own default without a GPU
    workers: int = 2                              # grid measurements side by side (each single-threaded)

    @property
    def n_trials(self) -> int:
        return max(self.checkpoints)


FULL = QualitySettings()
REDUCED = QualitySettings(model="llama-tiny", seeds=(0,), workload=(
    ("workload.batch_size", 2), ("workload.micro_batch", 2), ("workload.prompt_len", 4), ("workload.gen_len", 4),
    ("workload.steps", 4)))


@dataclass(frozen=True, kw_only=True)
class Point:
    """One measured config: its label and the figures the comparison uses."""

    label: str
    reward: float | None
    reward_se: float | None
    peak_reserved_gb: float | None
    feasible: bool
    phases_gb: str = ""          # per-phase planned peak reserved, "generation 18.4 / experience 18.6 / ..."


@dataclass(frozen=True, kw_only=True)
class CheckpointRow:
    """The tuner's study after its first `trials` trials, for one sampler seed."""

    seed: int
    trials: int
    feasible: int
    hv_share: float
    reward_runs: int             # distinct reward keys among these trials: the reward runs they needed
    cache_hit_rate: float        # 1 - reward_runs / trials
    recommended: str
    peak_vs_baseline: float | None
    reward_vs_baseline: float | None
    goal_met: bool               # <= 0.50x the baseline's peak at >= 98% of its reward


@dataclass(frozen=True, kw_only=True)
class ComparisonRow:
    contender: str
    config: str
    reward: float | None
    peak_reserved_gb: float | None
    peak_vs_baseline: float | None
    reward_vs_baseline: float | None
    phases_gb: str


def describe(cfg: TrialConfig) -> str:
    """A short label of what a config changes from the baseline."""
    mem, opt = cfg.memory, cfg.optimizer
    frugal = [who for who, name in (("actor", opt.name), ("critic", opt.critic)) if name == "frugal"]
    parts = [f"frugal {'+'.join(frugal)} ρ={opt.partition.density:g}" if frugal else "adamw"]
    flags = {"offload ref": mem.offload_reference, "offload rwd": mem.offload_reward,
             "ckpt actor": mem.actor_gradient_checkpointing, "ckpt critic": mem.critic_gradient_checkpointing}
    return " + ".join(parts + [name for name, on in flags.items() if on])


def phases(result: TrialResult) -> str:
    if result.memory is None:
        return ""
    return " / ".join(f"{p.name} {p.peak_reserved_gb:.3g}" for p in result.memory.phases)


def to_point(cfg: TrialConfig, plan: TrialResult, reward: dict | None, budget_gb: float) -> Point:
    peak = plan.memory.peak_reserved_gb if plan.memory is not None else None
    value = reward.get("reward") if reward and reward.get("status") == "ok" else None
    return Point(label=describe(cfg), reward=value, reward_se=(reward or {}).get("reward_se"), peak_reserved_gb=peak,
                 feasible=plan.ok and peak is not None and peak <= budget_gb and value is not None,
                 phases_gb=phases(plan))


# -- the grid ------------------------------------------------------------------------------------
def search_space(settings: QualitySettings) -> Any:
    """The default space on this benchmark's model and workload, as `autotune search` rebases it."""
    from autotune.tuner.controller import with_budget
    from autotune.tuner.space import load_space

    space = load_space(settings.space).rebase({"model.actor": settings.model, "device": "cpu",
                                               **dict(settings.workload)})
    return with_budget(space, settings.budget_gb)


def grid_configs(space: Any) -> list[TrialConfig]:
    """Every combination of the space's (categorical) dimensions; the first one is the baseline."""
    from autotune.tuner.space import apply_params

    dims = space.searched
    if any(d.kind != "categorical" for d in dims):
        raise ValueError("the exhaustive grid needs a space of categorical dimensions only")
    return [apply_params(space, dict(zip((d.name for d in dims), combo)))
            for combo in itertools.product(*(d.choices for d in dims))]


def proxy_for(settings: QualitySettings) -> str | None:
    from autotune.rlhf.reward_run import default_proxy

    return settings.reward_proxy or default_proxy(settings.model)


def reward_configs(configs: Sequence[TrialConfig], proxy: str | None) -> dict[str, TrialConfig]:
    """The distinct reward runs the grid needs, by reward key."""
    from autotune.rlhf.reward_run import reward_config, reward_key

    runs = {}
    for cfg in configs:
        run = reward_config(cfg, proxy=proxy)
        runs.setdefault(reward_key(run), run)
    return runs


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _plan_one(cache: str, cfg: dict) -> None:
    config = TrialConfig.from_dict(cfg)
    lookup.cached(Path(cache), lookup.PLANS, lookup.plan_key(config), lambda: lookup.plan_entry(config))


def _reward_one(cache: str, key: str, cfg: dict, model: str) -> None:
    config = TrialConfig.from_dict(cfg)
    lookup.cached(Path(cache), lookup.REWARDS, key, lambda: lookup.reward_entry(config, model))


def measure_grid(configs: Sequence[TrialConfig], rewards: dict[str, TrialConfig], cache: Path, workers: int,
                 model: str) -> None:
    """Plan every config and run every reward key not yet in the cache, `workers` at a time."""
    plans = lookup.read_table(cache, lookup.PLANS)
    done = lookup.read_table(cache, lookup.REWARDS)
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread) as pool:
        # reward runs first: they are the longest, and plans fill the other worker meanwhile
        jobs = [pool.submit(_reward_one, str(cache), key, cfg.to_dict(), model) for key, cfg in rewards.items()
                if key not in done]
        jobs += [pool.submit(_plan_one, str(cache), cfg.to_dict()) for cfg in configs
                 if lookup.plan_key(cfg) not in plans]
        for i, job in enumerate(as_completed(jobs), 1):
            job.result()
            logger.info("grid: %d of %d measurements done", i, len(jobs))


def grid_points(configs: Sequence[TrialConfig], cache: Path, proxy: str | None, budget_gb: float) -> list[Point]:
    from autotune.rlhf.reward_run import reward_config, reward_key

    plans, rewards = lookup.read_table(cache, lookup.PLANS), lookup.read_table(cache, lookup.REWARDS)
    return [to_point(c, TrialResult.from_dict(plans[lookup.plan_key(c)]),
                     rewards.get(reward_key(reward_config(c, proxy=proxy))), budget_gb) for c in configs]


# -- the tuner ------------------------------------------------------------------------------------
def run_tuner(settings: QualitySettings, space: Any, seed: int, cache: Path, proxy: str | None) -> list[TrialRecord]:
    """One real study of `n_trials` trials whose plans and reward runs are grid lookups."""
    from autotune.tuner.controller import SearchSettings, run_search
    from autotune.tuner.launcher import Launcher

    command = (sys.executable, "-m", "benchmarks.search_lookup")
    launcher = Launcher(plan_command=(*command, "plan", "--cache", str(cache)),
                        reward_command=(*command, "reward", "--cache", str(cache)), timeout_s=7200)
    with tempfile.TemporaryDirectory(prefix="autotune-quality-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)   # the study's runs/<study>/ folder goes to the scratch dir
        try:
            outcome = run_search(SearchSettings(
                study=f"quality-{seed}", space=space, n_trials=settings.n_trials, budget_gb=settings.budget_gb,
                sampler="tpe", seed=seed, track=False, launcher=launcher, plan_memory=True, reward_proxy=proxy,
                cpu_workers=1, policy="min-memory", min_reward_ratio=MIN_REWARD_RATIO,
                # the grid's reward runs: the space's own length, one seed (the lookups' keys)
                reward_seeds=1, reward_steps=space.base.workload.steps))
        finally:
            os.chdir(cwd)
    return sorted(outcome.records, key=lambda r: r.number)


def record_point(record: TrialRecord, budget_gb: float) -> Point:
    res = record.result
    peak = res.memory.peak_reserved_gb if res.memory is not None else None
    return Point(label=describe(record.config), reward=res.reward, reward_se=res.reward_se, peak_reserved_gb=peak,
                 feasible=record.feasible and res.ok and res.reward is not None and peak is not None
                 and peak <= budget_gb, phases_gb=phases(res))


def hypervolume(points: Sequence[Point], budget_gb: float, floor: float) -> float:
    """Area of the (reward up, peak down) plane the feasible points dominate, reference (floor, budget)."""
    return exact_hypervolume([(p.reward, p.peak_reserved_gb) for p in points if p.feasible], (floor, budget_gb))


def ratios(point: Point | None, baseline: Point) -> tuple[float | None, float | None]:
    if point is None or point.peak_reserved_gb is None or not baseline.peak_reserved_gb:
        return None, None
    reward = point.reward / baseline.reward if point.reward is not None and baseline.reward else None
    return point.peak_reserved_gb / baseline.peak_reserved_gb, reward


def goal_met(point: Point | None, baseline: Point) -> bool:
    peak, reward = ratios(point, baseline)
    return peak is not None and reward is not None and peak <= PEAK_GOAL and reward >= MIN_REWARD_RATIO


def tuner_pick(records: Sequence[TrialRecord], budget_gb: float) -> Point | None:
    """The tuner's own recommendation (min-memory against the baseline's reward), as `search` makes it."""
    from autotune.errors import NoFeasibleTrialError
    from autotune.tuner.recommend import recommend

    try:
        chosen = recommend(list(records), policy="min-memory", budget_gb=budget_gb, min_reward_ratio=MIN_REWARD_RATIO)
    except NoFeasibleTrialError:
        return None
    return record_point(chosen.record, budget_gb)


def grid_pick(points: Sequence[Point], baseline: Point) -> Point | None:
    """The lowest feasible peak with at least 98% of the baseline's reward (two standard errors: a tie)."""
    floor = MIN_REWARD_RATIO * (baseline.reward or 0.0)
    eligible = [p for p in points if p.feasible and p.reward is not None
                and p.reward >= floor - 2 * np.hypot(p.reward_se or 0.0, baseline.reward_se or 0.0)]
    return min(eligible, key=lambda p: (p.peak_reserved_gb, -p.reward), default=None)


def checkpoint_rows(seed: int, records: Sequence[TrialRecord], settings: QualitySettings, grid_hv: float,
                    floor: float, baseline: Point) -> list[CheckpointRow]:
    rows = []
    for k in settings.checkpoints:
        first = list(records[:k])
        rec = tuner_pick(first, settings.budget_gb)
        runs = len({r.result.reward_key for r in first if r.result.reward_key})
        hv = hypervolume([record_point(r, settings.budget_gb) for r in first], settings.budget_gb, floor)
        peak, reward = ratios(rec, baseline)
        rows.append(CheckpointRow(seed=seed, trials=len(first), feasible=sum(r.feasible for r in first),
                                  hv_share=hv / grid_hv if grid_hv else 0.0, reward_runs=runs,
                                  cache_hit_rate=1 - runs / len(first) if first else 0.0,
                                  recommended=rec.label if rec else "-", peak_vs_baseline=peak,
                                  reward_vs_baseline=reward, goal_met=goal_met(rec, baseline)))
    return rows


def front(points: Sequence[Point]) -> list[Point]:
    """The feasible (reward up, peak down) Pareto front, by increasing peak."""
    pool = sorted((p for p in points if p.feasible), key=lambda p: (p.peak_reserved_gb, -p.reward))
    out: list[Point] = []
    for p in pool:
        if not out or p.reward > out[-1].reward:
            out.append(p)
    return out


def plot(grid: Sequence[Point], tuner: Sequence[Point], shares: Sequence[float], settings: QualitySettings,
         path: Any) -> None:
    """Left: grid and tuner trials in the (peak, reward) plane with both fronts. Right: HV share by trial."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.scatter([p.peak_reserved_gb for p in grid if p.feasible], [p.reward for p in grid if p.feasible],
                 color="lightgray", label="grid configs", zorder=1)
    done = [(i, p) for i, p in enumerate(tuner) if p.feasible]
    left.scatter([p.peak_reserved_gb for _, p in done], [p.reward for _, p in done], c=[i for i, _ in done],
                 cmap="viridis", s=18, label="tuner trials (colour: order)", zorder=2)
    for points, style, label in ((grid, "k--", "grid front"), (tuner, "r-", "tuner front")):
        line = front(points)
        left.step([p.peak_reserved_gb for p in line], [p.reward for p in line], style, where="post", label=label)
    left.set(xlabel="planned peak reserved (GiB)", ylabel="evaluation reward (proxy)",
             title=f"{settings.model} PPO, default space")
    left.legend(fontsize=7, loc="lower right")
    right.plot(range(1, len(shares) + 1), [100 * s for s in shares], marker=".")
    right.axhline(95, color="tab:green", linestyle="--", label="goal: 95%")
    right.set(xlabel="trials", ylabel="hypervolume, % of the grid's", title="Tuner (TPE + advisor), seed 0")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CHECKPOINT_COLUMNS = (
    Column(key="seed", header="seed"), Column(key="trials", header="trials"), Column(key="feasible", header="feasible"),
    Column(key="hv_share", header="HV / grid HV", fmt=pct), Column(key="reward_runs", header="reward runs"),
    Column(key="cache_hit_rate", header="cache hits", fmt=pct),
    Column(key="recommended", header="recommended (min-memory)"),
    Column(key="peak_vs_baseline", header="peak / baseline", fmt=num),
    Column(key="reward_vs_baseline", header="reward / baseline", fmt=num),
    Column(key="goal_met", header="≤0.50x peak at ≥98% reward"),
)
COMPARISON_COLUMNS = (
    Column(key="contender", header="contender"), Column(key="config", header="config"),
    Column(key="reward", header="reward", fmt=num), Column(key="peak_reserved_gb", header="peak GiB", fmt=num),
    Column(key="peak_vs_baseline", header="peak / baseline", fmt=num),
    Column(key="reward_vs_baseline", header="reward / baseline", fmt=num),
    Column(key="phases_gb", header="per phase (GiB)"),
)


@dataclass(frozen=True, kw_only=True)
class QualityReport:
    """Everything the benchmark measured; `trials` and `hv_shares` are the first seed's study, trial by trial."""

    grid: tuple[Point, ...]
    checkpoints: tuple[CheckpointRow, ...]
    comparison: tuple[ComparisonRow, ...]
    trials: tuple[Point, ...]
    hv_shares: tuple[float, ...]
    reward_keys: int


def comparison(baseline: Point, contenders: dict[str, Point | None]) -> list[ComparisonRow]:
    rows = []
    for name, point in {"baseline (AdamW, no interventions)": baseline, **contenders}.items():
        peak, reward = ratios(point, baseline)
        rows.append(ComparisonRow(contender=name, config=point.label if point else "-",
                                  reward=point.reward if point else None,
                                  peak_reserved_gb=point.peak_reserved_gb if point else None,
                                  peak_vs_baseline=peak, reward_vs_baseline=reward,
                                  phases_gb=point.phases_gb if point else ""))
    return rows


def run(settings: QualitySettings, cache: Path) -> QualityReport:
    """Grid first (measured once, cached), then one tuner study per sampler seed on lookups."""
    space = search_space(settings)
    configs = grid_configs(space)
    proxy = proxy_for(settings)
    rewards = reward_configs(configs, proxy)
    logger.info("grid: %d configs, %d reward keys, proxy %s", len(configs), len(rewards), proxy or "none")
    measure_grid(configs, rewards, cache, settings.workers, settings.model)
    grid = grid_points(configs, cache, proxy, settings.budget_gb)
    baseline = grid[0]
    floor = min(0.0, *(p.reward for p in grid if p.reward is not None))
    grid_hv = hypervolume(grid, settings.budget_gb, floor)
    rows: list[CheckpointRow] = []
    picks: dict[str, Point | None] = {"grid search (min-memory pick)": grid_pick(grid, baseline)}
    studies = []
    for seed in settings.seeds:
        records = run_tuner(settings, space, seed, cache, proxy)
        rows += checkpoint_rows(seed, records, settings, grid_hv, floor, baseline)
        picks[f"tuner, {len(records)} trials, seed {seed}"] = tuner_pick(records, settings.budget_gb)
        studies.append([record_point(r, settings.budget_gb) for r in records])
    first = studies[0]
    shares = tuple(hypervolume(first[:k], settings.budget_gb, floor) / grid_hv if grid_hv else 0.0
                   for k in range(1, len(first) + 1))
    return QualityReport(grid=tuple(grid), checkpoints=tuple(rows), comparison=tuple(comparison(baseline, picks)),
                         trials=tuple(first), hv_shares=shares, reward_keys=len(rewards))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="llama-1b, 3 sampler seeds, 10/20/30 trials")
    parser.add_argument("--trials", type=int, help="override the study length (checkpoints scale with it)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the sampler seeds, e.g. --seeds 1 2")
    parser.add_argument("--workers", type=int, help="grid measurements side by side (default 2)")
    parser.add_argument("--cache", type=Path,
                        help="the grid's cache folder (default runs/bench/search_quality_cache/<model>)")
    parser.add_argument("--tag", help=TAG_HELP)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, dirs: OutputDirs | None = None,
         settings: QualitySettings | None = None) -> QualityReport:
    """Run grid and tuner, print both tables, write runs/bench/search_quality*.{json,csv} and the figure.

    Args:
        argv: command-line arguments (`--full`, `--trials N`, `--seeds K [K ...]`, `--workers N`, `--cache DIR`,
            `--tag TEXT`).
        dirs: where to write (tests pass a temporary folder).
        settings: replaces the settings the arguments choose (tests pass a tiny search).
    """
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"   # every plan, reward run and lookup is single-threaded
    # the lookup programs run from a scratch folder: they import `benchmarks` from here
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    settings = settings or (FULL if args.full else REDUCED)
    if args.trials:
        n = args.trials
        settings = dataclasses.replace(settings, checkpoints=tuple(sorted({max(1, n // 3), max(1, 2 * n // 3), n})))
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    if args.workers:
        settings = dataclasses.replace(settings, workers=args.workers)
    dirs = (dirs or OutputDirs()).ensure()
    cache = args.cache or dirs.raw / "search_quality_cache" / settings.model
    name = output_name(NAME, full=args.full, tag=args.tag)
    report = run(settings, cache.resolve())
    print_table(f"Tuner vs the exhaustive grid ({len(report.grid)} configs, {report.reward_keys} reward keys) on "
                f"{settings.model} PPO, budget {settings.budget_gb:g} GiB", report.checkpoints, CHECKPOINT_COLUMNS)
    print_table("Recommendation against the baseline (memory planned, reward from the proxy)", report.comparison,
                COMPARISON_COLUMNS)
    extra = {"settings": {**dataclasses.asdict(settings), "space": str(settings.space)},
             "hv_shares": list(report.hv_shares)}
    write_results(name, report.checkpoints, dirs, extra=extra)
    write_results(f"{name}_comparison", report.comparison, dirs)
    write_results(f"{name}_grid", report.grid, dirs)
    write_results(f"{name}_trials", report.trials, dirs)
    plot(report.grid, report.trials, report.hv_shares, settings, dirs.img / f"{name}.png")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
