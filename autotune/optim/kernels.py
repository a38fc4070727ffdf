"""The two update rules FRUGAL applies, written as `torch._foreach_*` calls over lists of tensors.

One call per rule per parameter group, as in torch's own foreach AdamW: a Python loop of small ops per
parameter would cost more than the memory FRUGAL saves is worth on a step-time budget.
"""
from __future__ import annotations

import torch
from torch import Tensor

STATE_FREE_RULES: tuple[str, ...] = ("signsgd", "sgd", "none")


def decoupled_weight_decay(params: list[Tensor], *, lr: float, weight_decay: float) -> None:
    """p <- p * (1 - lr * wd), with the unscaled lr, as `torch.optim.AdamW` does."""
    if params and weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)


def adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step, in place, with the same operations in the same order as torch's foreach AdamW.

    Matching torch op for op (not just mathematically) is what makes FRUGAL at density 1 reproduce
    `torch.optim.AdamW(foreach=True)` bit for bit rather than to a tolerance.

    Args:
        params: parameters to update (all on one device, one dtype).
        grads: their gradients.
        exp_avgs: first moments, updated in place.
        exp_avg_sqs: second moments, updated in place.
        steps: per-parameter float32 scalar step counters, incremented here.
        lr: learning rate.
        betas: (beta1, beta2).
        eps: term added to the denominator.
        weight_decay: decoupled weight decay.
    """
    if not params:
        return
    beta1, beta2 = betas
    # A CPU scalar tensor keeps foreach_add_ on its fast path (torch's own comment in adam.py).
    torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    decoupled_weight_decay(params, lr=lr, weight_decay=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [step.item() for step in steps]
    step_size = [-lr / (1 - beta1**t) for t in step_values]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in step_values]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def state_free_step(
    params: list[Tensor],
    grads: list[Tensor],
    *,
    rule: str,
    lr: float,
    scale: float,
    weight_decay: float,
) -> None:
    """The state-free update: signSGD, SGD or nothing, after decoupled weight decay.

    Args:
        params: parameters to update.
        grads: their gradients.
        rule: "signsgd" (p -= lr*scale*sign(g)), "sgd" (p -= lr*scale*g) or "none".
        lr: learning rate; weight decay uses it unscaled.
        scale: the state-free learning-rate multiplier.
        weight_decay: decoupled weight decay.
    """
    if not params:
        return
    decoupled_weight_decay(params, lr=lr, weight_decay=weight_decay)
    if rule == "signsgd":
        torch._foreach_add_(params, torch._foreach_sign(grads), alpha=-lr * scale)
    elif rule == "sgd":
        torch._foreach_add_(params, grads, alpha=-lr * scale)
    elif rule != "none":
        raise ValueError(f"state_free_rule must be one of {', '.join(STATE_FREE_RULES)}, got {rule!r}")
