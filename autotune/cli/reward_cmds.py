"""`autotune reward`: one reward run, in its own process, like `autotune trial`.

The controller runs it as a subprocess with the config from `reward_config(...)` and reads the
RewardOutcome JSON back; the exit code is a second signal: 0 ok, 3 out of memory, 1 error.
"""
from __future__ import annotations

from pathlib import Path

import click

from autotune.cli.trial_cmds import EXIT_CODES, TrialExit
from autotune.config import TrialConfig
from autotune.rlhf.reward_run import MAX_REWARD_SEEDS


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Reward-run config YAML (a TrialConfig, normally written by the controller).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the RewardOutcome JSON.")
@click.option("--proxy-for", default=None, metavar="MODEL",
              help="The model this run stands in for, when the config's actor is a proxy.")
@click.option("--seeds", type=click.IntRange(1, MAX_REWARD_SEEDS), default=1, show_default=True,
              help="Train at workload.seed and the seeds after it; report the mean and its standard error over seeds.")
@click.option("--jobs", type=click.IntRange(1, MAX_REWARD_SEEDS), default=1, show_default=True,
              help="Train up to this many seeds at once, one process (and one thread) each.")
def reward(config_path: Path, out: Path, proxy_for: str | None, seeds: int, jobs: int) -> None:
    """Run one reward run (train, then score on the fixed evaluation prompts) and write its outcome."""
    cfg = TrialConfig.load(config_path)
    from autotune.rlhf.reward_run import run_reward

    outcome = run_reward(cfg, proxy_for=proxy_for, seeds=seeds, jobs=jobs)
    outcome.save(out)   # atomic: a reader sees the whole file or none
    if not outcome.ok:
        raise TrialExit(f"reward run failed ({outcome.status}): {outcome.message}",
                        EXIT_CODES.get(outcome.status, 1))
    se = f" ± {outcome.reward_se:.4f}" if outcome.reward_se is not None else ""
    click.echo(f"reward {outcome.reward:.4f}{se} (initial {outcome.initial_reward:.4f}; {outcome.label}; "
               f"{outcome.wall_time_s:.1f} s)", err=True)


COMMANDS = [reward]
