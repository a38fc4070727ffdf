"""FRUGAL: AdamW on a state-full share of the parameters, a state-free rule on the rest.

Parameter groups carry the partition:

- `{"statefull": True}` (the default for a group without either key): AdamW, moments kept;
- `{"statefull": False}`: the state-free rule (`signsgd`, `sgd` or `none`); no state is ever made;
- `{"rotate": True}`: FRUGAL itself decides. In `block` mode each tensor is a block and
  round(n_blocks * density) of them are state-full at a time, moving on every `update_gap` steps
  (see `autotune.optim.rotation`); blocks that stay active keep their moments, deactivated blocks'
  state is freed, newly active ones start from zero. In `column` mode every tensor of the group is
  split by columns instead (see `autotune.optim.columns`).

A `statefull` group still works when its tensors are replaced by one flattened tensor (DeepSpeed ZeRO
does this per group). A `rotate` group needs its original tensors: `step` fails with a clear message
when they were replaced, and `autotune.optim.partition.rotates` lets callers check beforehand.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from autotune.errors import ConfigError
from autotune.optim.columns import column_step, draw_columns
from autotune.optim.kernels import STATE_FREE_RULES, adamw_step, state_free_step
from autotune.optim.rotation import ORDERS, WINDOWS, BlockSchedule

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("block", "column")


def _argument_problems(
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    density: float,
    update_gap: int,
    choices: dict[str, tuple[str, tuple[str, ...]]],
    state_free_lr_scale: float,
) -> Iterator[str]:
    """Every bad constructor argument, each message starting with the argument's name."""
    # `not x >= 0` rather than `x < 0`, so that NaN is caught too
    for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay),
                        ("state_free_lr_scale", state_free_lr_scale)):
        if not value >= 0:
            yield f"{name} must be non-negative, got {value}"
    if len(tuple(betas)) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        yield f"betas must be two numbers in [0, 1), got {betas}"
    if not 0.0 <= density <= 1.0:
        yield f"density must be in [0, 1], got {density}"
    if isinstance(update_gap, bool) or not isinstance(update_gap, int) or update_gap < 1:
        yield f"update_gap must be a positive integer, got {update_gap!r}"
    for name, (choice, allowed) in choices.items():
        if choice not in allowed:
            yield f"{name} must be one of {', '.join(allowed)}, got {value!r}"


class FRUGAL(torch.optim.Optimizer):
    """A `torch.optim.Optimizer` for FRUGAL (Zmushko et al., 2024), block and column variants.

    Args:
        params: parameter groups (see the module docstring for the `statefull` and `rotate` keys).
        lr: learning rate, shared by both rules.
        betas: AdamW's moment coefficients.
        eps: AdamW's denominator term.
        weight_decay: decoupled weight decay on every parameter, p <- p * (1 - lr * wd).
        density: the state-full share of the `rotate` groups (blocks, or columns in column mode).
        update_gap: steps between moves of the window (or re-draws of the columns).
        order: block visiting order: descending, ascending, random, mirror (the authors': k/2 blocks
            from each end) or sweep (ascending then descending, cycle by cycle).
        window: `slide` (the authors' rule: the window slides on by k modulo n and every rotating
            block's moments restart at each move) or `cycle` (restart from the first block after
            each pass; blocks that stay active keep their moments). See `autotune.optim.rotation`.
        state_free_rule: signsgd, sgd or none; a group may override it.
        state_free_lr_scale: multiplies lr in the state-free rule; a group may override it.
        mode: "block" or "column".
        seed: seeds the generator behind `random` order and the column draws.

    Raises:
        ConfigError: (a ValueError) naming every bad argument.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density: float = 0.25,
        update_gap: int = 200,
        order: str = "descending",
        window: str = "slide",
        state_free_rule: str = "signsgd",
        state_free_lr_scale: float = 1.0,
        mode: str = "block",
        seed: int = 0,
    ) -> None:
        problems = list(_argument_problems(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, density=density, update_gap=update_gap,
            choices={"order": (order, ORDERS), "window": (window, WINDOWS),
                     "state_free_rule": (state_free_rule, STATE_FREE_RULES),
                     "mode": (mode, MODES)},
            state_free_lr_scale=state_free_lr_scale,
        ))
        if problems:
            raise ConfigError(problems, source="FRUGAL")
        self.density, self.update_gap, self.order, self.mode = density, update_gap, order, mode
        self._schedule: BlockSchedule | None = None  # set once the groups are known
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            state_free_rule=state_free_rule,
            state_free_lr_scale=state_free_lr_scale,
        )
        super().__init__(params, defaults)
        self._step = 0
        self._block_shapes = [tuple(p.shape) for p in self._blocks()]
        try:
            self._schedule = BlockSchedule(len(self._block_shapes), density=density, order=order, seed=seed,
                                           window=window)
        except ValueError as exc:
            raise ConfigError(str(exc), source="FRUGAL") from None
        self.window = self._schedule.window
        self._column_generator = torch.Generator().manual_seed(seed)
        if mode == "column" and any(len(shape) < 2 for shape in self._block_shapes):
            raise ConfigError("mode 'column' needs matrices in every rotate group", source="FRUGAL")
        logger.debug("FRUGAL: %d rotating tensors, mode %s, density %s", len(self._block_shapes), mode, density)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; `rotate` groups are only accepted at construction (they fix the block count)."""
        rotate = param_group.setdefault("rotate", False)
        if rotate and "statefull" in param_group:
            raise ConfigError("a group sets both 'rotate' and 'statefull'; rotation decides statefulness")
        if rotate and self._schedule is not None:
            raise ConfigError("'rotate' groups can only be given to the FRUGAL constructor")
        param_group.setdefault("statefull", not rotate)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["state_free_rule"] not in STATE_FREE_RULES:
            raise ConfigError(f"state_free_rule must be one of {', '.join(STATE_FREE_RULES)}, "
                              f"got {group['state_free_rule']!r}")
        if not group["state_free_lr_scale"] >= 0:
            raise ConfigError(f"state_free_lr_scale must be non-negative, got {group['state_free_lr_scale']}")

    def _blocks(self) -> list[Tensor]:
        return [p for group in self.param_groups if group["rotate"] for p in group["params"]]

    def active_blocks(self) -> list[int]:
        """Indices (into the rotate groups' tensors, in group order) of the state-full blocks now."""
        return self._schedule.active() if self.mode == "block" else []

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimizer step; moves the window first when `update_gap` steps have passed."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        blocks = self._checked_blocks()
        self._step += 1
        if self._step > 1 and (self._step - 1) % self.update_gap == 0:
            self._move_on(blocks)
        active_ids = {id(blocks[i]) for i in self.active_blocks()}
        for group in self.param_groups:
            if group["rotate"] and self.mode == "column":
                self._column_group_step(group)
            else:
                self._group_step(group, active_ids)
        return loss

    def _checked_blocks(self) -> list[Tensor]:
        blocks = self._blocks()
        if [tuple(p.shape) for p in blocks] != self._block_shapes:
            raise ConfigError(
                "FRUGAL: the tensors of a 'rotate' group were replaced (DeepSpeed ZeRO flattens each group); "
                "rotation needs one tensor per block: use a static partition (layers, top, bottom or spread) instead"
            )
        return blocks

    def _move_on(self, blocks: list[Tensor]) -> None:
        if self.mode == "column":
            for block in blocks:  # re-drawn lazily at the next step, from zero moments
                self.state.pop(block, None)
            return
        before = set(self._schedule.active())
        self._schedule.advance()
        # The authors reset every rotating block at each move; `cycle` keeps the ones that stay active.
        dropped = before if self._schedule.resets_every_move else before - set(self._schedule.active())
        for i in dropped:
            self.state.pop(blocks[i], None)
        logger.debug("FRUGAL step %d: active blocks %s", self._step, self._schedule.active())

    def _group_step(self, group: dict[str, Any], active_ids: set[int]) -> None:
        full: list[torch.Tensor] = []
        free: list[torch.Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            statefull = id(p) in active_ids if group["rotate"] else group["statefull"]
            (full if statefull else free).append(p)
        states = [self._adam_state(p) for p in full]
        adamw_step(
            full,
            [p.grad for p in full],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )
        state_free_step(
            free,
            [p.grad for p in free],
            rule=group["state_free_rule"],
            lr=group["lr"],
            scale=group["state_free_lr_scale"],
            weight_decay=group["weight_decay"],
        )

    def _adam_state(self, p: Tensor, columns: Tensor | None = None) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            shape_of = p if columns is None else p.index_select(-1, columns)
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(shape_of, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(shape_of, memory_format=torch.preserve_format)
            if columns is not None:
                state["columns"] = columns
        return state

    def _column_group_step(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        states = []
        for p in params:
            fresh = not self.state.get(p)
            columns = draw_columns(p, self.density, self._column_generator) if fresh else None
            states.append(self._adam_state(p, columns))
        column_step(
            params,
            states,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            rule=group["state_free_rule"],
            scale=group["state_free_lr_scale"],
        )

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state dict plus a `frugal` entry; tensors and plain values only."""
        state = super().state_dict()
        # Column indices travel outside torch's per-parameter state: its loader casts every state
        # tensor to the parameter's dtype, and bf16/fp16 cannot hold indices above 256 exactly.
        columns = {pid: s["columns"] for pid, s in state["state"].items() if "columns" in s}
        state["state"] = {pid: {k: v for k, v in s.items() if k != "columns"} for pid, s in state["state"].items()}
        state["frugal"] = {
            "step": self._step,
            "mode": self.mode,
            "schedule": self._schedule.state_dict(),
            "column_rng_state": self._column_generator.get_state(),
            "columns": columns,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore moments, step counters, rotation position and generators, for a bit-identical resume.

        Raises:
            ValueError: when the state was not saved by FRUGAL or by one with another mode or partition.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("frugal", None)
        if extra is None:
            raise ValueError("not a FRUGAL state dict: it has no 'frugal' entry")
        if extra["mode"] != self.mode:
            raise ValueError(f"state saved in mode {extra['mode']!r}, this optimizer runs mode {self.mode!r}")
        super().load_state_dict(state_dict)
        self._schedule.load_state_dict(extra["schedule"])
        params = [p for group in self.param_groups for p in group["params"]]  # torch's state-dict ids
        for pid, columns in extra.get("columns", {}).items():
            self.state[params[int(pid)]]["columns"] = columns.to(params[int(pid)].device)
        self._step = int(extra["step"])
        self._column_generator.set_state(extra["column_rng_state"])
