"""How much optimizer state an optimizer actually holds."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor] | None = None) -> int:
    """Bytes of the tensors in `optimizer.state`, each storage counted once.

    Works for any optimizer whose `state` maps parameters to dicts (FRUGAL, torch.optim.AdamW, ...).
    Step counters count too: they are real allocations, if small ones.

    Args:
        optimizer: the optimizer to measure.
        params: count only the state of these parameters (e.g. the FRUGAL-eligible ones); all if None.
    """
    wanted = None if params is None else {id(p) for p in params}
    values = [state for param, state in optimizer.state.items() if wanted is None or id(param) in wanted]
    seen: set[int] = set()
    total = 0
    for value in _tensors(values):
        storage = value.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []
