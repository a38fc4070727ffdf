"""A rich progress bar for `autotune search`: trials done, and the best feasible front so far."""
from __future__ import annotations

from typing import Any

from autotune.result import TrialRecord
from autotune.tuner.recommend import pareto_front, sources


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
        # one permanent line per trial, so a log of the search says where every figure came from
        self._progress.console.print(trial_line(record), highlight=False, markup=False, soft_wrap=True)

    def note(self, line: str) -> None:
        """A line above the bar (the controller's decisions: memory mode, reward proxy)."""
        self._progress.console.print(line, highlight=False, markup=False, soft_wrap=True)


def trial_line(record: TrialRecord) -> str:
    """e.g. "trial 3 ok: reward 0.61 ± 0.01, peak 20.1 GiB (memory: llama-1b, planned (simulator); reward: ...)"."""
    res = record.result
    parts = [f"trial {record.number} {res.status}"]
    figures = []
    if res.reward is not None:
        figures.append(f"reward {res.reward:.4g}" + (f" ± {res.reward_se:.2g}" if res.reward_se else ""))
    if res.memory is not None:
        figures.append(f"peak {res.memory.peak_reserved_gb:.3g} GiB")
    line = parts[0] + (": " + ", ".join(figures) if figures else "")
    src = sources(res)
    if src:
        line += f" ({src})"
    if res.message and not res.ok:
        line += f": {res.message}"
    return line
