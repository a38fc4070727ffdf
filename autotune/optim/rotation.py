"""Which blocks are state-full when: the block-rotation schedule of FRUGAL's block variant.

Blocks are numbered 0..n-1 in model order. A cycle visits every block once, in the configured
order, through windows of k = round(n * density) consecutive blocks; when k does not divide n the
cycle's last window wraps to the cycle's start, so it still holds k distinct blocks. Orders:

- `descending`: n-1 down to 0 (output side first; the authors' scripts' choice);
- `ascending`: 0 up to n-1;
- `random`: a fresh permutation each cycle, drawn from the schedule's own generator;
- `mirror`: ascending in even cycles, descending in odd ones, so the sweep turns at each end.
"""
from __future__ import annotations

import math

import torch

ORDERS: tuple[str, ...] = ("descending", "ascending", "random", "mirror")


def active_count(n: int, density: float) -> int:
    """round(n * density), halves rounded up, so density 0.5 of 1 block keeps it (Python rounds to even)."""
    return min(n, math.floor(n * density + 0.5))


class BlockSchedule:
    """The rotation position over n blocks; only plain numbers, lists and a uint8 RNG state persist."""

    def __init__(self, n_blocks: int, *, density: float, order: str, seed: int) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.n_blocks = n_blocks
        self.k = active_count(n_blocks, density)
        self.order = order
        self._generator = torch.Generator().manual_seed(seed)
        self._cycle = 0
        self._window = 0
        self._sequence = self._draw_sequence()

    @property
    def windows_per_cycle(self) -> int:
        return math.ceil(self.n_blocks / self.k) if self.k else 1

    def active(self) -> list[int]:
        """The block indices state-full in the current window, in visiting order."""
        start = self._window * self.k
        return [self._sequence[(start + i) % self.n_blocks] for i in range(self.k)]

    def advance(self) -> None:
        """Move to the next window, starting a new cycle (and, for `random`, a new permutation) at the end."""
        self._window += 1
        if self._window >= self.windows_per_cycle:
            self._window = 0
            self._cycle += 1
            self._sequence = self._draw_sequence()

    def _draw_sequence(self) -> list[int]:
        forward = list(range(self.n_blocks))
        if self.order == "ascending" or (self.order == "mirror" and self._cycle % 2 == 0):
            return forward
        if self.order in ("descending", "mirror"):
            return forward[::-1]
        return torch.randperm(self.n_blocks, generator=self._generator).tolist()

    def state_dict(self) -> dict:
        return {
            "active_count": self.k,
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
        self._cycle = int(state["cycle"])
        self._window = int(state["window"])
        self._sequence = [int(i) for i in state["sequence"]]
        self._generator.set_state(state["rng_state"])
