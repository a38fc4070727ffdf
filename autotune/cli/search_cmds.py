"""`autotune search` and `autotune pareto`: thin wrappers over autotune.tuner."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from autotune.cli.checks import FiniteFloat, default_study_name, writable_dir
from autotune.config import MAX_MEMORY_GB
from autotune.errors import ConfigError
from autotune.rlhf.reward_run import DEFAULT_REWARD_SEEDS, DEFAULT_REWARD_STEPS, MAX_REWARD_SEEDS, MAX_REWARD_STEPS
from autotune.tuner.recommend import DEFAULT_MIN_KEPT, POLICIES, REFERENCES
from autotune.tuner.study import MAX_SEED, SAMPLERS

_DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"


def _gpus(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    gpus = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in gpus if not g.isdigit()]
    if bad:
        raise ConfigError(f"--gpus takes GPU indices such as 0,1,2; got {', '.join(bad)}")
    return gpus


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a search the way Ctrl-C does: cleanly, resumable.

    The controller installs its own handlers while trials run; this one covers start-up and the end.
    """
    import signal

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):   # SIGHUP: the terminal or SSH session went away
        signal.signal(sig, interrupt)


def _quiet_optuna() -> None:
    """Optuna logs every study and trial at INFO on its own handler; autotune's -v decides instead."""
    import logging

    import optuna

    optuna.logging.set_verbosity(max(logging.getLogger().getEffectiveLevel(), logging.WARNING))


@click.command()
@click.option("--model", required=True, help="Actor model: a preset name (llama-tiny, llama-1b, ...) or a local path.")
@click.option("--space", "space_path", type=click.Path(dir_okay=False, path_type=Path), default=_DEFAULT_SPACE,
              show_default="search_spaces/default.yaml", help="Search-space YAML file.")
@click.option("--trials", "n_trials", type=click.IntRange(min=1), default=12, show_default=True,
              help="Trials with a result the study should hold when this command ends (all workers together).")
@click.option("--timeout", "timeout_s", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Stop starting new trials after this many seconds.")
@click.option("--trial-timeout", "trial_timeout_s", type=FiniteFloat(min=0, min_open=True), default=1800.0,
              show_default=True, help="End one trial after this many seconds; it is recorded as a timeout.")
@click.option("--budget-gb", type=FiniteFloat(min=0, max=MAX_MEMORY_GB, min_open=True), default=None,
              help="GPU memory budget (GiB); default: the space's budget_gb, else the GPU's total memory, "
              "else (no GPU) an assumed 80 GiB card.")
@click.option("--reward-proxy", default=None, metavar="PRESET|PATH",
              help="Model for reward runs where the named model cannot run here; default on a CPU box, for "
              "models over 150M parameters: llama-tiny-<depth> (llama-tiny's width at the model's depth).")
@click.option("--reward-seeds", type=click.IntRange(1, MAX_REWARD_SEEDS), default=DEFAULT_REWARD_SEEDS,
              show_default=True,
              help="Training seeds each reward run averages (the same seeds for every config, compared seed by "
              "seed). The reward's ± then covers the training seed, not only the evaluation prompts.")
@click.option("--reward-steps", type=click.IntRange(1, MAX_REWARD_STEPS), default=None,
              help=f"Training steps of every reward run. Default: start at {DEFAULT_REWARD_STEPS} and double (up to "
              f"{MAX_REWARD_STEPS}) until the baseline's reward gain is 10 standard errors; a given value is kept, "
              "and a baseline that did not learn in it leaves the recommendation to memory alone.")
@click.option("--plan-memory", is_flag=True,
              help="Without GPUs, plan every trial's memory at full size even where this host could run the model.")
@click.option("--study", default=None, help="Study name; default: the model name.")
@click.option("--storage", default=None, help="Optuna storage URL; default sqlite:///runs/<study>/optuna.db.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or runs/mlflow.db.")
@click.option("--gpus", default=None, help="GPU indices for parallel trials, e.g. 0,1,2,3; default: the CPU.")
@click.option("--gpus-per-trial", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs (DeepSpeed ranks, started by torchrun) per trial; --gpus splits into groups of this size.")
@click.option("--world-size", type=click.IntRange(min=1), default=None,
              help="Ranks per trial without --gpus: CPU trials on gloo (default: the space's world_size).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, help="Sampler seed.")
@click.option("--policy", type=click.Choice(POLICIES), default="fastest", show_default=True,
              help="fastest: the lowest step time that fits and keeps the reference's reward gain, ties to the "
              "smaller peak; min-memory: the smallest peak that keeps it; max-reward: the best reward, ties to the "
              "smaller peak.")
@click.option("--device-class", default=None,
              help="Device class planned trials' step times are predicted on (RTX-3090, A100-40, L40S, A100-80, "
              "H100-80, H200, or one added in $AUTOTUNE_DEVICE_CLASSES); default: the first with the budget's memory.")
@click.option("--min-reward-ratio", type=FiniteFloat(0, 1, min_open=True), default=DEFAULT_MIN_KEPT, show_default=True,
              help="fastest, min-memory: the share of the reference's reward gain (over the untrained policy) a "
              "config must keep, at the lower bound of its estimate (kept - 2 standard errors).")
@click.option("--reward-reference", type=click.Choice(REFERENCES), default="baseline", show_default=True,
              help="fastest, min-memory: measure --min-reward-ratio against the baseline's reward gain "
                   "or the best one's.")
@click.option("--prescreen/--no-prescreen", default=True, show_default=True,
              help="Predict each GPU trial's peak with `autotune plan` and skip configs over the budget.")
@click.option("--advisor/--no-advisor", default=True, show_default=True, help="Queue targeted follow-up configs.")
@click.option("--tracking/--no-tracking", default=True, show_default=True, help="Log to MLflow.")
@click.option("--timeline/--no-timeline", default=True, show_default=True, help="Write each trial's timeline.png.")
@click.option("--heartbeat", "heartbeat_s", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between a running trial's heartbeats; a dead worker's trial is retried after two.")
@click.option("--trial-command", default=None, help="Run trials with this command instead of `autotune trial`.")
@click.option("--plan-command", default=None, hidden=True, help="Plan with this command instead of `autotune plan`.")
@click.option("--reward-command", default=None, hidden=True,
              help="Run reward runs with this command instead of `autotune reward`.")
def search(model: str, space_path: Path, n_trials: int, timeout_s: float | None, trial_timeout_s: float,
           budget_gb: float | None, reward_proxy: str | None, reward_seeds: int, reward_steps: int | None,
           plan_memory: bool, study: str | None,
           storage: str | None, tracking_uri: str | None, gpus: str | None, gpus_per_trial: int,
           world_size: int | None, sampler: str, seed: int | None,
           policy: str, device_class: str | None, min_reward_ratio: float, reward_reference: str, prescreen: bool,
           advisor: bool,
           tracking: bool, timeline: bool, heartbeat_s: int, trial_command: str | None, plan_command: str | None,
           reward_command: str | None) -> None:
    """Search FRUGAL partitions x memory interventions with an Optuna study; recommend one config.

    Re-running the same command resumes the study; other machines join it with the same --storage.
    Ctrl-C, SIGTERM or SIGHUP ends the running trial and re-queues it; the same command then resumes.
    """
    from autotune.tuner.by_gpu import table_text
    from autotune.tuner.controller import SearchSettings, run_search
    from autotune.tuner.launcher import PLAN_COMMAND, REWARD_COMMAND, TRIAL_COMMAND, Launcher
    from autotune.tuner.progress import SearchProgress
    from autotune.tuner.search_plan import plan_search
    from autotune.tuner.space import load_space
    from autotune.tuner.study import study_dir

    _terminate_as_interrupt()
    _quiet_optuna()
    study = study if study is not None else default_study_name(model)   # --study "" is refused, not the default
    writable_dir(study_dir(study), "--study")    # outputs go there: fail now, not after the last trial
    space = load_space(space_path).rebase({"model.actor": model})
    launcher = Launcher(trial_command=tuple(shlex.split(trial_command)) if trial_command else TRIAL_COMMAND,
                        plan_command=tuple(shlex.split(plan_command)) if plan_command else PLAN_COMMAND,
                        reward_command=tuple(shlex.split(reward_command)) if reward_command else REWARD_COMMAND,
                        timeout_s=trial_timeout_s, timeline=timeline)
    settings = SearchSettings(
        study=study, space=space, n_trials=n_trials, storage=storage, timeout_s=timeout_s,
        budget_gb=budget_gb, gpus=_gpus(gpus), gpus_per_trial=gpus_per_trial, world_size=world_size,
        sampler=sampler, seed=seed, prescreen=prescreen, advisor=advisor,
        launcher=launcher, heartbeat_interval_s=heartbeat_s, tracking_uri=tracking_uri, track=tracking,
        policy=policy, min_reward_ratio=min_reward_ratio, reward_reference=reward_reference,
        reward_proxy=reward_proxy, reward_seeds=reward_seeds, reward_steps=reward_steps, plan_memory=plan_memory,
        device_class=device_class)
    plan = plan_search(settings)   # GPUs, CPU fallback, world size and budget: the same decisions as run_search's
    click.echo(plan.budget.note)   # the first line: an assumed budget must be seen before any figure
    if device_class:   # an unknown class is a one-line error now, not after the first trial
        from autotune.tuner.step_time import device

        device(device_class)
    with SearchProgress(n_trials) as progress:
        outcome = run_search(settings, plan=plan, on_record=progress.update, on_note=progress.note)
    settled = f" (+{outcome.settling_runs} that set their length)" if outcome.settling_runs else ""
    shared = (f"; {outcome.reward_runs} reward runs{settled} for {outcome.reward_runs + outcome.reward_hits} rewards"
              if outcome.reward_runs or outcome.reward_hits else "")
    click.echo(f"study {settings.study}: {len(outcome.records)} trials, {outcome.trials_run} run now{shared}; "
               f"controller overhead {outcome.overhead_share:.1%} of trial time")
    table = table_text(list(outcome.by_gpu))
    if outcome.recommendation is None:
        click.echo(f"no feasible trial within {plan.budget.gb:g} GiB: nothing to recommend "
                   "(raise --budget-gb or widen the space)")
        click.echo(table)
        return
    click.echo(outcome.summary)
    click.echo(table)
    click.echo(f"wrote runs/{settings.study}/recommended.yaml and runs/{settings.study}/pareto.json")


@click.command()
@click.option("--study", required=True, help="Study name.")
@click.option("--storage", default=None, help="Optuna storage URL; default sqlite:///runs/<study>/optuna.db.")
@click.option("--log", "log_to_mlflow", is_flag=True, help="Also log the front to MLflow.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (with --log).")
@click.option("--budget-gb", type=FiniteFloat(min=0, max=MAX_MEMORY_GB, min_open=True), default=None,
              help="Budget for marking the recommendation; default: the study's.")
@click.option("--by-gpu", is_flag=True, help="Also print the fastest config that fits each GPU size (24-80 GiB).")
def pareto(study: str, storage: str | None, log_to_mlflow: bool, tracking_uri: str | None,
           budget_gb: float | None, by_gpu: bool) -> None:
    """Print the study's feasible Pareto front as a table."""
    from autotune.tuner.report import log_front, render_by_gpu, render_front

    click.echo(render_front(study, storage, budget_gb=budget_gb))
    if by_gpu:
        click.echo(render_by_gpu(study, storage))
    if log_to_mlflow:
        log_front(study, storage, tracking_uri=tracking_uri, budget_gb=budget_gb)
        click.echo("logged the front to MLflow")


COMMANDS = [search, pareto]
