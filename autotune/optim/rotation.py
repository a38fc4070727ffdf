"""Which blocks are state-full when: the block-rotation schedule of FRUGAL's block variant.

Blocks are numbered 0..n-1 in model order; k = round(n * density) are state-full at a time (halves
round up here; the authors' Python `round` sends exact halves to the even neighbour). Two window
rules, checked against the authors' `BlockOptimizer._update_states` (github fzmushko/FRUGAL,
frugal/proj_optimizer_templates.py):

- `slide` (the default, and the authors' rule, which the paper's results used): the window starts
  at its order's first block and slides on by k modulo n at every move, without end. At every move
  the Adam state of every rotating block restarts from zero, the blocks that stay active included.
- `cycle` (autotune's earlier rule): a cycle visits every block once through ceil(n / k) windows;
  when k does not divide n the last window wraps to the cycle's start, and the next cycle starts
  again from the first block. Blocks that stay active from one window to the next keep their moments.

Orders:

- `descending`: n-1 down to 0 (output side first; the authors' scripts' choice);
- `ascending`: 0 up to n-1;
- `random`: under `slide` k blocks drawn afresh for each window (the authors'); under `cycle` a fresh
  permutation each cycle. Both draw from the schedule's own generator;
- `mirror` (the authors'): k/2 blocks from each end together, the pair (i, n-1-i) sliding inwards
  over i in 0..n//2-1. Needs an even k, as the authors' code asserts;
- `sweep` (autotune's earlier `mirror`): ascending in even cycles, descending in odd ones, so the
  sweep turns at each end. It is defined by its cycles, so it always uses the `cycle` rule.
"""
from __future__ import annotations

import math

import torch

ORDERS: tuple[str, ...] = ("descending", "ascending", "random", "mirror", "sweep")
WINDOWS: tuple[str, ...] = ("slide", "cycle")


def active_count(n: int, density: float) -> int:
    """round(n * density), halves rounded up, so density 0.5 of 1 block keeps it (Python rounds to even)."""
    return min(n, math.floor(n * density + 0.5))


class BlockSchedule:
    """The rotation position over n blocks; only plain numbers, lists and a uint8 RNG state persist.

    Raises:
        ValueError: an unknown order or window, or `mirror` with an odd number of active blocks.
    """

    def __init__(self, n_blocks: int, *, density: float, order: str, seed: int, window: str = "slide") -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        self.n_blocks = n_blocks
        self.k = active_count(n_blocks, density)
        if order == "mirror" and self.k % 2:
            raise ValueError(
                f"order 'mirror' takes k/2 blocks from each end, so it needs an even number of active blocks; "
                f"density {density} of {n_blocks} blocks gives {self.k}: choose another density or order"
            )
        self.order = order
        self.window = "cycle" if order == "sweep" else window
        self._generator = torch.Generator().manual_seed(seed)
        self._cycle = 0
        self._window = 0
        self._start = n_blocks - 1 if order == "descending" else 0
        self._sequence = self._draw_sequence()

    @property
    def resets_every_move(self) -> bool:
        """Whether every rotating block's moments restart at each move (the authors' `slide` rule)."""
        return self.window == "slide"

    @property
    def windows_per_cycle(self) -> int:
        return math.ceil(self.n_blocks / self.k) if self.k else 1

    def active(self) -> list[int]:
        """The block indices state-full in the current window, in visiting order."""
        if self.window == "slide":
            return self._slide_active()
        start = self._window * self.k
        return [self._sequence[(start + i) % self.n_blocks] for i in range(self.k)]

    def advance(self) -> None:
        """Move to the next window."""
        if self.window == "slide":
            self._slide_advance()
            return
        self._window += 1
        if self._window >= self.windows_per_cycle:
            self._window = 0
            self._cycle += 1
            self._sequence = self._draw_sequence()

    # -- the authors' sliding window ------------------------------------------------------------
    def _slide_active(self) -> list[int]:
        n, k, start = self.n_blocks, self.k, self._start
        if not n:
            return []
        if self.order == "descending":
            return [(start - i) % n for i in range(k)]
        if self.order == "ascending":
            return [(start + i) % n for i in range(k)]
        if self.order == "mirror":
            half = n // 2
            low = [(start + i) % half for i in range(k // 2)]
            return [i for idx in low for i in (idx, n - 1 - idx)]
        return self._sequence[:k]       # random: this window's draw

    def _slide_advance(self) -> None:
        n, k = self.n_blocks, self.k
        if not k:
            pass
        elif self.order == "descending":
            self._start = (self._start - k) % n
        elif self.order == "ascending":
            self._start = (self._start + k) % n
        elif self.order == "mirror":
            self._start = (self._start + k // 2) % (n // 2)
        else:
            self._sequence = self._draw_sequence()
        self._window += 1

    def _draw_sequence(self) -> list[int]:
        forward = list(range(self.n_blocks))
        if self.order == "ascending" or (self.order == "sweep" and self._cycle % 2 == 0):
            return forward
        if self.order in ("descending", "sweep", "mirror"):
            return forward[::-1]
        return torch.randperm(self.n_blocks, generator=self._generator).tolist()

    def state_dict(self) -> dict:
        return {
            "active_count": self.k,
            "window_rule": self.window,
            "start": self._start,
            "cycle": self._cycle,
            "window": self._window,
            "sequence": list(self._sequence),
            "rng_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = (len(state["sequence"]), int(state["active_count"]))
        if saved != (self.n_blocks, self.k):
            raise ValueError(
                f"saved rotation keeps {saved[1]} of {saved[0]} blocks state-full; "
                f"this optimizer keeps {self.k} of {self.n_blocks}"
            )
        saved_rule = state.get("window_rule", "cycle")      # states saved before `slide` existed cycled
        if saved_rule != self.window:
            raise ValueError(f"saved rotation uses window {saved_rule!r}; this optimizer uses {self.window!r}")
        self._start = int(state.get("start", self._start))
        self._cycle = int(state["cycle"])
        self._window = int(state["window"])
        self._sequence = [int(i) for i in state["sequence"]]
        self._generator.set_state(state["rng_state"])
