"""The one place that turns an OptimizerConfig into an optimizer for a model."""
from __future__ import annotations

import torch
from torch import nn

from autotune.config import OptimizerConfig
from autotune.optim.frugal import FRUGAL
from autotune.optim.partition import partition


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, *, lr: float, frugal: bool) -> torch.optim.Optimizer:
    """AdamW (foreach) or FRUGAL over `model`'s parameters with `cfg`'s hyperparameters.

    Args:
        model: the network to optimise.
        cfg: betas, eps, weight decay and, for FRUGAL, the partition spec.
        lr: learning rate.
        frugal: FRUGAL with `cfg.partition` when true, else `torch.optim.AdamW(foreach=True)`.
    """
    betas = (cfg.beta1, cfg.beta2)
    if not frugal:
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
        )
    spec = cfg.partition
    return FRUGAL(
        partition(model, spec),
        lr=lr,
        betas=betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        density=spec.density,
        update_gap=spec.update_gap,
        order=spec.order,
        window=spec.window,
        state_free_rule=spec.state_free_rule,
        state_free_lr_scale=spec.state_free_lr_scale,
        mode=spec.mode,
    )
