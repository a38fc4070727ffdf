"""Run the targets' own code on exported files: OpenRLHF's parser, verl's Hydra config.

OpenRLHF and verl import Ray, vLLM and flash-attn at module level, although the code the tests
run (argument parsing, config classes, the DeepSpeed strategy, build_optimizer) never calls them.
Those packages need GPUs or are huge, so `stub_modules` answers their imports with MagicMock
modules. Everything else the tests run is the target's own, unmodified code.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
from types import ModuleType
from unittest import mock

UNINSTALLABLE = ("ray", "vllm", "flash_attn")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__, module.__name__ = [], spec, spec.name
        return module

    def exec_module(self, module: ModuleType) -> None:
        pass


def stub_modules(roots: tuple[str, ...] = UNINSTALLABLE) -> None:
    """Answer imports of `roots` (and their submodules) with MagicMock modules, where they are not installed."""
    missing = tuple(root for root in roots if importlib.util.find_spec(root) is None)
    if missing and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder(missing))


class _Parsed(Exception):
    """Raised once OpenRLHF has parsed and validated its arguments, before it starts Ray."""


def openrlhf_parse(argv: list[str]) -> tuple[object, object]:
    """(args, strategy): `openrlhf.cli.train_ppo_ray` run as __main__ on `argv` up to its strategy.

    The parser is built inside train_ppo_ray's `if __name__ == "__main__":` block, so the module is
    run as a script; its own validation after parse_args runs too. `get_strategy` (the first call
    of `train`) is wrapped to keep the real DeepspeedStrategy and stop before Ray starts.
    """
    stub_modules()
    import openrlhf.utils

    got: dict[str, object] = {}
    real = openrlhf.utils.get_strategy

    def get_strategy(args: object) -> object:
        got["args"], got["strategy"] = args, real(args)
        raise _Parsed

    script = importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin
    saved_argv, sys.argv = sys.argv, ["train_ppo_ray", *argv]
    openrlhf.utils.get_strategy = get_strategy
    try:
        runpy.run_path(script, run_name="__main__")
    except _Parsed:
        pass
    finally:
        openrlhf.utils.get_strategy, sys.argv = real, saved_argv
    return got["args"], got["strategy"]


def verl_compose(overrides: list[str]) -> object:
    """verl's packaged ppo_trainer.yaml composed by Hydra with `overrides` (struct mode: unknown keys fail)."""
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(importlib.util.find_spec("verl").submodule_search_locations[0], "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def optimizer_state_summary(optimizer: object) -> dict[str, object]:
    """What FRUGAL (or AdamW) holds after a step, through any DeepSpeed/accelerate wrappers.

    ZeRO-3 empties each group's `params` between steps and keeps its fp32 partitions in
    `fp32_partitioned_groups_flat` (sub-group -> group through `sub_group_to_group_id`), so the
    tensors are read from there; ZeRO-1/2 keep their flat partitions in the groups.
    """
    wrappers = []
    while hasattr(optimizer, "optimizer"):
        wrappers.append(optimizer)
        optimizer = optimizer.optimizer
    zero3 = next((w for w in wrappers if hasattr(w, "fp32_partitioned_groups_flat")), None)
    if zero3 is not None:
        tensors = [(optimizer.param_groups[zero3.sub_group_to_group_id[i]], t)
                   for i, t in enumerate(zero3.fp32_partitioned_groups_flat)]
    else:
        tensors = [(g, p) for g in optimizer.param_groups for p in g["params"]]
    free = [t for g, t in tensors if g.get("statefull") is False]
    return {"optimizer": type(optimizer).__name__, "state_free_tensors": len(free),
            "state_free_with_state": sum(bool(optimizer.state.get(t)) for t in free),
            "tensors_with_state": sum(bool(optimizer.state.get(t)) for _, t in tensors)}
