"""GPU validation: the CUDA path, the simulator and the plan against a real GPU, in one prepared run.

A GPU is lent only at times and briefly (today: one H200, ~15 minutes in all, at most 10 minutes a
command, a bare machine with torch and transformers but no optuna, mlflow, deepspeed or venv). So
this script needs nothing but torch, transformers and autotune's own modules, carried as source,
and ends inside ~8 minutes (`--budget-s`, a time guard that skips what no longer fits). The one
line a session passes to the device tool, from the repository root:

    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv && python3 -m benchmarks.gpu_check --check-env && python3 -m benchmarks.gpu_check --out "$OUT/gpu_check"

The first two commands are the cheap check of what the image holds (GPU, driver, torch, CUDA,
transformers, which optional libraries exist); the run starts only if they pass. Give the device
tool timeout_s 540 (the 450 s budget plus start-up and analysis), and hand the machine back after.
Add `--quick` (shorter sequences, a 300 s budget) when less device time is left; use `python`
instead of `python3` if that is the interpreter the image's torch belongs to. `make gpu-check` runs the same
without `make install` (`make gpu-check GPU_CHECK_ARGS="--device cpu --dry-run"` on a CPU).

What it does, each GPU measurement in a fresh subprocess (`benchmarks.gpu_check_child`), because
the allocator reads `PYTORCH_ALLOC_CONF` once, when CUDA starts, and must start empty:

1. **traces**: records `torch.cuda.memory._record_memory_history` over two iterations of a small
   Llama PPO trial (actor, critic, reference, reward; KV-cache generation; both updates) and of a
   GRPO trial, through `autotune.rlhf.trial.run_trial`. It saves the snapshots and replays them
   through the simulator: reserved after every alloc and free event, and the peaks; then the
   second iteration alone, as a trace recorded mid-run, through `replay_snapshot` (which seeds the
   simulator from the snapshot's segments).
2. **plan**: `plan_trial` for the same configs (fake tensors on the CPU, in a background
   subprocess while the GPU works); its per-phase peak reserved against the real first
   iteration's. Target: within 2%.
3. **paper**: llama-1b PPO, 3 iterations in bf16, with and without `empty_cache` after generation
   and with and without expandable_segments: peak reserved, fragmentation and step time, against
   the plan and against Zhou et al. 2024 (empty_cache after generation: about -25% memory for about
   +2% time).
4. **context**: device memory outside PyTorch's allocator (`cudaMemGetInfo` total - free, minus
   `memory_reserved()`) after CUDA starts, after cuBLAS and SDPA, and after each trial.
5. **output**: `gpu_check.json`, `summary.txt` and the snapshot pickles (`*_trace.pickle.gz`),
   at most 8 files in one folder, and the summary table on stdout.

`--device cpu --dry-run` runs all of it on the CPU at tiny sizes through the simulated probe, and
writes the same JSON; CI tests it. Its trace comparison is the simulator against itself (there is
no real allocator on a CPU), so it checks the plumbing, not the simulator.
"""  # noqa: E501 - the device command above is one line, to be copied as it stands
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from benchmarks import gpu_check_report as report
from benchmarks.gpu_check_trace import analyse_trace

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = ("traces", "plan", "paper", "context")
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")   # the new name and the old one
SCHEMA = "autotune-gpu-check-v1"
OPTIONAL_LIBS = ("optuna", "mlflow", "deepspeed", "rich", "matplotlib", "click")


@dataclass(frozen=True, kw_only=True)
class Shape:
    """An RLHF workload's size (TrialConfig `workload.*` values)."""

    batch_size: int
    prompt_len: int
    gen_len: int
    steps: int
    ppo_epochs: int = 1
    group_size: int = 4

    def overrides(self) -> dict[str, Any]:
        return {"workload.batch_size": self.batch_size, "workload.micro_batch": self.batch_size,
                "workload.prompt_len": self.prompt_len, "workload.gen_len": self.gen_len,
                "workload.steps": self.steps, "workload.ppo_epochs": self.ppo_epochs,
                "workload.group_size": self.group_size}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One run's sizes and time limits."""

    name: str
    dtype: str
    trace_model: str
    trace_shape: Shape
    paper_model: str
    paper_shape: Shape
    budget_s: float              # the whole run, including the background plans
    child_timeout_s: float       # one subprocess at most
    min_child_s: float           # a step that cannot have this much left is skipped


SETTINGS = {
    "full": Settings(name="full", dtype="bfloat16", trace_model="llama-small",
                     trace_shape=Shape(batch_size=8, prompt_len=64, gen_len=32, steps=2),
                     paper_model="llama-1b", paper_shape=Shape(batch_size=8, prompt_len=128, gen_len=64, steps=3),
                     budget_s=450, child_timeout_s=240, min_child_s=45),
    "quick": Settings(name="quick", dtype="bfloat16", trace_model="llama-small",
                      trace_shape=Shape(batch_size=4, prompt_len=32, gen_len=16, steps=2),
                      paper_model="llama-1b", paper_shape=Shape(batch_size=8, prompt_len=64, gen_len=16, steps=3),
                      budget_s=300, child_timeout_s=150, min_child_s=35),
    "dry": Settings(name="dry", dtype="float32", trace_model="llama-tiny",
                    trace_shape=Shape(batch_size=2, prompt_len=4, gen_len=3, steps=2, group_size=2),
                    paper_model="llama-tiny", paper_shape=Shape(batch_size=2, prompt_len=4, gen_len=3, steps=3),
                    budget_s=900, child_timeout_s=300, min_child_s=5),
}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One of the paper's four runs: empty_cache after generation on or off, expandable_segments on or off."""

    name: str
    empty_cache_after_generation: bool = False
    expandable_segments: bool = False

    def overrides(self) -> dict[str, Any]:
        return {"memory.empty_cache_after": ("generation",) if self.empty_cache_after_generation else (),
                "memory.allocator.expandable_segments": self.expandable_segments}


VARIANTS = (
    Variant(name="baseline"),
    Variant(name="empty_cache", empty_cache_after_generation=True),
    Variant(name="expandable", expandable_segments=True),
    Variant(name="empty_cache+expandable", empty_cache_after_generation=True, expandable_segments=True),
)


def trace_configs(settings: Settings, device: str) -> dict[str, TrialConfig]:
    """The small PPO and GRPO trials whose allocator history step 1 records."""
    ppo = TrialConfig().replace(**{"model.actor": settings.trace_model, "model.dtype": settings.dtype,
                                   "algorithm": "ppo", "device": device, **settings.trace_shape.overrides()})
    return {"ppo": ppo, "grpo": ppo.replace(algorithm="grpo")}


def paper_configs(settings: Settings, device: str, model: str | None = None) -> dict[str, TrialConfig]:
    """Step 3's PPO trial under each variant (`model`: a saved copy of `settings.paper_model`)."""
    base = TrialConfig().replace(**{"model.actor": model or settings.paper_model, "model.dtype": settings.dtype,
                                    "algorithm": "ppo", "device": device, **settings.paper_shape.overrides()})
    return {v.name: base.replace(**v.overrides()) for v in VARIANTS}


class Clock:
    """The time guard: how much of the budget is left."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def remaining_s(self) -> float:
        return self.budget_s - self.elapsed_s()


class Children:
    """Runs `benchmarks.gpu_check_child` tasks, one at a time on the GPU, within the time guard."""

    def __init__(self, settings: Settings, clock: Clock, workdir: Path, *, device: str):
        self.settings, self.clock, self.workdir, self.device = settings, clock, workdir, device
        self._count = 0

    def _paths(self, task: str) -> tuple[Path, Path]:
        self._count += 1
        return (self.workdir / f"{self._count:02d}_{task}_spec.json",
                self.workdir / f"{self._count:02d}_{task}_out.json")

    @staticmethod
    def _command(task: str, spec: dict[str, Any], spec_path: Path, out_path: Path) -> list[str]:
        spec_path.write_text(json.dumps(spec))
        return [sys.executable, "-m", "benchmarks.gpu_check_child", task, str(spec_path), str(out_path)]

    def env(self, alloc_conf: str) -> dict[str, str]:
        """The child's environment: autotune importable from source, the allocator settings set."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["TOKENIZERS_PARALLELISM"] = "false"
        if self.device == "cpu":
            # tiny models gain nothing from intra-op threads, and on a small shared CPU they spin
            env["OMP_NUM_THREADS"] = "1"
        for var in ALLOC_CONF_VARS:
            env.pop(var, None)
            if alloc_conf:
                env[var] = alloc_conf   # both names: whichever this torch reads, it reads the same value
        return env

    def run(self, task: str, spec: dict[str, Any], *, alloc_conf: str = "") -> dict[str, Any]:
        """Run one task to completion; a skip, timeout or crash is a result with that status."""
        left = self.clock.remaining_s()
        if left < self.settings.min_child_s:
            return {"status": "skipped", "message": f"time guard: {left:.0f} s left of {self.clock.budget_s:.0f} s"}
        spec_path, out_path = self._paths(task)
        command = self._command(task, spec, spec_path, out_path)
        timeout_s = min(self.settings.child_timeout_s, left)
        try:
            done = subprocess.run(command, env=self.env(alloc_conf), cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "message": f"{task} ran over {timeout_s:.0f} s"}
        return {**_read_child(out_path, done.returncode, done.stderr), "stderr_tail": _tail(done.stderr)}

    def start(self, task: str, spec: dict[str, Any]) -> Job:
        """Start a CPU-only task in the background (plans, saving weights); `collect` reads it."""
        spec_path, out_path = self._paths(task)
        command = self._command(task, {**spec, "progress_path": str(out_path)}, spec_path, out_path)
        log_path = self.workdir / f"{task}.log"
        env = self.env("")
        env["CUDA_VISIBLE_DEVICES"] = ""     # it needs no GPU and must not hold a context there
        with log_path.open("w") as log:      # the child keeps its own descriptor
            process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        return Job(task=task, process=process, out_path=out_path, log_path=log_path)

    def collect(self, job: Job) -> dict[str, Any]:
        """Wait for a background task while the budget lasts; then take what it wrote so far."""
        try:
            job.process.wait(timeout=max(self.clock.remaining_s(), 1.0))
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
            partial = _read_child(job.out_path, None, "")
            return {**partial, "status": "timeout", "message": f"time guard: {job.task} did not finish"}
        return _read_child(job.out_path, job.process.returncode, job.log_path.read_text(errors="replace"))


@dataclass(frozen=True, kw_only=True)
class Job:
    """A background child: its task, process, result file and log."""

    task: str
    process: subprocess.Popen
    out_path: Path
    log_path: Path


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_child(out_path: Path, returncode: int | None, stderr: str) -> dict[str, Any]:
    try:
        return json.loads(out_path.read_text())
    except (OSError, ValueError):
        return {"status": "error",
                "message": f"the subprocess wrote no result (exit code {returncode}): {_tail(stderr)}"}


# -- the steps -------------------------------------------------------------------------------
def run_traces(children: Children, configs: dict[str, TrialConfig], out_dir: Path) -> list[dict[str, Any]]:
    """Step 1: record each trial's allocator history, then replay it through the simulator."""
    rows = []
    for name, cfg in configs.items():
        path = out_dir / f"{name}_trace.pickle.gz"
        logger.info("traces: %s (%s, %s)", name, cfg.model.actor, cfg.algorithm)
        trial = children.run("trial", {"config": cfg.to_dict(), "snapshot": str(path)},
                             alloc_conf=cfg.memory.allocator.to_env_string())
        row: dict[str, Any] = {"name": name, "model": cfg.model.actor, "algorithm": cfg.algorithm,
                               "config": cfg.to_dict(), "trial": trial}
        if trial.get("status") == "ok" and trial.get("snapshot"):
            row["replay"] = analyse_trace(path, cfg.memory.allocator, trial)
        rows.append(row)
    return rows


def run_paper(children: Children, settings: Settings, device: str, weights: Job, saved: Path) -> list[dict[str, Any]]:
    """Step 3: the four variants of the 1B PPO trial, each in its own process, from the saved weights.

    The dry run saves the weights too (that code must work before GPU time is spent on it) but
    builds the tiny preset in each trial: the `cpu` backend's tracer does not see weights that
    `from_pretrained` memory-maps from safetensors, so a loaded model would look smaller there.
    """
    saved_ok = children.collect(weights).get("status") == "ok"
    if not saved_ok:
        logger.warning("paper: could not save %s's weights; each trial initialises its own", settings.paper_model)
    use_saved = saved_ok and device == "cuda"
    rows: list[dict[str, Any]] = []
    for name, cfg in paper_configs(settings, device, str(saved) if use_saved else None).items():
        logger.info("paper: %s (%s, %d iterations)", name, settings.paper_model, cfg.workload.steps)
        trial = children.run("trial", {"config": cfg.to_dict()}, alloc_conf=cfg.memory.allocator.to_env_string())
        rows.append({"name": name, "model": settings.paper_model, "weights_saved": saved_ok,
                     "weights": "random, saved once and loaded" if use_saved else "random, built in the trial",
                     "config": cfg.to_dict(), "trial": trial})
    return rows


def check_env() -> int:
    """`--check-env`: what the image holds, in a few seconds, without touching the GPU."""
    import importlib.util

    import torch
    import transformers

    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}, CUDA available: {torch.cuda.is_available()}")
    print("optional libraries present: " + (", ".join(m for m in OPTIONAL_LIBS if importlib.util.find_spec(m))
                                           or "none"))
    import autotune.rlhf.trial  # noqa: F401
    import benchmarks.gpu_check_child  # noqa: F401 - these must import here, from source

    print("autotune imports from source: ok")
    return 0


def run(settings: Settings, *, device: str, out_dir: Path, steps: Sequence[str]) -> tuple[dict[str, Any], str]:
    """All steps within the settings' budget; returns the JSON document (also written to out_dir)
    and the summary table.

    Raises:
        ConfigError: `device` is cuda but the context subprocess finds no CUDA.
    """
    clock = Clock(settings.budget_s)
    nvidia_smi = _nvidia_smi()       # before any child: what the device holds without us
    out_dir.mkdir(parents=True, exist_ok=True)
    traces = trace_configs(settings, device)
    papers = paper_configs(settings, device) if "paper" in steps else {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        children = Children(settings, clock, Path(tmp), device=device)
        context = children.run("context", {"dtype": settings.dtype})
        if device == "cuda" and context.get("status") == "ok" and not context.get("cuda_available"):
            raise ConfigError(f"--device cuda: CUDA is not available here (torch {context.get('torch')}); "
                              "run `--device cpu --dry-run` on a CPU")
        # CPU-only work runs in the background while the GPU is busy with the steps below.
        saved = Path(tmp) / "paper_model"
        weights = children.start("save_model", {"model": settings.paper_model, "dtype": settings.dtype,
                                                "path": str(saved)}) if papers else None
        plans_job = children.start("plans", _plan_spec(traces, papers, device)) if "plan" in steps else None
        trace_rows = run_traces(children, traces, out_dir) if "traces" in steps else []
        paper_rows = run_paper(children, settings, device, weights, saved) if weights else []
        plans = children.collect(plans_job) if plans_job else {"status": "skipped", "plans": []}
    document = report.assemble(
        schema=SCHEMA, settings=settings, device=device, steps=steps, context=context, traces=trace_rows,
        papers=paper_rows, plans=plans, wall_time_s=clock.elapsed_s(), nvidia_smi=nvidia_smi)
    return document, report.write(document, out_dir)


def _plan_spec(traces: dict[str, TrialConfig], papers: dict[str, TrialConfig], device: str) -> dict[str, Any]:
    """The plans child's work: every config of steps 1 and 3, the small ones first."""
    configs = {**{f"trace:{k}": v for k, v in traces.items()}, **{f"paper:{k}": v for k, v in papers.items()}}
    return {"configs": {k: v.to_dict() for k, v in configs.items()}, "threads": 4 if device == "cuda" else 1}


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu_check", help="output folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (with --device cpu: what CI runs)")
    parser.add_argument("--quick", action="store_true", help="shorter sequences, a smaller budget")
    parser.add_argument("--budget-s", type=float, default=None, help="time guard for the whole run")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--check-env", action="store_true", help="print what the image holds and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.check_env:
        return check_env()
    try:
        steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise ConfigError(f"--steps: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        if "$" in str(args.out):
            raise ConfigError(f"--out {args.out}: an unexpanded variable; quote it as \"$OUT/gpu_check\"")
        settings = SETTINGS["dry" if args.dry_run else "quick" if args.quick else "full"]
        if args.budget_s is not None:
            settings = Settings(**{**vars(settings), "budget_s": args.budget_s})
        _, table = run(settings, device=args.device, out_dir=args.out, steps=steps)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
