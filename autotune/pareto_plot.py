"""The Pareto figure of a study: reward against peak reserved memory, coloured by fragmentation.

MLflow has no Pareto view, so the tracker logs this figure twice: an interactive plotly HTML (with
plotly.js inlined, so it opens offline) and a PNG drawn with matplotlib, since plotly's own PNG
export needs kaleido and a browser. Feasible trials are coloured, the front (least memory for the
reward) is highlighted, infeasible trials are grey; those without a reward (an OOM stops a trial
before its reward exists) sit in a grey row along the bottom edge, at their peak.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotune import files
from autotune.result import TrialRecord

logger = logging.getLogger(__name__)

HTML_FILE = "pareto.html"
PNG_FILE = "pareto.png"
X_LABEL = "peak reserved (GiB)"
Y_LABEL = "reward"


@dataclass(frozen=True, kw_only=True)
class ParetoPoint:
    """One trial as the figure draws it."""

    number: int
    peak_reserved_gb: float
    reward: float | None          # None only for infeasible trials that never got a reward
    fragmentation: float
    feasible: bool
    status: str
    on_front: bool = False
    recommended: bool = False

    @property
    def label(self) -> str:
        return f"trial {self.number} ({self.status}), fragmentation {self.fragmentation:.1%}"


def pareto_points(records: Iterable[TrialRecord], recommended: int | None = None) -> list[ParetoPoint]:
    """Plottable points: trials with a peak, and a reward unless infeasible (a `fake` plan has none).

    A point is feasible when the trial finished ok and met the study's constraints; the front is
    computed among feasible points only.
    """
    raw = []
    for rec in records:
        memory, reward = rec.result.memory, rec.result.reward
        feasible = rec.feasible and rec.result.ok
        if memory is None or (reward is None and feasible):
            continue
        raw.append(ParetoPoint(number=rec.number, peak_reserved_gb=memory.peak_reserved_gb, reward=reward,
                               fragmentation=memory.fragmentation, feasible=feasible,
                               status=rec.result.status, recommended=rec.number == recommended))
    front = front_numbers(raw)
    return [replace(p, on_front=p.number in front) for p in raw]


def front_numbers(points: Iterable[ParetoPoint]) -> set[int]:
    """Trial numbers of the feasible points that no other feasible point dominates.

    A point dominates another when it needs no more memory, earns no less reward, and is better in
    one of the two. Sweeping in memory order, a point is on the front when its reward beats every
    cheaper point's.
    """
    feasible = sorted(((p.peak_reserved_gb, p.reward, p.number) for p in points if p.feasible and p.reward is not None),
                      key=lambda p: (p[0], -p[1]))
    front, best = set(), float("-inf")
    for _, reward, number in feasible:
        if reward > best:
            front.add(number)
            best = reward
    return front


@dataclass(frozen=True, kw_only=True)
class _Layers:
    """The points split the way both figures draw them, bottom layer first."""

    grey: list[ParetoPoint]        # infeasible, with a reward
    no_reward: list[ParetoPoint]   # infeasible, never got a reward: drawn along the bottom edge
    good: list[ParetoPoint]        # feasible, coloured by fragmentation
    front: list[ParetoPoint]       # in memory order, for the staircase
    recommended: list[ParetoPoint]

    @classmethod
    def of(cls, points: list[ParetoPoint]) -> _Layers:
        return cls(grey=[p for p in points if not p.feasible and p.reward is not None],
                   no_reward=[p for p in points if p.reward is None],
                   good=[p for p in points if p.feasible],
                   front=sorted((p for p in points if p.on_front), key=lambda p: p.peak_reserved_gb),
                   recommended=[p for p in points if p.recommended])


def _x(points: list[ParetoPoint]) -> list[float]:
    return [p.peak_reserved_gb for p in points]


def _y(points: list[ParetoPoint]) -> list[float | None]:
    return [p.reward for p in points]


def write_png(points: list[ParetoPoint], path: Path, *, title: str) -> Path:
    """The static figure with matplotlib's object API (no pyplot: no global figure state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    layers = _Layers.of(points)
    if layers.grey:
        ax.scatter(_x(layers.grey), _y(layers.grey), c="0.7", marker="x", label="infeasible")
    if layers.no_reward:
        # x in data units, y in axes units: a row along the bottom that needs no reward value
        ax.scatter(_x(layers.no_reward), [0.03] * len(layers.no_reward), c="0.5", marker="x",
                   transform=ax.get_xaxis_transform(), label="infeasible, no reward")
    if layers.good:
        frag = [p.fragmentation for p in layers.good]
        sc = ax.scatter(_x(layers.good), _y(layers.good), c=frag, cmap="viridis", vmin=0.0, vmax=max(0.01, *frag),
                        s=40, label="feasible")
        fig.colorbar(sc, ax=ax, label="fragmentation")
    if layers.front:
        ax.plot(_x(layers.front), _y(layers.front), drawstyle="steps-post", color="crimson", marker="o",
                markerfacecolor="none", markersize=11, label="Pareto front")
    for p in layers.recommended:
        ax.scatter([p.peak_reserved_gb], [p.reward], marker="*", s=320, c="gold", edgecolors="black", zorder=5,
                   label=f"recommended (trial {p.number})")
    ax.set(xlabel=X_LABEL, ylabel=Y_LABEL, title=title)
    ax.grid(alpha=0.3)
    if points:
        # Autoscaling ignores the bottom row's blended transform, so fit x to every point.
        xs = _x(points)
        pad = 0.05 * (max(xs) - min(xs)) or 0.05 * max(xs) or 1.0
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no trial has a peak to plot yet", ha="center", transform=ax.transAxes)
    with files.replacing(path) as tmp:
        fig.savefig(tmp)
    return path


def write_html(points: list[ParetoPoint], path: Path, *, title: str) -> Path:
    """The interactive figure; hovering a point names its trial, status and fragmentation."""
    import plotly.graph_objects as go

    layers = _Layers.of(points)
    fig = go.Figure()
    fig.add_trace(_trace(go, layers.grey, "infeasible", marker=dict(color="lightgrey", symbol="x", size=9)))
    # A hidden second y axis spanning [0, 1] puts the no-reward row along the bottom edge.
    fig.add_trace(go.Scatter(x=_x(layers.no_reward), y=[0.03] * len(layers.no_reward), yaxis="y2", mode="markers",
                             name="infeasible, no reward", text=[p.label for p in layers.no_reward],
                             hoverinfo="text+x", marker=dict(color="grey", symbol="x", size=9)))
    frag = [p.fragmentation for p in layers.good]
    fig.add_trace(_trace(go, layers.good, "feasible", marker=dict(
        color=frag, colorscale="Viridis", cmin=0.0, cmax=max([0.01, *frag]), size=10,
        colorbar=dict(title="fragmentation"))))
    fig.add_trace(_trace(go, layers.front, "Pareto front", mode="lines+markers", line=dict(color="crimson", shape="hv"),
                         marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(color="crimson", width=2))))
    fig.add_trace(_trace(go, layers.recommended, "recommended",
                         marker=dict(symbol="star", size=20, color="gold", line=dict(color="black", width=1))))
    # Legend above the plot: on the right it would sit on the colour bar.
    fig.update_layout(title=title, xaxis_title=X_LABEL, yaxis_title=Y_LABEL, template="plotly_white",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
                      yaxis2=dict(overlaying="y", range=[0, 1], visible=False))
    # Inline plotly.js: the MLflow artifact viewer and offline machines cannot reach a CDN.
    with files.replacing(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return path


def _trace(go: Any, points: list[ParetoPoint], name: str, *, mode: str = "markers", **style: Any) -> Any:
    return go.Scatter(x=_x(points), y=_y(points), mode=mode, name=name, text=[p.label for p in points],
                      hoverinfo="text+x+y", **style)


def write_pareto_figures(records: Iterable[TrialRecord], out_dir: str | Path, *, recommended: int | None = None,
                         title: str = "Pareto front") -> list[Path]:
    """Write pareto.html and pareto.png under `out_dir` and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = pareto_points(records, recommended)
    logger.debug("pareto figure: %d points, %d on the front", len(points), sum(p.on_front for p in points))
    return [write_html(points, out / HTML_FILE, title=title), write_png(points, out / PNG_FILE, title=title)]
