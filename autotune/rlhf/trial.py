"""One trial, start to finish: probe, workload, and a TrialResult whatever happens.

`run_trial` never raises for a failed run: an out-of-memory (real or simulated) becomes status
`oom` with the phase it hit, anything else status `error` with its text. `plan_trial` is the same
run under FakeTensorMode: full-size models, no real memory, GPU memory predicted by the simulator.
"""
from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune import __version__
from autotune.config import ALLOC_CONF_VARS, TrialConfig
from autotune.errors import AutotuneError
from autotune.result import RewardPoint, Status, TrialResult

if TYPE_CHECKING:
    from autotune.memory.probe import MemoryProbe
    from autotune.memory.report import MemoryReport
    from autotune.rlhf.evaluation import Evaluation
    from autotune.rlhf.workload import IterationStats, RLHFWorkload

    ProgressCallback = Callable[[IterationStats, MemoryProbe], None]

log = logging.getLogger(__name__)

_GiB = 1 << 30
ALLOC_CONF_ENV = ALLOC_CONF_VARS[0]     # PYTORCH_ALLOC_CONF; PyTorch falls back to PYTORCH_CUDA_ALLOC_CONF


def apply_allocator_env(cfg: TrialConfig) -> None:
    """Put the allocator settings in `PYTORCH_ALLOC_CONF` and `PYTORCH_CUDA_ALLOC_CONF` for a cuda trial.

    The CUDA caching allocator reads the variable once, when CUDA initialises, so this must run
    first. Newer PyTorch reads `PYTORCH_ALLOC_CONF` and falls back to the older name, which older
    PyTorch reads alone, so both get the value. A value already set under either name (by the
    launcher or the user) is kept.
    """
    wanted = cfg.memory.allocator.to_env_string()
    if cfg.device == "cuda" and wanted and not any(name in os.environ for name in ALLOC_CONF_VARS):
        # a different value already set is reported once, by the CUDA probe, which sees what CUDA uses
        for name in ALLOC_CONF_VARS:
            os.environ[name] = wanted


def plan_trial(cfg: TrialConfig, *, timeline: Path | None = None) -> TrialResult:
    """One RLHF iteration of `cfg` under FakeTensorMode: predicted GPU memory per phase, no reward.

    With `cfg.world_size` > 1 it predicts rank 0 (see `autotune.rlhf.zero`). DeepSpeed sets up
    torch.distributed for the whole process, so plan one sharded config per process.
    """
    return run_trial(cfg.replace(device="fake", **{"workload.steps": 1}), timeline=timeline)


def run_trial(cfg: TrialConfig, *, timeline: Path | None = None,
              on_iteration: ProgressCallback | None = None, measure_memory: bool = True,
              eval_steps: tuple[int, ...] = ()) -> TrialResult:
    """Run one trial and describe it; OOMs and errors are results, not exceptions.

    Args:
        cfg: the trial.
        timeline: where to save the probe's memory timeline (PNG), if wanted.
        on_iteration: called with each iteration's `IterationStats` and the probe (progress lines).
        measure_memory: False for a reward run: no probe traces the run (on the cpu backend the
            tracer costs 3-4x the run's time), and the result has no memory report.
        eval_steps: also score the policy on the evaluation prompts after these iterations (a
            learning curve; reward runs only, since the scoring forwards would count as memory).
            The scoring draws from its own generators, so the training run is the same with or
            without it.

    Returns:
        The TrialResult, with status ok, oom or error.
    """
    apply_allocator_env(cfg)
    import torch

    if cfg.device != "cuda" and "OMP_NUM_THREADS" not in os.environ:
        # A CPU reduction's summation order follows the thread count, so a reward is the same bits
        # only at the same count. The launcher runs trials and reward runs with one thread; a trial
        # started by hand (`autotune trial`) takes the same, unless the user set OMP_NUM_THREADS.
        torch.set_num_threads(1)

    from autotune.memory.allocator import SimulatedOutOfMemoryError
    from autotune.memory.probes import make_probe
    from autotune.rlhf.workload import RLHFWorkload

    start = time.perf_counter()
    capacity = None if cfg.device_memory_gb is None else int(cfg.device_memory_gb * _GiB)
    probe = workload = memory = None
    evaluations: tuple[Evaluation, Evaluation] | None = None
    midway: list[tuple[int, Evaluation]] = []
    status: Status = "ok"
    message, failed_phase = "", None
    try:
        if cfg.device == "cuda" and cfg.world_size > 1:
            from autotune.rlhf.workload import local_rank

            torch.cuda.set_device(local_rank())   # the probe reads the current device's counters
        probe = make_probe(cfg.device, cfg.memory.allocator, capacity_bytes=capacity) if measure_memory \
            else _unmeasured_probe()
        workload = RLHFWorkload(cfg, probe)
        with _fake_mode(cfg.device == "fake"), probe:
            workload.setup()
            workload.run(_iteration_hook(workload, probe, on_iteration, eval_steps, midway, measure_memory))
        # the report first: the evaluation's forwards must not count as the run's memory
        memory = _report(probe) if measure_memory else None
        if cfg.device != "fake":
            workload.current_phase = "evaluation"
            evaluations = (workload.evaluate_initial(), workload.evaluate())
    except (torch.OutOfMemoryError, SimulatedOutOfMemoryError) as exc:
        status, message = "oom", _first_line(exc)
        failed_phase = (probe.failed_phase if probe is not None else None) or (
            workload.current_phase if workload is not None else None)
        log.warning("out of memory in %s: %s", failed_phase, message)
    except AutotuneError as exc:   # a user-facing problem (a missing model, a bad combination): no traceback
        status, message = "error", str(exc)
        failed_phase = getattr(workload, "current_phase", None)
    except Exception as exc:  # noqa: BLE001 - every failure must become a result the tuner can read
        status, message = "error", f"{type(exc).__name__}: {exc}"
        failed_phase = getattr(workload, "current_phase", None)
        log.exception("trial failed in %s", failed_phase or "setup")
    result = _result(cfg, workload, memory or (_report(probe) if measure_memory else None), evaluations,
                     midway=midway, status=status, message=message, failed_phase=failed_phase,
                     wall_time_s=time.perf_counter() - start)
    if timeline is not None and probe is not None:
        _save_timeline(probe, timeline)
    return result


def _iteration_hook(workload: RLHFWorkload, probe: MemoryProbe, on_iteration: ProgressCallback | None,
                    eval_steps: tuple[int, ...], midway: list[tuple[int, Evaluation]],
                    measure_memory: bool) -> Callable[[IterationStats], None] | None:
    """The workload's per-iteration callback: progress lines, and the learning curve's midway scores."""
    if eval_steps and measure_memory:
        raise ValueError("eval_steps is for reward runs (measure_memory=False): scoring would count as memory")
    last = workload.cfg.workload.steps
    wanted = {s for s in eval_steps if 0 < s < last}   # step 0 and the last step are scored anyway
    if on_iteration is None and not wanted:
        return None

    def hook(stats: IterationStats) -> None:
        if on_iteration is not None:
            on_iteration(stats, probe)
        if stats.step + 1 in wanted:
            midway.append((stats.step + 1, workload.evaluate()))   # each phase sets the mode it needs
    return hook


def _points(initial: Evaluation | None, midway: list[tuple[int, Evaluation]], final: Evaluation | None,
            steps: int) -> tuple[RewardPoint, ...]:
    if initial is None or final is None:
        return ()
    scored = [(0, initial), *midway, (steps, final)]
    return tuple(RewardPoint(step=step, seed_rewards=(e.mean,), prompt_se=e.se) for step, e in scored)


def _result(cfg: TrialConfig, workload: RLHFWorkload | None, memory: MemoryReport | None,
            evaluations: tuple[Evaluation, Evaluation] | None, *, midway: list[tuple[int, Evaluation]],
            status: Status, message: str, failed_phase: str | None, wall_time_s: float) -> TrialResult:
    curve = tuple(getattr(workload, "reward_curve", ()))
    initial, final = evaluations or (None, None)
    times = list(getattr(workload, "step_times_s", ()))
    if cfg.device == "fake" and status == "ok":
        from autotune.rlhf.zero import plan_notes

        message = plan_notes(cfg)
    return TrialResult(
        config_hash=cfg.config_hash(),
        status=status,
        backend=cfg.device,
        message=message,
        failed_phase=failed_phase,
        memory=memory,
        reward_curve=curve,
        initial_reward=None if initial is None else initial.mean,
        reward=None if final is None else final.mean,
        reward_se=None if final is None else final.se,
        reward_points=_points(initial, midway, final, cfg.workload.steps),
        step_time_s=step_time(times),
        wall_time_s=wall_time_s,
        versions=versions(deepspeed=cfg.uses_deepspeed),
        world_size=cfg.world_size,
        rank=rank(),
    )


def rank() -> int:
    """This process's rank, as torchrun (or DeepSpeed's launcher) sets it; 0 outside one."""
    return int(os.environ.get("RANK", "0"))


def step_time(times_s: list[float]) -> float | None:
    """Median seconds per iteration after the first (which pays for warm-up), or the only one."""
    if not times_s:
        return None
    return statistics.median(times_s[1:] or times_s)


def versions(*, deepspeed: bool) -> dict[str, str]:
    """The versions a result depends on: torch, transformers, autotune, and DeepSpeed if it ran."""
    import torch
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__, "autotune": __version__,
             "python": sys.version.split()[0]}
    if deepspeed:
        import deepspeed as ds

        found["deepspeed"] = ds.__version__
    return found


def _unmeasured_probe() -> MemoryProbe:
    """A probe that measures nothing: the phases, cache and offload calls of the workload are no-ops."""
    from autotune.memory.probe import Counters, MemoryProbe

    class Unmeasured(MemoryProbe):
        backend = "cpu"

        def track(self, *objs: object) -> None: ...
        def empty_cache(self) -> None: ...
        def to_host(self, *objs: object) -> None: ...
        def to_device(self, *objs: object) -> None: ...
        def _start(self) -> None: ...
        def _stop(self) -> None: ...
        def _reset_peaks(self) -> None: ...

        def save_timeline(self, path: str | Path) -> Path:
            return Path(path)

        def _counters(self) -> Counters:
            return Counters(allocated_bytes=0, reserved_bytes=0, peak_allocated_bytes=0, peak_reserved_bytes=0)

    return Unmeasured()


def _report(probe: MemoryProbe | None) -> MemoryReport | None:
    if probe is None:
        return None
    try:
        return probe.report()
    except Exception:  # noqa: BLE001 - a broken report must not hide the trial's own outcome
        log.exception("could not build the memory report")
        return None


def _save_timeline(probe: MemoryProbe, path: Path) -> None:
    try:
        probe.save_timeline(path)
    except Exception:  # noqa: BLE001 - the timeline is an extra; the result still counts
        log.exception("could not save the memory timeline to %s", path)


@contextlib.contextmanager
def _fake_mode(enabled: bool) -> Iterator[None]:
    """FakeTensorMode for the `fake` backend: tensors with shapes and no storage."""
    if not enabled:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), _unknown_scalars_read_zero(), _unpacked_sequences():
        yield


def _unknown_scalars_read_zero() -> Any:
    """A dispatch mode that reads a fake tensor's unknowable value (`.item()`, `bool(t)`) as zero.

    A fake tensor has no data, yet DeepSpeed's step reads its gradient norm and overflow flag.
    Zero means finite and no overflow, which is what an fp32 run sees. A value the fake mode does
    know (a constant, such as an optimizer's step count) is still returned as it is.
    """
    import torch
    from torch._subclasses.fake_tensor import DataDependentOutputException
    from torch.utils._python_dispatch import TorchDispatchMode

    class UnknownScalarsReadZero(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            try:
                return func(*args, **(kwargs or {}))
            except DataDependentOutputException:
                if func is not torch.ops.aten._local_scalar_dense.default:
                    raise
                dtype = args[0].dtype
                return False if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0

    return UnknownScalarsReadZero()


@contextlib.contextmanager
def _unpacked_sequences() -> Iterator[None]:
    """Tell transformers' mask builder that no batch is packed, as a real run finds out by itself.

    On real tensors transformers reads the position ids, sees no packing and lets SDPA use its
    causal fast path. Fake tensors have no values, so it assumes packing and materialises a 4-D
    mask that changes the attention kernels' memory. The workload never packs sequences, so the
    answer is known.
    """
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_trial_outputs(result: TrialResult, out: str | Path, *, poll_s: float = 0.05) -> TrialResult:
    """Write what this process owes: the result itself, or on several ranks its rank file, and on
    rank 0 the combined result once every rank has written (returns the result written to `out`).

    Rank 0 waits without a collective: a rank that died leaves torchrun to end the others, and the
    launcher then combines whatever rank files exist.
    """
    from autotune.result import combine_ranks, rank_result_path, read_rank_results

    if result.world_size <= 1 or result.backend == "fake":    # a plan is one process, whatever it predicts
        write_result(result, out)
        return result
    write_result(result, rank_result_path(out, result.rank))
    if result.rank != 0:
        return result
    while len(found := read_rank_results(out, result.world_size)) < result.world_size:
        time.sleep(poll_s)
    combined = combine_ranks(found, result.world_size)
    write_result(combined, out)
    return combined


def write_result(result: TrialResult, path: str | Path) -> None:
    """Write the result JSON atomically: a reader sees the old file or the whole new one, never half."""
    result.save(path)   # atomic, and never through a link (autotune.files)
