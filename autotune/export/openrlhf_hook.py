"""FRUGAL inside OpenRLHF 0.11: `install()` makes its DeepSpeed strategy hand the actor FRUGAL.

OpenRLHF builds the optimizer from the DeepSpeed config inside its Ray actors
(`DeepspeedStrategy._ds_init_train_model` calls `deepspeed.initialize(optimizer=None, config=...)`
with an AdamW section), so a training script has no optimizer call to replace. `install()` wraps
that method: for the actor (and, with `critic=True`, the critic) it drops the AdamW section, adds
the two flags ZeRO needs before it accepts a client optimizer (`zero_allow_untested_optimizer`,
and `zero_force_ds_cpu_optimizer: false` for `--ds.adam_offload`), and passes FRUGAL built from the
exported partition with OpenRLHF's own lr, betas, eps and weight decay.

It must run in every Ray worker: start Ray with
`runtime_env={"worker_process_setup_hook": "autotune.export.openrlhf_hook.install"}` before
OpenRLHF's entry point (docs/EXPORT_TARGETS.md, "OpenRLHF 0.11"). The partition file is named by
AUTOTUNE_FRUGAL_PARTITION (default ./frugal_partition.yaml).
"""
from __future__ import annotations

import os
from typing import Any

ENV_PARTITION = "AUTOTUNE_FRUGAL_PARTITION"
ENV_CRITIC = "AUTOTUNE_FRUGAL_CRITIC"       # "1": the critic trains with FRUGAL too


class _WithInitialize:
    """The deepspeed module, except for `initialize`, for the duration of one engine build."""

    def __init__(self, module: Any, initialize: Any) -> None:
        self._module, self.initialize = module, initialize

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def frugal_from_adam_cfg(model: Any, adam: dict) -> Any:
    """FRUGAL over `model` with OpenRLHF's `--actor.adam.*` settings and the exported partition."""
    from autotune import schema
    from autotune.config import OptimizerConfig, PartitionSpec
    from autotune.optim import build_optimizer

    spec = schema.load_yaml(PartitionSpec, os.environ.get(ENV_PARTITION, "frugal_partition.yaml"))
    beta1, beta2 = adam["betas"]
    cfg = OptimizerConfig(name="frugal", weight_decay=adam["weight_decay"], beta1=beta1, beta2=beta2,
                          eps=adam["eps"], partition=spec)
    return build_optimizer(model, cfg, lr=adam["lr"], frugal=True)


def install(critic: bool | None = None) -> None:
    """Patch OpenRLHF's DeepspeedStrategy so the actor (and optionally the critic) trains with FRUGAL."""
    from openrlhf.models import Actor
    from openrlhf.utils.deepspeed import deepspeed as strategy_module

    strategy_cls = strategy_module.DeepspeedStrategy
    if getattr(strategy_cls._ds_init_train_model, "_autotune_frugal", False):
        return
    original = strategy_cls._ds_init_train_model
    with_critic = critic if critic is not None else os.environ.get(ENV_CRITIC) == "1"

    def _ds_init_train_model(self: Any, model: Any, cfg: dict) -> Any:
        if cfg.get("optim", "adam") != "adam" or not (isinstance(model, Actor) or with_critic):
            return original(self, model, cfg)
        real = strategy_module.deepspeed

        def initialize(*, model: Any, optimizer: Any = None, model_parameters: Any = None, config: dict,
                       **kwargs: Any) -> Any:
            config = {key: value for key, value in config.items() if key != "optimizer"}
            config["zero_allow_untested_optimizer"] = True
            config["zero_force_ds_cpu_optimizer"] = False
            return real.initialize(model=model, optimizer=frugal_from_adam_cfg(model, cfg["adam"]), config=config,
                                   **kwargs)

        strategy_module.deepspeed = _WithInitialize(real, initialize)
        try:
            return original(self, model, cfg)
        finally:
            strategy_module.deepspeed = real

    _ds_init_train_model._autotune_frugal = True  # type: ignore[attr-defined]
    strategy_cls._ds_init_train_model = _ds_init_train_model
