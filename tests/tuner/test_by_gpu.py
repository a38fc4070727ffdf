"""The per-GPU table: one `fastest` recommendation per card size, or what bounds the peak."""
from __future__ import annotations

import dataclasses

import pytest

from autotune.errors import NoFeasibleTrialError
from autotune.result import TrialRecord
from autotune.tuner.by_gpu import by_gpu, card_sizes, row_for, table_markdown, table_text
from tests.tuner.test_recommend import _rec


def _with(record: TrialRecord, **changes: object) -> TrialRecord:
    return dataclasses.replace(record, config=record.config.replace(**changes))


def _study() -> list:
    base = _rec(0, 0.50, 46.0, reason="baseline", step=2.0, step_time_source="predicted (A100-80)")
    mid = _with(_rec(1, 0.50, 35.0, step=2.4), **{"memory.actor_gradient_checkpointing": True})
    small = _with(_rec(2, 0.495, 22.0, step=3.0),
                  **{"memory.actor_gradient_checkpointing": True, "memory.offload_reference": True})
    # a saver config the study prescreened over its 40 GiB budget still counts for larger cards
    over = _with(_rec(3, 0.50, 42.0, step=2.2, status="prescreened", feasible=False),
                 **{"memory.offload_reward": True})
    return [base, mid, small, over]


def test_rows_follow_the_budgets() -> None:
    rows = by_gpu(_study(), budget_gb=40.0)
    assert [r.budget_gb for r in rows] == card_sizes(40.0) == [24.0, 40.0, 48.0, 80.0]
    assert [r.trial for r in rows] == [2, 1, 0, 0]   # the fastest that fits each card; the baseline from 46 GiB
    assert rows[0].savers == ("memory.actor_gradient_checkpointing=True", "memory.offload_reference=True")
    assert rows[3].savers == ()                      # the baseline itself
    assert rows[0].step_time_s == 3.0 and rows[0].baseline_step_time_s == 2.0
    # gains over the untrained 0.1: (0.495 - 0.1) / (0.50 - 0.1) of the baseline's is kept, exactly (no SE)
    assert rows[0].kept_gain == pytest.approx(0.395 / 0.40) and rows[0].keeps_reward
    assert by_gpu(_study(), budget_gb=30.0)[1].budget_gb == 30.0     # the budget in use gets its own row
    # without the baseline the 42 GiB prescreened trial is the fastest within 48
    assert by_gpu(_study()[1:], budget_gb=40.0)[2].trial == 3


def test_nothing_fits_names_the_bounding_phase() -> None:
    rows = by_gpu(_study(), budget_gb=16.0)
    first = rows[0]
    assert first.budget_gb == 16.0 and first.trial is None
    assert first.note == "nothing in the space fits: the lowest peak is 22.0 GiB (trial #2), bounded by actor_train"
    with pytest.raises(NoFeasibleTrialError, match="22.0 GiB"):
        row_for(rows, 16.0)
    assert row_for(rows, 30.0).trial == 2            # a 30 GiB card gets the 24 GiB row


def test_tables_show_every_row() -> None:
    rows = by_gpu(_study(), budget_gb=40.0)
    text, md = table_text(rows), table_markdown(rows)
    for row in rows:
        assert f"{row.budget_gb:g} GiB" in text and f"| {row.budget_gb:g} GiB |" in md
    assert "1.50x baseline" in text and "predicted (A100-80)" in md
    assert dataclasses.asdict(rows[0])["trial"] == 2 and rows[0].to_dict()["kept_gain"] == pytest.approx(0.9875)
    assert "0.99 ± 0.00" in text


def test_a_row_says_whether_its_config_is_under_the_floor_or_undecided() -> None:
    from tests.tuner.test_recommend import _seeds

    untrained = (0.125, 0.125)
    base = _rec(0, 0.40, 46.0, reason="baseline", step=2.0, points=_seeds((0, untrained), (64, (0.41, 0.39))))
    # keeps 0.89 on average, but its seeds disagree with the baseline's: the bound is under 0.8
    unsure = _with(_rec(1, 0.37, 22.0, step=3.0, points=_seeds((0, untrained), (64, (0.44, 0.30)))),
                   **{"memory.offload_reference": True})
    # keeps a third: under the floor whatever the seeds
    poor = _with(_rec(2, 0.22, 22.0, step=2.5, points=_seeds((0, untrained), (64, (0.23, 0.21)))),
                 **{"memory.offload_reward": True})
    undecided, under = by_gpu([base, unsure], budget_gb=80.0), by_gpu([base, poor], budget_gb=80.0)
    small = row_for(undecided, 24.0)
    assert small.trial == 1 and small.undecided and small.keeps_reward is False
    assert "(undecided: nothing here is shown to keep it; more seeds would settle it)" in table_text(undecided)
    small = row_for(under, 24.0)
    assert small.trial == 2 and not small.undecided and small.keeps_reward is False
    assert "(under the floor: nothing here keeps it)" in table_text(under)


def test_a_tiny_models_peak_keeps_its_digits() -> None:
    rows = by_gpu([_rec(0, 0.5, 0.041, reason="baseline"), _rec(1, 0.5, 0.0332)], budget_gb=0.035)
    assert "0.0332 GiB" in table_text(rows) and "0.0 GiB" not in table_text(rows)
