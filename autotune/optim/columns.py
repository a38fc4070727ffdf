"""FRUGAL's column variant: a random `density` share of each weight's columns is state-full.

Columns are the last dimension of the stored weight (a Linear weight's input features). The chosen
columns get AdamW with moments of shape (rows, chosen columns); the others get the state-free rule.
The optimizer re-draws the columns every `update_gap` steps and restarts their moments from zero.
"""
from __future__ import annotations

import torch
from torch import Tensor

from autotune.optim.kernels import adamw_step, decoupled_weight_decay


def column_count(n_cols: int, density: float) -> int:
    """int(n_cols * density): the authors' column count, rounded down."""
    return int(n_cols * density)


def draw_columns(param: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """Sorted int64 indices of int(columns * density) columns of `param`, drawn without replacement.

    The count rounds down, as the authors' `CoordinateProjector._get_indices` does
    (`int(total_length * density)`), so a given density keeps the same columns share as the paper's runs.
    """
    n_cols = param.shape[-1]
    chosen = torch.randperm(n_cols, generator=generator)[: column_count(n_cols, density)]
    return chosen.sort().values.to(param.device)  # drawn on the CPU generator, used with the weight


def column_step(
    params: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    rule: str,
    scale: float,
) -> None:
    """One step on weights whose `states` hold `columns`, `step`, `exp_avg` and `exp_avg_sq`.

    Gathering and scattering the chosen columns is a per-tensor loop (their index sets differ); the
    arithmetic is foreach over the gathered pieces.
    """
    if not params:
        return
    grads = [p.grad for p in params]
    decoupled_weight_decay(params, lr=lr, weight_decay=weight_decay)
    if rule in ("signsgd", "sgd"):
        updates = torch._foreach_sign(grads) if rule == "signsgd" else [g.clone() for g in grads]
        for update, state in zip(updates, states):
            update.index_fill_(-1, state["columns"], 0.0)  # chosen columns move by AdamW only
        torch._foreach_add_(params, updates, alpha=-lr * scale)
    pieces = [p.index_select(-1, s["columns"]) for p, s in zip(params, states)]
    adamw_step(
        pieces,
        [g.index_select(-1, s["columns"]) for g, s in zip(grads, states)],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [s["step"] for s in states],
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=0.0,  # already applied to the whole weight above
    )
    for param, piece, state in zip(params, pieces, states):
        param.index_copy_(-1, state["columns"], piece)
