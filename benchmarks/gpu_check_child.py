"""What `benchmarks.gpu_check` runs in each subprocess: one trial, the plans, or the context reserve.

Each GPU measurement needs a process of its own: the allocator reads `PYTORCH_ALLOC_CONF` once,
when CUDA starts, and peaks and cached segments must start from an empty allocator. The parent
puts the allocator settings in the environment and runs

    python -m benchmarks.gpu_check_child TASK SPEC.json RESULT.json

where TASK is `trial` (one `run_trial`, optionally under `_record_memory_history`), `plans`
(`plan_trial` for a list of configs: fake tensors, no GPU), `save_model` (a preset's random
weights saved once, so that each trial process loads them instead of initialising them again)
or `context` (memory the CUDA context and libraries hold outside PyTorch's allocator). The
result is one JSON object.

Only torch, transformers and autotune's own modules are imported: the GPU image has no optuna,
mlflow or deepspeed (ZeRO stays at 0, which never imports DeepSpeed).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The history ring buffer must hold the whole recording: a dropped event would break the replay.
MAX_HISTORY_EVENTS = 3_000_000


def context_reserve(label: str) -> dict[str, Any]:
    """Device memory in use outside PyTorch's caching allocator at this moment.

    `cudaMemGetInfo` (total − free) counts everything on the device: this process's CUDA context,
    module images, library handles and workspaces, other processes, and what the allocator
    reserved. Taking away `memory_reserved()` leaves what the simulator's capacity model must hold
    back. Without CUDA every figure is None.
    """
    import torch

    if not torch.cuda.is_available():
        return {"stage": label, "device_used_bytes": None, "device_total_bytes": None,
                "torch_reserved_bytes": None, "outside_allocator_bytes": None}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    return {"stage": label, "device_used_bytes": total - free, "device_total_bytes": total,
            "torch_reserved_bytes": reserved, "outside_allocator_bytes": total - free - reserved}


def task_context(spec: dict[str, Any]) -> dict[str, Any]:
    """The context reserve after CUDA starts, after the first allocation, after cuBLAS and after SDPA."""
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, spec.get("dtype", "bfloat16")) if cuda else torch.float32
    stages = [context_reserve("cuda_init")]
    x = torch.ones(1 << 18, device=device)
    stages.append(context_reserve("first_allocation"))
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    (a @ a).sum().item()      # the first matmul creates the cuBLAS handle and its workspace
    stages.append(context_reserve("cublas"))
    q = torch.randn(2, 8, 256, 64, device=device, dtype=dtype)
    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()   # loads the attention kernels
    stages.append(context_reserve("sdpa"))
    del x, a, q
    import transformers

    return {"status": "ok", "stages": stages, "cuda_available": cuda, "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "python": sys.version.split()[0],
            "gpu": torch.cuda.get_device_name(0) if cuda else None}


def task_plans(spec: dict[str, Any]) -> dict[str, Any]:
    """`plan_trial` for each named config: the plan's per-phase and whole-run predictions."""
    import torch

    from autotune.config import TrialConfig
    from autotune.rlhf.trial import plan_trial

    torch.set_num_threads(int(spec.get("threads", 1)))
    plans = []
    for name, config in spec["configs"].items():
        start = time.perf_counter()
        result = plan_trial(TrialConfig.from_dict(config))
        plans.append({"name": name, "status": result.status, "message": result.message,
                      "memory": _memory_dict(result.memory), "wall_time_s": time.perf_counter() - start})
        if spec.get("progress_path"):   # the parent may have to stop this early: keep what is done
            Path(spec["progress_path"]).write_text(json.dumps({"status": "partial", "plans": plans}))
    return {"status": "ok", "plans": plans}


def task_save_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a preset's random weights once and save them as a Hugging Face folder.

    Random init of a 1B model takes tens of seconds on the CPU (normal_ runs serially), and each
    of step 3's four variants builds four such models in a process of its own; loading a saved
    copy takes seconds. Runs in the background, without the GPU, while the traces are recorded.
    """
    from autotune.rlhf.models import build_policy

    model = build_policy(spec["model"], dtype=spec["dtype"], seed=int(spec.get("seed", 0)))
    model.save_pretrained(spec["path"])
    return {"status": "ok", "path": spec["path"], "parameters": sum(p.numel() for p in model.parameters())}


def task_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """One `run_trial`, with the first iteration's per-phase figures and, if asked, the allocator history."""
    import torch

    from autotune.config import TrialConfig
    from autotune.rlhf.trial import run_trial

    cfg = TrialConfig.from_dict(spec["config"])
    recorder = _Recorder(cfg, spec.get("snapshot"))
    iterations: list[dict[str, Any]] = []

    def on_iteration(stats: Any, probe: Any) -> None:
        recorder.mark(probe)
        report = probe.report()
        iterations.append({
            "step": stats.step, "time_s": stats.time_s, "run_peak_reserved_bytes": report.peak_reserved_bytes,
            "run_peak_allocated_bytes": report.peak_allocated_bytes,
            # after the first iteration the report holds that iteration alone: what the plan predicts
            "phases": _memory_dict(report)["phases"] if stats.step == 0 else None,
        })

    recorder.start()
    result = run_trial(cfg, on_iteration=on_iteration)
    out = {"status": result.status, "message": result.message, "failed_phase": result.failed_phase,
           "memory": _memory_dict(result.memory), "step_time_s": result.step_time_s,
           "step_times_s": [it["time_s"] for it in iterations], "wall_time_s": result.wall_time_s,
           "iterations": iterations, "versions": result.versions,
           "alloc_conf_env": {k: os.environ.get(k) for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")}}
    out["snapshot"] = recorder.finish()
    out["context"] = context_reserve("after_trial")
    out["expandable_in_effect"] = _expandable_in_effect() if cfg.device == "cuda" else None
    if cfg.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


class _Recorder:
    """The allocator history: CUDA's own (`_record_memory_history`), or on the CPU the storage trace
    of the `cpu` backend turned into the same shape (see `gpu_check_trace.synthesize_snapshot`)."""

    def __init__(self, cfg: Any, path: str | None):
        self.cfg, self.path = cfg, None if path is None else Path(path)
        self.marks: list[int] = []
        self._probe: Any = None

    def start(self) -> None:
        if self.path is not None and self.cfg.device == "cuda":
            import torch

            # No stack frames (context=None): they would make the pickle hundreds of MB.
            torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python",
                                                     max_entries=MAX_HISTORY_EVENTS)

    def mark(self, probe: Any) -> None:
        """Note the index of the last event recorded so far: an iteration's end."""
        if self.path is None:
            return
        self._probe = probe
        if self.cfg.device == "cuda":
            import torch

            from benchmarks.gpu_check_trace import busiest_trace

            self.marks.append(len(busiest_trace(torch.cuda.memory._snapshot())) - 1)
        else:       # an index into the storage trace, mapped to snapshot events by finish()
            self.marks.append(len(probe.trace()) - 1)

    def finish(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        from benchmarks.gpu_check_trace import busiest_trace, save_snapshot, synthesize_snapshot

        if self.cfg.device != "cuda" and self._probe is None:
            return None      # the trial failed before its first iteration: nothing to synthesize
        marks = self.marks
        if self.cfg.device == "cuda":
            import torch

            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
        else:
            snapshot, index_of = synthesize_snapshot(self._probe.trace(), self.cfg.memory.allocator)
            marks = [index_of[m] for m in self.marks]
        events = busiest_trace(snapshot)
        size = save_snapshot(snapshot, self.path)
        return {"file": self.path.name, "bytes": size, "events": len(events), "iteration_event_index": marks,
                "history_full": len(events) >= MAX_HISTORY_EVENTS, "synthetic": self.cfg.device != "cuda"}


def _expandable_in_effect() -> bool | None:
    """Whether the allocator really made expandable segments (the env string could be ignored)."""
    import torch

    segments = torch.cuda.memory._snapshot().get("segments", [])
    flags = [seg["is_expandable"] for seg in segments if "is_expandable" in seg]
    return any(flags) if flags else None


def _memory_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    phases = [{"name": p.name, "peak_reserved_bytes": p.peak_reserved_bytes,
               "peak_allocated_bytes": p.peak_allocated_bytes, "end_reserved_bytes": p.end_reserved_bytes,
               "wall_time_s": p.wall_time_s} for p in report.phases]
    return {"backend": report.backend, "peak_reserved_bytes": report.peak_reserved_bytes,
            "peak_allocated_bytes": report.peak_allocated_bytes, "fragmentation": report.fragmentation,
            "num_alloc_retries": report.num_alloc_retries, "phases": phases}


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "context": task_context, "plans": task_plans, "save_model": task_save_model, "trial": task_trial,
}


def main(argv: list[str]) -> int:
    """Run one task; whatever happens, RESULT.json says so (exit code 0 when it could be written)."""
    task, spec_path, out_path = argv
    start = time.perf_counter()
    try:
        out = TASKS[task](json.loads(Path(spec_path).read_text()))
    except Exception as exc:  # noqa: BLE001 - the parent reads every failure from the JSON
        out = {"status": "error", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["task_wall_time_s"] = time.perf_counter() - start
    Path(out_path).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
