"""How a search measures each objective, and the words every output uses to say so.

Memory depends on every knob but not on the values inside the tensors; reward depends on the
optimizer and the workload but not on where tensors live. So each is measured where it is cheapest
and still true for the model the user named:

* memory on a GPU: a short real run of `MEMORY_ITERATIONS` iterations (the peak settles by then:
  the optimizer state exists from the first update and the second iteration is the first to carry
  it through generation; see tests/tuner/test_fidelity.py);
* memory on the CPU: a real traced run when the host can hold the model, else the full-size plan
  (fake tensors replayed through the allocator simulator);
* reward: one reward run per reward key, on the full model where it runs, else on a proxy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from autotune.result import TrialResult

log = logging.getLogger(__name__)

DEFAULT_CPU_BUDGET_GB = 80.0   # an 80 GiB GPU (A100/H100 80GB): the common card an RLHF job targets
MEMORY_ITERATIONS = 3          # iterations of a GPU memory run
# Python, torch and transformers in a trial process, beyond its tensors (measured: ~1.1 GiB RSS
# for a llama-tiny trial), rounded up so a borderline trial is planned rather than killed.
HOST_OVERHEAD_GB = 1.5

MemoryMode = Literal["gpu", "cpu", "planned"]

# What a proxy's reward can and cannot say, printed wherever a study's rewards come from one. The
# default proxies are random-init presets that learn the task from scratch; whether the user's
# pretrained model ranks configs alike is not established: SmolLM2-135M does not learn the task in
# the 16 steps a CPU affords (docs/RESULTS.md, section 3a).
PROXY_CAVEAT = ("the proxy ranks how configs learn on the proxy; that the model itself ranks them alike is "
                "not established (docs/RESULTS.md, section 3a)")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """The memory budget of a search and the sentence that says where it came from."""

    gb: float
    note: str
    assumed: bool = False   # no GPU and no --budget-gb: a stated assumption


def choose_budget(budget_gb: float | None, gpus: tuple[str, ...], *, source: str = "--budget-gb") -> Budget:
    """`budget_gb` if given (from `source`, named in the note); else the smallest listed GPU's total
    memory; else DEFAULT_CPU_BUDGET_GB."""
    if budget_gb is not None:
        return Budget(gb=budget_gb, note=f"budget {budget_gb:g} GiB ({source})")
    if gpus:
        import torch

        total = min(torch.cuda.get_device_properties(int(g)).total_memory for g in gpus) / (1 << 30)
        return Budget(gb=round(total, 2), note=f"budget {total:.1f} GiB: the total memory of GPU {','.join(gpus)}")
    return Budget(gb=DEFAULT_CPU_BUDGET_GB, assumed=True,
                  note=f"no GPU: assuming an {DEFAULT_CPU_BUDGET_GB:g} GiB GPU as the memory budget "
                  "(pass --budget-gb to change it)")


def detect_gpus() -> tuple[str, ...]:
    """Every visible CUDA device index, or () without CUDA."""
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def host_need_gb(planned: TrialResult) -> float | None:
    """Host memory a real CPU run of a planned config needs: its tensors' peak plus the process itself.

    On the CPU every tensor is in host memory, offloaded or not, so the plan of the config with
    nothing offloaded (the study's baseline) is the bound used for every trial.
    """
    if planned.memory is None:
        return None
    return planned.memory.peak_allocated_gb + HOST_OVERHEAD_GB


def choose_memory_mode(*, gpus: tuple[str, ...], need_gb: float | None, available_gb: float) -> MemoryMode:
    """gpu with GPUs; a real CPU run when the host holds it; else the plan at full size."""
    if gpus:
        return "gpu"
    if need_gb is not None and need_gb <= available_gb:
        return "cpu"
    return "planned"


def host_shortfall(need_gb: float, available_gb: float) -> str:
    """The sentence recorded for a CPU trial that is not launched."""
    return f"needs {need_gb:.1f} GiB of host memory, {available_gb:.1f} GiB available"


def memory_label(model: str, mode: MemoryMode, *, iterations: int | None = None) -> str:
    """e.g. "llama-1b, planned (simulator)" or "llama-tiny, measured on the CPU (traced), 4 iterations"."""
    if mode == "planned":
        return f"{model}, planned (simulator)"
    where = "on the GPU" if mode == "gpu" else "on the CPU (traced, simulator)"
    return f"{model}, measured {where}, {iterations} iterations"


def reward_label(model: str, steps: int) -> str:
    """The reward source of a trial that measured its own reward (a real run of the full model)."""
    return f"{model}, {steps} steps (this trial)"
