"""Runs one trial as a subprocess (`autotune trial`), and pre-screens it with `autotune plan`.

A trial gets its own process so that an OOM or a crash cannot take the controller down, and so
that `PYTORCH_ALLOC_CONF` (and the older `PYTORCH_CUDA_ALLOC_CONF`) and `CUDA_VISIBLE_DEVICES` are
in place before CUDA initialises.
Whatever happens, the caller gets a TrialResult: a timeout, a crash without a result file and an
OOM are each a status with a message, never an exception.

No trial outlives its controller. Each runs in its own process group, which the controller ends on
every way out (done, timeout, cancel, Ctrl-C, an exception: `end_all`). A controller killed with
SIGKILL cannot do that, so the trial side watches it: `watch_controller()`, which `autotune trial`
and `autotune plan` call first, ends the trial's group once its controller is gone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autotune import files
from autotune.config import ALLOC_CONF_VARS, TrialConfig
from autotune.errors import ConfigError, StorageError
from autotune.result import TrialResult, combine_ranks, rank_result_path, read_rank_results

if TYPE_CHECKING:
    from autotune.rlhf.reward_run import RewardOutcome

log = logging.getLogger(__name__)
_GiB = float(1 << 30)

TRIAL_COMMAND: tuple[str, ...] = (sys.executable, "-m", "autotune", "trial")
# torchrun starts the ranks of a several-rank trial: one machine, a free rendezvous port, and no
# restarts (a rank that dies ends the trial; the study goes on). `--no-python` runs the trial command as is.
TORCHRUN: tuple[str, ...] = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts", "0",
                             "--no-python")
PLAN_COMMAND: tuple[str, ...] = (sys.executable, "-m", "autotune", "plan")
REWARD_COMMAND: tuple[str, ...] = (sys.executable, "-m", "autotune", "reward")
_KILL_GRACE_S = 5.0
_POLL_S = 0.02   # how often a waiting controller checks for Ctrl-C; small next to any trial
CONTROLLER_PID_ENV = "AUTOTUNE_CONTROLLER_PID"   # tells a trial whom to watch
_WATCH_S = 0.25
_live_groups: set[int] = set()   # process groups of this controller's running trials and plans
_live_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class Launcher:
    """How trials are started. The commands are injectable so tests can run a stand-in program."""

    trial_command: tuple[str, ...] = TRIAL_COMMAND
    plan_command: tuple[str, ...] = PLAN_COMMAND
    reward_command: tuple[str, ...] = REWARD_COMMAND
    timeout_s: float | None = None
    timeline: bool = False            # ask the trial for timeline.png (costs a matplotlib import)


@dataclass(frozen=True, kw_only=True)
class Launched:
    """A trial's result and the seconds its subprocess ran (for the controller-overhead figure)."""

    result: TrialResult
    subprocess_s: float
    cancelled: bool = False           # the controller ended it (Ctrl-C); the result is not the config's


def trial_env(config: TrialConfig, gpu: str | None) -> dict[str, str]:
    """The child's environment: its GPUs ("0" or a group "0,1"; None for none) and allocator settings."""
    env = dict(os.environ)
    env[CONTROLLER_PID_ENV] = str(os.getpid())
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    alloc = config.memory.allocator.to_env_string()
    for name in ALLOC_CONF_VARS:        # PYTORCH_ALLOC_CONF, and the older name for older PyTorch
        if alloc:
            env[name] = alloc
        else:
            # the user's own setting would silently change what this trial measures
            env.pop(name, None)
    if config.device != "cuda":
        # CPU trials run tiny models whose ops are too small to split across threads: with torch's
        # default of one thread per core, a llama-tiny trial ran 4x slower (29.6 s vs 7.5 s) on 2 cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        if config.world_size > 1:
            env["DS_ACCELERATOR"] = "cpu"     # DeepSpeed on gloo; it would look for a GPU otherwise
    return env


def trial_argv(config: TrialConfig, launcher: Launcher) -> list[str]:
    """The trial command, under torchrun with one process per rank when the trial spans several."""
    if config.world_size <= 1:
        return list(launcher.trial_command)
    return [*TORCHRUN, "--nproc-per-node", str(config.world_size), *launcher.trial_command]


def run_trial(config: TrialConfig, trial_dir: Path, *, launcher: Launcher, gpu: str | None = None,
              cancel: threading.Event | None = None) -> Launched:
    """Write `trial.yaml`, run the trial command, and read `result.json` back.

    Args:
        config: the trial's configuration.
        trial_dir: `runs/<study>/trials/<number>/`; created if missing.
        launcher: the command and time limit.
        gpu: the GPU indices to expose ("0", or "0,1" for a two-rank trial), or None for a CPU trial.
        cancel: when set, the trial is ended and reported as cancelled.

    Returns:
        The result (status ok, oom, error or timeout) and the subprocess wall time.
    """
    config_path, out_path = trial_dir / "trial.yaml", trial_dir / "result.json"
    _write_config(config, config_path)
    for stale in (out_path, *(rank_result_path(out_path, r) for r in range(config.world_size))):
        stale.unlink(missing_ok=True)  # a stale file from a killed run must not pass as this run's
    argv = [*trial_argv(config, launcher), "--config", str(config_path), "--out", str(out_path)]
    if launcher.timeline:
        argv += ["--timeline", str(trial_dir / "timeline.png")]
    start, available_gb, oom_kills = time.perf_counter(), host_available_gb(), oom_kill_count()
    code = _run(argv, trial_dir / "trial.log", trial_env(config, gpu), launcher.timeout_s, cancel)
    elapsed = time.perf_counter() - start
    if code == _CANCELLED:
        return Launched(result=_failed(config, "error", "cancelled by the controller", elapsed),
                        subprocess_s=elapsed, cancelled=True)
    if code is None:
        result = _failed(config, "timeout", f"timed out after {launcher.timeout_s:g} s", elapsed)
    else:
        result = _read_result(config, out_path, code, trial_dir / "trial.log", elapsed, available_gb=available_gb,
                              oom_kills=oom_kills)
    log.info("trial %s: %s %s", trial_dir.name, result.status, result.message)
    return Launched(result=result, subprocess_s=elapsed)


def plan(config: TrialConfig, trial_dir: Path, *, launcher: Launcher) -> TrialResult | None:
    """`autotune plan` of `config` at full size (fake tensors, simulator) in a subprocess.

    Returns:
        The plan's result (its status may be ok or oom), or None when planning itself failed or did
        not finish (logged as a warning).
    """
    config_path, out_path = trial_dir / "plan.yaml", trial_dir / "plan.json"
    _write_config(config, config_path)
    out_path.unlink(missing_ok=True)
    argv = [*launcher.plan_command, "--config", str(config_path), "--out", str(out_path)]
    code = _run(argv, trial_dir / "plan.log", trial_env(config, None), launcher.timeout_s)
    if code is None or code == _CANCELLED:
        log.warning("plan in %s did not finish", trial_dir)
        return None
    try:
        return TrialResult.load(out_path)
    except ConfigError as exc:
        log.warning("plan in %s failed (exit %s): %s", trial_dir, code, exc)
        return None


def prescreen(config: TrialConfig, trial_dir: Path, *, launcher: Launcher, budget_gb: float) -> TrialResult | None:
    """Predict the trial's peak with `autotune plan`; a "prescreened" result when over budget.

    Returns:
        None when the prediction fits the budget, or when planning itself failed (logged as a
        warning: the trial then runs and measures for real).
    """
    planned = plan(config, trial_dir, launcher=launcher)
    if planned is None or planned.memory is None or planned.memory.peak_reserved_gb <= budget_gb:
        return None
    return TrialResult(
        config_hash=config.config_hash(), status="prescreened", backend=planned.backend, memory=planned.memory,
        message=f"predicted peak reserved {planned.memory.peak_reserved_gb:.3f} GiB "
        f"(in {planned.memory.peak_phase}) exceeds the {budget_gb:g} GiB budget",
        failed_phase=planned.memory.peak_phase, wall_time_s=planned.wall_time_s,
    )


def run_reward(reward_config: TrialConfig, run_dir: Path, *, launcher: Launcher, proxy_for: str,
               gpu: str | None = None, cancel: threading.Event | None = None, seeds: int = 1,
               jobs: int = 1) -> RewardOutcome | None:
    """Run `autotune reward` on `reward_config` (from `reward_run.reward_config`) in a subprocess.

    `proxy_for` is the model the trial names; where the run's model differs, its outcome is a proxy's.
    `seeds` > 1 averages that many training seeds (`autotune reward --seeds`), `jobs` of them at once.

    Returns:
        Its RewardOutcome (a failed run is an outcome with its status), or None when cancelled.
    """
    from autotune.rlhf.reward_run import RewardOutcome, reward_key

    config_path, out_path = run_dir / "reward.yaml", run_dir / "reward.json"
    _write_config(reward_config, config_path)
    out_path.unlink(missing_ok=True)
    argv = [*launcher.reward_command, "--config", str(config_path), "--out", str(out_path), "--proxy-for", proxy_for]
    if seeds > 1:
        argv += ["--seeds", str(seeds)]
    if jobs > 1 and seeds > 1:
        argv += ["--jobs", str(min(jobs, seeds))]
    start, available_gb, oom_kills = time.perf_counter(), host_available_gb(), oom_kill_count()
    code = _run(argv, run_dir / "reward.log", trial_env(reward_config, gpu), launcher.timeout_s, cancel)
    elapsed = time.perf_counter() - start
    if code == _CANCELLED:
        return None
    key, model = reward_key(reward_config, seeds=seeds), reward_config.model.actor
    proxy = model != proxy_for
    if code is None:
        return RewardOutcome(key=key, model=model, proxy=proxy, steps=0, status="timeout", wall_time_s=elapsed,
                             message=f"reward run timed out after {launcher.timeout_s:g} s")
    if out_path.is_file():
        try:
            return RewardOutcome.from_dict(json.loads(out_path.read_text()))
        except (ConfigError, ValueError) as exc:
            return RewardOutcome(key=key, model=model, proxy=proxy, steps=0, status="error", wall_time_s=elapsed,
                                 message=f"exit code {code}, unreadable reward result: {exc}")
    return RewardOutcome(key=key, model=model, proxy=proxy, steps=0, status="error", wall_time_s=elapsed,
                         message=_no_result(code, run_dir / "reward.log", available_gb, oom_kills))


def oom_kill_count() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot (None: not Linux).

    It counts cgroup (container) OOM kills too, so a rise while a child ran says what a bare
    SIGKILL alone cannot: whether memory ran out.
    """
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def host_available_gb() -> float:
    """Memory the host can give a new process now (MemAvailable), in GiB."""
    import psutil

    return psutil.virtual_memory().available / _GiB


_LOW_HOST_GB = 2.0        # free host memory at launch below which a bare SIGKILL is most likely the OOM killer
_CANCELLED = -(1 << 16)   # not an exit code any process can return


def _write_config(config: TrialConfig, path: Path) -> None:
    """Create the trial folder and its trial.yaml.

    Raises:
        StorageError: the folder cannot be written (e.g. it turned read-only mid-study); the
            search stops with this message rather than failing every later trial the same way.
    """
    try:
        files.check_no_link(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config.dump(path)
    except OSError as exc:
        raise StorageError(f"cannot write {path} ({exc.strerror or exc}): make {path.parent.parent} writable, "
                           "then run the same command again to resume") from None


def _run(argv: list[str], log_path: Path, env: dict[str, str], timeout_s: float | None,
         cancel: threading.Event | None = None) -> int | None:
    """Run `argv` in its own process group: its exit code, None on timeout, _CANCELLED on cancel.

    The group is ended on every way out, also after a normal exit (a grandchild the trial left
    behind would skew the next trial's memory).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with files.open_new(log_path) as log_file:
        # A new session keeps Ctrl-C at the terminal from reaching the child half-way; the
        # controller ends it itself, so the study records what really happened.
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with _live_lock:
            _live_groups.add(proc.pid)
        try:
            while True:
                try:
                    return proc.wait(timeout=_POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.is_set():
                    _kill(proc)
                    return _CANCELLED
                if deadline is not None and time.monotonic() > deadline:
                    _kill(proc)
                    return None
        finally:
            _kill(proc)
            with _live_lock:
                _live_groups.discard(proc.pid)


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever outlives the grace period.

    After the child itself has exited, anything left in its group is killed at once.
    """
    if proc.poll() is not None:
        _signal_group(proc.pid, signal.SIGKILL)
        return
    for sig, wait_s in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        if not _signal_group(proc.pid, sig):
            return
        try:
            proc.wait(timeout=wait_s)
            _signal_group(proc.pid, signal.SIGKILL)   # the leader went; take its group with it
            return
        except subprocess.TimeoutExpired:
            continue


def stop_group(proc: subprocess.Popen) -> None:
    """End a child started with `start_new_session=True` and everything it started (see `_kill`)."""
    _kill(proc)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:   # the pgid was reused by someone else's process
        return False
    return True


def end_all(sig: int = signal.SIGKILL) -> int:
    """Signal the process group of every trial and plan this process is running; how many.

    The controller's last resort on its way out (Ctrl-C, SIGTERM, an exception): nothing it
    started may keep running, whatever state its worker threads are in.
    """
    with _live_lock:
        groups = sorted(_live_groups)
    return sum(_signal_group(pgid, sig) for pgid in groups)


def watch_controller() -> None:
    """In a trial process: end this trial's process group once the controller that started it is gone.

    The launcher names the controller in $AUTOTUNE_CONTROLLER_PID. A daemon thread checks every
    quarter second whether this process's parent changed (the controller, or a launcher such as
    torchrun between them, died) or the controller exited; then it SIGKILLs the group the launcher
    made (or only this process, outside one). Does nothing when not started by a controller.
    """
    from autotune.owner import pid_alive

    raw = os.environ.get(CONTROLLER_PID_ENV, "")
    if not raw.isdigit():
        return
    controller, parent = int(raw), os.getppid()
    # The launcher's group is the session it made; never signal a group we were not started in.
    own_group = os.getpgrp() == os.getsid(0)

    def watch() -> None:
        while os.getppid() == parent and pid_alive(controller):
            time.sleep(_WATCH_S)
        log.warning("the controller (pid %d) is gone; ending this trial", controller)
        if own_group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-controller", daemon=True).start()


def _read_result(config: TrialConfig, path: Path, code: int, log_path: Path, elapsed: float, *,
                 available_gb: float | None = None, oom_kills: int | None = None) -> TrialResult:
    if config.world_size > 1 and not path.is_file():
        # rank 0 never combined: some rank died and torchrun ended the rest; what the ranks wrote says why
        ranks = read_rank_results(path, config.world_size)
        if ranks:
            return dataclasses.replace(combine_ranks(ranks, config.world_size), wall_time_s=elapsed)
    if path.is_file():
        try:
            return TrialResult.load(path)
        except ConfigError as exc:
            return _failed(config, "error", f"exit code {code}, unreadable result: {exc}", elapsed)
    return _failed(config, "error", _no_result(code, log_path, available_gb, oom_kills), elapsed)


def _no_result(code: int, log_path: Path, available_gb: float | None, oom_kills: int | None = None) -> str:
    """Why a child left no result: the signal that killed it by name, else its exit code; and its log tail.

    `available_gb` and `oom_kills` are the host's free memory and OOM-kill count at launch.
    """
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path.is_file() else []
    log_tail = f"; log tail: {' | '.join(tail)}" if tail else ""
    if code >= 0:
        return f"exit code {code} and no result file{log_tail}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        # Nothing in the controller sends a bare SIGKILL to a live child except past a timeout's
        # grace period (reported as a timeout), so a SIGKILL here came from outside: the kernel's
        # OOM killer only if it counted a kill meanwhile (or, without its count, memory was low).
        host = f"; the host had {available_gb:.1f} GiB available at launch" if available_gb is not None else ""
        now = oom_kill_count()
        if oom_kills is not None and now is not None:
            if now > oom_kills:
                return f"killed by SIGKILL from the OS out-of-memory killer{host}{log_tail}"
            return (f"killed by SIGKILL from outside autotune, not the OS out-of-memory killer (it ended nothing "
                    f"meanwhile){host}{log_tail}")
        if available_gb is not None and available_gb < _LOW_HOST_GB:
            return f"killed by SIGKILL, most likely the OS out-of-memory killer{host}{log_tail}"
        return f"killed by SIGKILL from outside autotune{host}{log_tail}"
    return f"killed by {name}{log_tail}"


def _failed(config: TrialConfig, status: str, message: str, elapsed: float) -> TrialResult:
    return TrialResult(config_hash=config.config_hash(), status=status, backend=config.device,  # type: ignore[arg-type]
                       message=message, wall_time_s=elapsed, world_size=config.world_size)
