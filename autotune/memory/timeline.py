"""The memory timeline figure: allocated and reserved over allocator events, phases shaded (PNG)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autotune import files

_MAX_POINTS = 4000
_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B"))
_PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3")


def phase_spans(starts: Sequence[tuple[str, int]], n_events: int) -> list[tuple[str, int, int]]:
    """(name, start, end) for each named phase, from (name, start) marks; "" marks a gap."""
    spans = []
    for (name, start), (_, end) in zip(starts, [*starts[1:], ("", n_events)]):
        if name and end > start:
            spans.append((name, start, end))
    return spans


def plot_timeline(allocated: Sequence[int], reserved: Sequence[int], spans: Sequence[tuple[str, int, int]],
                  path: str | Path, *, title: str = "", capacity_bytes: int | None = None,
                  failed_phase: str | None = None, x_label: str = "allocator event") -> Path:
    """Write the timeline PNG.

    Long series are reduced to their per-bucket maxima, so that no peak disappears from the plot.

    Args:
        allocated: allocated bytes after each event.
        reserved: reserved bytes after each event.
        spans: (phase, first event, end event) to shade.
        path: the PNG to write (parent folders are created).
        title: the figure title.
        capacity_bytes: drawn as a dashed line when given.
        failed_phase: named in the title when a phase ran out of memory.
        x_label: what one step on the x axis is.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    alloc, resv = np.asarray(allocated, dtype=np.float64), np.asarray(reserved, dtype=np.float64)
    top = max(resv.max(initial=0), float(capacity_bytes or 0), 1.0)
    scale, unit = next((s, u) for s, u in _UNITS if top >= s)
    x, alloc_env = _envelope(alloc)
    _, resv_env = _envelope(resv)

    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _shade_phases(ax, spans)
    peak_r, peak_a = resv.max(initial=0) / scale, alloc.max(initial=0) / scale
    ax.fill_between(x, resv_env / scale, step="post", color="#9a9a9a", alpha=0.3, lw=0)
    ax.step(x, resv_env / scale, where="post", color="#444444", lw=1.0, label=f"reserved (peak {peak_r:.1f} {unit})")
    ax.step(x, alloc_env / scale, where="post", color="#1f1f8f", lw=1.2, label=f"allocated (peak {peak_a:.1f} {unit})")
    if capacity_bytes:
        ax.axhline(capacity_bytes / scale, color="#C44E52", ls="--", lw=1, label="capacity")
    if failed_phase and len(alloc):
        ax.axvline(len(alloc) - 1, color="#C44E52", lw=2, label=f"out of memory ({failed_phase})")
    ax.set_ylim(0, top / scale * 1.18)   # headroom for the phase ribbon
    ax.set_xlim(0, max(len(alloc), 1))
    ax.set_xlabel(x_label)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(0, 0.93), fontsize=8, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    with files.replacing(path) as tmp:
        fig.savefig(tmp)
    return path


def _envelope(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, per-bucket max) with at most _MAX_POINTS buckets."""
    if len(values) <= _MAX_POINTS:
        return np.arange(len(values)), values
    edges = np.linspace(0, len(values), _MAX_POINTS + 1).astype(np.int64)[:-1]
    return edges, np.maximum.reduceat(values, edges)


def _shade_phases(ax, spans: Sequence[tuple[str, int, int]]) -> None:
    """A light band per phase, a coloured ribbon on top with its name, and a line at each start."""
    colors: dict[str, str] = {}
    for name, start, end in spans:
        color = colors.setdefault(name, _PHASE_COLORS[len(colors) % len(_PHASE_COLORS)])
        ax.axvspan(start, end, color=color, alpha=0.08, lw=0)
        ax.axvspan(start, end, ymin=0.95, ymax=1.0, color=color, alpha=0.55, lw=0)
        ax.axvline(start, color=color, lw=0.6, ls=":")
        ax.text((start + end) / 2, 0.975, name, transform=ax.get_xaxis_transform(), ha="center", va="center",
                fontsize=7, color="black", clip_on=True)
