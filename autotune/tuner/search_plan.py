"""Where a search's trials run and against which budget: the decisions `autotune search` and a
`run_search` caller share.

The settings say what was asked (GPUs listed or not, ranks per trial, a budget or none); the plan
says what the trials get: the GPUs (detected when the space wants CUDA and none were listed), the
CPU when there are none, each trial's world size, and the memory budget with the sentence saying
where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass

from autotune.errors import ConfigError
from autotune.tuner import fidelity
from autotune.tuner.fidelity import Budget
from autotune.tuner.settings import SearchSettings
from autotune.tuner.space import SearchSpace


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """What the trials of one search get, made from its settings by `plan_search`."""

    settings: SearchSettings             # the settings this plan was made from
    space: SearchSpace                   # rebased onto the trials' device, world size and simulated capacity
    gpus: tuple[str, ...]                # the GPUs trials run on; empty: the CPU
    gpu_groups: tuple[str, ...]          # one CUDA_VISIBLE_DEVICES text per parallel trial
    budget: Budget                       # never missing: given, the GPU's size, or a stated default


def plan_search(settings: SearchSettings) -> SearchPlan:
    """The GPUs, world size, device and budget of the search `settings` describe.

    Raises:
        ConfigError: the world size disagrees with --gpus-per-trial, ranks per trial are asked for
            without GPUs, GPUs are listed where CUDA sees none, or they do not split into groups.
    """
    space, gpus, per_trial = settings.space, settings.gpus, settings.gpus_per_trial
    if settings.world_size is not None:
        if gpus and settings.world_size != per_trial:
            raise ConfigError(f"--world-size {settings.world_size} disagrees with --gpus-per-trial {per_trial}; "
                              "with --gpus, give --gpus-per-trial only")
        space = space.rebase({"world_size": settings.world_size})
    if per_trial > 1 and not gpus:
        raise ConfigError("--gpus-per-trial needs --gpus; on the CPU use --world-size")
    if gpus and not fidelity.detect_gpus():
        # the trials would run on the CPU while every line and recommended.yaml said "measured on the GPU"
        raise ConfigError(f"--gpus {','.join(gpus)}: CUDA is not available on this machine (PyTorch sees no GPU); "
                          "leave out --gpus to run the trials on the CPU")
    if not gpus and space.base.device == "cuda":
        gpus = fidelity.detect_gpus()
        if not gpus:
            # no GPU: trials run on (or are planned for) the CPU, the budget as the simulated device size
            space = space.rebase({"device": "cpu"})
    given = settings.budget_gb if settings.budget_gb is not None else space.budget_gb
    budget = fidelity.choose_budget(given, gpus, source="--budget-gb" if settings.budget_gb is not None
                                    else f"budget_gb in {space.source}")
    space = with_budget(space, budget.gb)
    groups = gpu_groups(gpus, per_trial)
    if per_trial > 1:      # each trial's ranks are the GPUs of its group
        space = space.rebase({"world_size": per_trial})
    return SearchPlan(settings=settings, space=space, gpus=gpus, gpu_groups=groups, budget=budget)


def gpu_groups(gpus: tuple[str, ...], per_trial: int) -> tuple[str, ...]:
    """`gpus` cut into consecutive groups of `per_trial`, each as CUDA_VISIBLE_DEVICES text ("0,1").

    Raises:
        ConfigError: the GPUs do not split evenly, so one would sit idle.
    """
    if len(gpus) % per_trial:
        raise ConfigError(f"--gpus lists {len(gpus)} GPUs, which do not split into groups of --gpus-per-trial "
                          f"{per_trial}; list a multiple of {per_trial}")
    return tuple(",".join(gpus[i:i + per_trial]) for i in range(0, len(gpus), per_trial))


def with_budget(space: SearchSpace, budget_gb: float | None) -> SearchSpace:
    """Simulated devices (cpu, fake) get the budget as their capacity, so over-budget runs OOM."""
    if budget_gb is None or space.base.device == "cuda":
        return space
    return space.rebase({"device_memory_gb": budget_gb})
