"""Tuner benchmark: hypervolume of the front after 10, 20 and 40 trials, and controller overhead.

Arms, each over several seeds, on `search_spaces/ci-tiny.yaml`:
  * TPE with the advisor (the product default), TPE without it, and random search.

Hypervolume is taken over the feasible trials among the first k (trial order), in (reward, peak
reserved GiB) with reference point (reward 0, the budget): the area of the memory/reward plane
that the front covers. Controller overhead is the wall time the controller spends per trial outside
the trial subprocess, as a share of the subprocess time.

By default trials run the stand-in program of the tuner tests (`tests/tuner/fake_trial.py`: the
figures follow from the config, in a fraction of a second), so the samplers can be compared over
hundreds of trials on two CPU cores; `--real` runs `autotune trial` instead (about 25 s a trial
here). Usage:

    .venv/bin/python -m benchmarks.tuner            # 10 and 20 trials, 1 seed
    .venv/bin/python -m benchmarks.tuner --full     # 10, 20 and 40 trials, 3 seeds
    .venv/bin/python -m benchmarks.tuner --real --arms tpe+advisor --checkpoints 4 --seeds 1
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autotune.result import TrialRecord
from autotune.tuner.controller import SearchSettings, run_search
from autotune.tuner.convergence import hypervolume as exact_hypervolume
from autotune.tuner.launcher import TRIAL_COMMAND, Launcher
from autotune.tuner.space import load_space
from benchmarks.common import Column, OutputDirs, num, pct, print_table, write_results

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "ci-tiny.yaml"
SURROGATE = (sys.executable, str(REPO / "tests" / "tuner" / "fake_trial.py"))
SURROGATE_BUDGET_GB = 0.025   # splits the stand-in's configs into feasible and OOM, as the real budget does
ARMS = {"tpe+advisor": ("tpe", True), "tpe": ("tpe", False), "random": ("random", False)}


@dataclass(frozen=True, kw_only=True)
class Row:
    arm: str
    seed: int
    trials: int
    hypervolume: float
    feasible: int
    overhead_share: float           # of the whole run: controller time outside trials / trial time
    overhead_s_per_trial: float
    trial_s: float                  # mean subprocess seconds per trial


def hypervolume(records: list[TrialRecord], budget_gb: float) -> float:
    """Area dominated by the feasible (reward, peak) points, reference (0, budget), in reward x GiB."""
    points = [(r.result.reward, r.result.memory.peak_reserved_gb) for r in records
              if r.feasible and r.result.reward is not None and r.result.memory is not None]
    return exact_hypervolume(points, (0.0, budget_gb))


def run_arm(arm: str, seed: int, checkpoints: tuple[int, ...], *, launcher: Launcher,
            budget_gb: float | None, track: bool = False) -> list[Row]:
    """One study of max(checkpoints) trials in a scratch folder; a row per checkpoint."""
    sampler, advisor = ARMS[arm]
    space = load_space(SPACE)
    budget = budget_gb if budget_gb is not None else space.budget_gb
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)   # the study, trial folders and outputs go to the scratch runs/
        try:
            outcome = run_search(SearchSettings(
                study=f"bench-{arm}-{seed}", space=space, n_trials=max(checkpoints), budget_gb=budget,
                sampler=sampler, seed=seed, advisor=advisor, launcher=launcher, track=track))
        finally:
            os.chdir(cwd)
    records = sorted(outcome.records, key=lambda r: r.number)
    n = max(outcome.trials_run, 1)
    return [Row(arm=arm, seed=seed, trials=k, hypervolume=hypervolume(records[:k], budget),
                feasible=sum(r.feasible for r in records[:k]), overhead_share=outcome.overhead_share,
                overhead_s_per_trial=(outcome.trial_wall_s - outcome.subprocess_s) / n,
                trial_s=outcome.subprocess_s / n) for k in checkpoints]


def summarise(rows: list[Row]) -> list[dict[str, object]]:
    """Mean and spread of hypervolume per arm and checkpoint, over seeds."""
    out = []
    for arm in dict.fromkeys(r.arm for r in rows):
        for k in sorted({r.trials for r in rows}):
            hv = [r.hypervolume for r in rows if r.arm == arm and r.trials == k]
            out.append({"arm": arm, "trials": k, "hv_mean": statistics.mean(hv),
                        "hv_sd": statistics.stdev(hv) if len(hv) > 1 else 0.0, "seeds": len(hv)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10/20/40 trials over 3 seeds")
    parser.add_argument("--real", action="store_true", help="run `autotune trial` (slow) instead of the stand-in")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--checkpoints", default=None, help="e.g. 10,20,40")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--tracking", action="store_true", help="log to MLflow (a scratch sqlite store), as search does")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = tuple(int(c) for c in (args.checkpoints or ("10,20,40" if args.full else "10,20")).split(","))
    seeds = range(args.seeds if args.seeds is not None else (3 if args.full else 1))
    launcher = Launcher(trial_command=TRIAL_COMMAND if args.real else SURROGATE, timeout_s=1800)
    budget = None if args.real else SURROGATE_BUDGET_GB
    rows = [row for arm in args.arms.split(",") for seed in seeds
            for row in run_arm(arm, seed, checkpoints, launcher=launcher, budget_gb=budget, track=args.tracking)]
    print_table("Tuner: hypervolume (reward x GiB under the budget) and controller overhead", rows, [
        Column(key="arm", header="arm"), Column(key="seed", header="seed"), Column(key="trials", header="trials"),
        Column(key="hypervolume", header="hypervolume", fmt=lambda v: num(v, 4)),
        Column(key="feasible", header="feasible"),
        Column(key="overhead_share", header="overhead", fmt=pct),
        Column(key="overhead_s_per_trial", header="overhead s/trial", fmt=lambda v: num(v, 3)),
        Column(key="trial_s", header="trial s", fmt=lambda v: num(v, 3)),
    ])
    summary = summarise(rows)
    for s in summary:
        print(f"{s['arm']:>12} @ {s['trials']:>2} trials: HV {s['hv_mean']:.4g} ± {s['hv_sd']:.2g} ({s['seeds']} seeds)")
    name = "tuner" + ("-real" if args.real else "") + ("-tracking" if args.tracking else "")
    path = write_results(name, rows, OutputDirs(), extra={"summary": summary, "real_trials": args.real, "tracking": args.tracking,
                                                             "space": str(SPACE.relative_to(REPO))})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
