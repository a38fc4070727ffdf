"""The Pareto figure: which trials are on the front, and that both files are real figures."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport
from autotune.pareto_plot import ParetoPoint, front_numbers, pareto_points, write_pareto_figures
from autotune.result import TrialRecord, TrialResult

GiB = 1 << 30


def _point(number: int, gb: float, reward: float, feasible: bool = True) -> ParetoPoint:
    return ParetoPoint(number=number, peak_reserved_gb=gb, reward=reward, fragmentation=0.1, feasible=feasible,
                       status="ok" if feasible else "oom")


def _record(number: int, gb: float, reward: float | None, *, status: str = "ok", feasible: bool = True,
            allocated_share: float = 0.8) -> TrialRecord:
    memory = MemoryReport(backend="cpu", phases=(), peak_reserved_bytes=int(gb * GiB),
                          peak_allocated_bytes=int(gb * allocated_share * GiB))
    result = TrialResult(config_hash="h", status=status, backend="cpu", memory=memory, reward=reward)
    return TrialRecord(number=number, config=TrialConfig(), result=result, feasible=feasible)


def test_front_keeps_only_undominated_feasible_points() -> None:
    points = [
        _point(0, 1.0, 0.5),
        _point(1, 2.0, 0.4),      # dominated by 0: more memory, less reward
        _point(2, 2.0, 0.7),
        _point(3, 3.0, 0.7),      # dominated by 2: same reward, more memory
        _point(4, 0.5, 0.9, feasible=False),   # would dominate everything, but it is infeasible
        _point(5, 4.0, 0.8),
    ]
    assert front_numbers(points) == {0, 2, 5}


def test_points_skip_trials_without_reward_and_grey_out_failures() -> None:
    records = [_record(0, 2.0, 0.5), _record(1, 1.0, None), _record(2, 3.0, 0.9, status="oom", feasible=False),
               _record(3, 1.5, 0.6, feasible=False),   # ran fine but broke a constraint
               _record(4, 4.0, None, status="oom", feasible=False)]
    points = {p.number: p for p in pareto_points(records, recommended=0)}
    assert sorted(points) == [0, 2, 3, 4]     # 1 is feasible but has no reward: nowhere to draw it
    assert points[4].reward is None and not points[4].on_front
    assert points[0].on_front and points[0].recommended
    assert not points[2].feasible and not points[3].feasible and not points[3].on_front
    assert points[0].fragmentation == pytest.approx(0.2)   # 1 - 0.8 * 2 / 2


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_a_real_png_and_a_self_contained_html(tmp_path: Path) -> None:
    records = [_record(0, 2.0, 0.5), _record(1, 1.0, 0.3, allocated_share=0.5), _record(2, 3.0, 0.8),
               _record(3, 2.5, 0.2, status="oom", feasible=False),
               _record(4, 3.5, None, status="oom", feasible=False)]
    html, png = write_pareto_figures(records, tmp_path, recommended=2, title="demo")
    width, height = _png_size(png)
    assert (width, height) == (960, 660)     # 8 x 5.5 inches at 120 dpi
    assert png.stat().st_size > 20_000       # a drawn figure, not an empty canvas
    text = html.read_text()
    assert "trial 2 (ok)" in text and "Pareto front" in text and "trial 4 (oom)" in text
    # plotly.js is inlined (megabytes), not fetched from a CDN, so the figure opens offline
    assert 'src="https://cdn' not in text and len(text) > 1_000_000


def test_empty_study_still_draws(tmp_path: Path) -> None:
    html, png = write_pareto_figures([], tmp_path)
    assert _png_size(png)[0] > 0 and html.is_file()
