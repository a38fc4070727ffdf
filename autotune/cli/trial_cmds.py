"""`autotune trial` (run one trial, write its result) and `autotune plan` (predict memory, no GPU).

The tuner's launcher runs `autotune trial` in a subprocess and reads the result JSON; the exit code
is a second signal: 0 ok, 3 out of memory, 1 error.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from autotune.cli.checks import writable_file
from autotune.config import TrialConfig
from autotune.errors import ConfigError

if TYPE_CHECKING:
    from autotune.memory.probe import MemoryProbe
    from autotune.result import TrialResult
    from autotune.rlhf.workload import IterationStats

EXIT_CODES = {"ok": 0, "oom": 3, "error": 1}
_MiB = float(1 << 20)


class TrialExit(click.ClickException):
    """A finished trial that did not succeed: one 'error: ...' line and its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click types it a ClassVar, but reads the instance's

    def show(self, file: object = None) -> None:
        click.secho(f"error: {self.message}", fg="red", err=True)


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trial config YAML (TrialConfig).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the TrialResult JSON.")
@click.option("--timeline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the memory timeline as a PNG.")
def trial(config_path: Path, out: Path, timeline: Path | None) -> None:
    """Run one RLHF trial and write its TrialResult JSON (exit 0 ok, 3 OOM, 1 error)."""
    from autotune.tuner.launcher import watch_controller

    watch_controller()   # started by a search: end with it
    cfg = TrialConfig.load(config_path)
    writable_file(out, "--out")   # before the trial runs, not after
    if timeline is not None:
        writable_file(timeline, "--timeline")
    # Before torch is imported: the CUDA caching allocator reads its settings once, at start-up.
    from autotune.rlhf.trial import apply_allocator_env, rank, run_trial

    apply_allocator_env(cfg)
    timeline = timeline if rank() == 0 else None     # one figure per trial: rank 0's
    result = run_trial(cfg, timeline=timeline, on_iteration=_progress_line(cfg.workload.steps))
    # several ranks (under torchrun): each writes its rank file, rank 0 the combined result
    _finish(_save(result, out))


@click.command()
@click.option("--model", default=None, help="Actor model: a preset or a local directory (overrides the config).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trial config YAML; defaults otherwise.")
@click.option("--algorithm", type=click.Choice(["ppo", "grpo"]), default=None, help="Overrides the config.")
@click.option("--world-size", type=click.IntRange(min=1), default=None,
              help="Ranks the trial spans (overrides the config); the plan predicts rank 0's memory.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the TrialResult JSON here.")
def plan(model: str | None, config_path: Path | None, algorithm: str | None, world_size: int | None,
         out: Path | None) -> None:
    """Predict per-phase GPU memory of one RLHF iteration at full size, with fake tensors on the CPU."""
    from autotune.tuner.launcher import watch_controller

    watch_controller()   # started by a search: end with it
    if model is None and config_path is None:
        raise ConfigError("give --model or --config")
    if out is not None:
        writable_file(out, "--out")
    cfg = TrialConfig.load(config_path) if config_path is not None else TrialConfig()
    overrides = {key: value for key, value in (("model.actor", model), ("algorithm", algorithm),
                                               ("world_size", world_size)) if value is not None}
    cfg = cfg.replace(**overrides)
    from autotune.rlhf.trial import plan_trial

    result = plan_trial(cfg)
    if result.status != "error":   # a failed plan has no figures: its table would be all zeros
        _print_plan(cfg, result)
    if out is not None:
        _save(result, out)
    _finish(result)


def _save(result: TrialResult, out: Path) -> TrialResult:
    """Write the result JSON; if that fails after all, print it, so a finished trial is never lost.

    On several ranks each writes its own rank file and rank 0 the combined result, which it returns.
    """
    from autotune import schema
    from autotune.rlhf.trial import write_trial_outputs

    try:
        return write_trial_outputs(result, out)
    except OSError as exc:
        click.echo(schema.dump_json(result))
        raise ConfigError(f"--out: cannot write {out} ({exc.strerror or exc}); the result is printed above") from None


def _finish(result: TrialResult) -> None:
    if result.status != "ok":
        where = f" in {result.failed_phase}" if result.failed_phase else ""
        kind = "out of memory" if result.status == "oom" else "trial failed"
        raise TrialExit(f"{kind}{where}: {result.message}", EXIT_CODES.get(result.status, 1))


def _progress_line(steps: int) -> Callable[[IterationStats, MemoryProbe], None]:
    def show(stats: IterationStats, probe: MemoryProbe) -> None:
        reward = "-" if stats.reward is None else f"{stats.reward:.3f}"
        report = probe.report()
        peaks = "  ".join(f"{p.name} {p.peak_reserved_bytes / _MiB:.1f}" for p in report.phases)
        click.echo(f"step {stats.step + 1}/{steps}  reward {reward}  {stats.time_s:.2f} s  "
                   f"peak reserved MiB: {peaks}", err=True)

    return show


def _print_plan(cfg: TrialConfig, result: TrialResult) -> None:
    from rich.console import Console
    from rich.table import Table

    ranks = f", rank 0 of {cfg.world_size}" if cfg.world_size > 1 else ""
    table = Table(title=f"{cfg.algorithm.upper()} plan: {cfg.model.actor} ({cfg.model.dtype}){ranks}, "
                        f"predicted GPU memory of one iteration")
    for column in ("phase", "peak allocated", "peak reserved", "fragmentation"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    memory = result.memory
    rows = [] if memory is None else [(p.name, p.peak_allocated_bytes, p.peak_reserved_bytes, p.fragmentation)
                                      for p in memory.phases]
    if memory is not None:
        rows.append(("whole run", memory.peak_allocated_bytes, memory.peak_reserved_bytes, memory.fragmentation))
    for name, allocated, reserved, frag in rows:
        table.add_row(name, _size(allocated), _size(reserved), f"{frag:.1%}")
    console = Console()
    console.print(table)
    note = f"  ({result.message})" if result.ok and result.message else ""
    console.print(f"planned in {result.wall_time_s:.1f} s{note}")
    console.print(_assumptions(cfg), soft_wrap=True)


def _assumptions(cfg: TrialConfig) -> str:
    """One line on what the predicted figures assume (docs/MEMORY.md has the detail)."""
    from autotune.memory.device import default_context_reserve_bytes

    line = ("Assumes a single CUDA stream (ZeRO/FSDP side streams and record_stream can reserve more) "
            "and PyTorch's native allocator")
    if cfg.device_memory_gb is not None:
        total = int(cfg.device_memory_gb * (1 << 30))
        reserve = default_context_reserve_bytes(total)
        line += f"; usable memory = {_size(total)} total - {_size(reserve)} CUDA context reserve"
    return line + "."



def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= 1 << 30 else f"{nbytes / _MiB:.1f} MiB"


COMMANDS = [trial, plan]
