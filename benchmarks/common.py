"""Shared plumbing for the paper-reproduction benchmarks: where output goes, tables, timing, figures.

Each benchmark keeps its rows as frozen dataclasses and turns them into dicts only here, at the edge
(JSON, CSV, rich tables), so one definition of a column serves all three.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW_DIR = REPO_ROOT / "runs" / "bench"      # git-ignored raw results
IMG_DIR = REPO_ROOT / "docs" / "img"        # figures that docs/RESULTS.md embeds
# These 2-core machines are shared: two intra-op threads under load run a small model ~10x slower
# than one, so the benchmarks default to one thread and report ratios taken side by side.
THREADS_HELP = "torch intra-op threads (default 1: the machines are small and shared)"
TAG_HELP = "suffix for the output files (runs/bench/<name>[_full]_<tag>.json, docs/img/...png)"
GiB = float(1 << 30)
MiB = float(1 << 20)


@dataclass(frozen=True, kw_only=True)
class Column:
    """One table column: the row field it shows, its header, and how a value prints."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str


@dataclass(frozen=True, kw_only=True)
class OutputDirs:
    """Where a benchmark writes: raw JSON/CSV under `raw`, PNG figures under `img`."""

    raw: Path = RAW_DIR
    img: Path = IMG_DIR

    def ensure(self) -> OutputDirs:
        self.raw.mkdir(parents=True, exist_ok=True)
        self.img.mkdir(parents=True, exist_ok=True)
        return self


def output_name(base: str, *, full: bool, tag: str | None) -> str:
    """`base` (or `base_full` for a paper-sized run) plus `_<tag>` if given, so runs never overwrite each other."""
    return "_".join(filter(None, [base, "full" if full else "", tag]))


def machine() -> dict[str, str]:
    """The facts RESULTS.md states next to every figure: CPU count, platform, versions, UTC date."""
    import torch

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu_cores": str(os.cpu_count()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def row_dicts(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Dataclass rows as plain dicts (tuples become lists, so JSON and CSV see the same values)."""
    return [json.loads(json.dumps(dataclasses.asdict(row))) for row in rows]


def write_results(name: str, rows: Sequence[Any], dirs: OutputDirs, *, extra: dict[str, Any] | None = None) -> Path:
    """Write `<name>.json` (rows, machine, extra) and `<name>.csv` (scalar columns) under `dirs.raw`.

    Returns:
        The JSON path.
    """
    dirs.ensure()
    dicts = row_dicts(rows)
    json_path = dirs.raw / f"{name}.json"
    payload = {"machine": machine(), "rows": dicts, **(extra or {})}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    scalar_keys = [k for k in (dicts[0] if dicts else {}) if not isinstance(dicts[0][k], (list, dict))]
    with (dirs.raw / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=scalar_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(dicts)
    logger.info("wrote %s and %s", json_path, json_path.with_suffix(".csv"))
    return json_path


def print_table(title: str, rows: Sequence[Any], columns: Sequence[Column]) -> None:
    """Print rows as a rich table on the terminal (benchmarks are scripts: printing is their job)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column.header, justify="left" if column is columns[0] else "right")
    for row in rows:
        table.add_row(*(column.fmt(getattr(row, column.key)) for column in columns))
    console = Console()
    if not console.is_terminal:  # piped output would otherwise wrap at 80 columns
        console = Console(width=220)
    console.print(table)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The table formatters of every benchmark and of the GPU check's summary; None prints as "-".
def gib(value: float | None, digits: int = 2) -> str:
    """Bytes as GiB."""
    return "-" if value is None else f"{value / GiB:.{digits}f}"


def mib(value: float | None, digits: int = 2) -> str:
    """Bytes as MiB."""
    return "-" if value is None else f"{value / MiB:.{digits}f}"


def pct(value: float | None, digits: int = 1, *, signed: bool = False) -> str:
    """A fraction as a percentage; `signed` writes the + of a positive change."""
    return "-" if value is None else f"{value:{'+' if signed else ''}.{digits}%}"


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
