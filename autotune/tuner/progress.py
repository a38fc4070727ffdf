"""A rich progress bar for `autotune search`: trials done, and the best feasible front so far."""
from __future__ import annotations

from typing import Any

from autotune.result import TrialRecord
from autotune.tuner.recommend import pareto_front


def front_line(records: list[TrialRecord]) -> str:
    """One line about the feasible front: its size, best reward and lowest peak."""
    front = pareto_front(records)
    if not front:
        return "no feasible trial yet"
    rewards = [r.result.reward for r in front if r.result.reward is not None]
    peaks = [r.result.memory.peak_reserved_gb for r in front if r.result.memory is not None]
    parts = [f"front {len(front)}"]
    if rewards:
        parts.append(f"best reward {max(rewards):.3g}")
    if peaks:
        parts.append(f"lowest peak {min(peaks):.3g} GiB")
    return ", ".join(parts)


class SearchProgress:
    """Context manager; call `update(record, records)` after each trial (the controller's on_record)."""

    def __init__(self, total: int, *, done: int = 0, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.description}"), disable=not enabled,
                                  transient=False)
        self._task: Any = self._progress.add_task("starting", total=total, completed=done)

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, record: TrialRecord, records: list[TrialRecord]) -> None:
        last = f"#{record.number} {record.result.status}"
        self._progress.update(self._task, completed=len(records), description=f"{last} | {front_line(records)}")
