"""FRUGAL inside verl 0.9: importing this module makes verl's FSDP engine build FRUGAL with its partition.

verl's `build_optimizer` calls `optimizer_cls(module.parameters(), ...)`: no names and no groups,
so a FRUGAL class named there would keep AdamW state for every parameter. The exported overrides
therefore name this module twice:

- `model.external_lib=autotune.export.verl_hook`: verl imports it in every worker when it builds
  the model config, which patches `FSDPEngine._build_optimizer` to pass
  `autotune.optim.partition(module, spec)` (the module, not only its parameters);
- `optim.optimizer_impl=autotune.export.verl_hook`, `optim.optimizer=FRUGAL`: the patch acts only
  for these models, and should the patch be missing, `FRUGAL` below fails loudly instead of
  training with state everywhere.

The partition is read from the file named by AUTOTUNE_FRUGAL_PARTITION (default
./frugal_partition.yaml). Under FSDP1 the exported `use_orig_params=true` keeps the original
parameters visible to the partition; FSDP2 always does.
"""
from __future__ import annotations

import logging
import os
from typing import Any

ENV_PARTITION = "AUTOTUNE_FRUGAL_PARTITION"
logger = logging.getLogger(__name__)


def frugal_for(module: Any, optim_config: Any) -> Any:
    """FRUGAL over `module` with verl's optimizer settings (lr, weight decay, betas) and the exported partition."""
    from autotune import schema
    from autotune.config import OptimizerConfig, PartitionSpec
    from autotune.optim import build_optimizer

    spec = schema.load_yaml(PartitionSpec, os.environ.get(ENV_PARTITION, "frugal_partition.yaml"))
    beta1, beta2 = optim_config.betas
    cfg = OptimizerConfig(name="frugal", weight_decay=optim_config.weight_decay, beta1=beta1, beta2=beta2,
                          partition=spec)
    return build_optimizer(module, cfg, lr=optim_config.lr, frugal=True)


class FRUGAL:  # noqa: N801 - the name verl's `optim.optimizer` key gives
    """What verl's own build_optimizer would call without the patch: refuse, rather than keep state everywhere."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        raise RuntimeError("verl built FRUGAL from bare parameters: the autotune.export.verl_hook patch is not "
                           "installed in this worker; set model.external_lib=autotune.export.verl_hook")


def install() -> None:
    """Patch verl's FSDP engine so that models whose optimizer_impl names this module get FRUGAL."""
    from verl.workers.engine.fsdp import transformer_impl

    engine = transformer_impl.FSDPEngine
    if getattr(engine._build_optimizer, "_autotune_frugal", False):
        return
    original = engine._build_optimizer

    def _build_optimizer(self: Any, module: Any) -> Any:
        if self.optimizer_config.optimizer_impl != __name__:
            return original(self, module)
        logger.info("autotune: FRUGAL with the exported partition for %s", type(module).__name__)
        return frugal_for(module, self.optimizer_config)

    _build_optimizer._autotune_frugal = True  # type: ignore[attr-defined]
    engine._build_optimizer = _build_optimizer


try:  # verl imports this module as model.external_lib inside its workers
    install()
except ImportError:  # imported outside verl (docs, tests without verl): nothing to patch
    pass
