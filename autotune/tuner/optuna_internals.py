"""Every place autotune reads Optuna below its public API, each with why no public API serves.

Optuna 5's public API covers asking, telling, enqueuing and reading trials; the three needs below
are not in it. Keeping them here means an Optuna upgrade that moves one breaks one module, and the
tests of the controller and the study storage (tests/tuner/) show which.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    from optuna.trial import FrozenTrial, Trial

# The system attribute `Study.enqueue_trial` stores a queued trial's parameters under.
_ENQUEUED_PARAMS = "fixed_params"


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The storage's id of `trial`.

    Optuna has no public trial id, but the storage API that the controller needs is keyed by it:
    `record_heartbeat` (a running trial's heartbeat, since the controller asks and tells rather
    than using `Study.optimize`, which would beat for it), `set_trial_state_values` and `get_trial`
    (failing an orphaned trial as exactly one controller, which `Study.tell` cannot do for a trial
    another process asked).
    """
    return trial._trial_id


def enqueued_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters `trial` was enqueued with, or None when the sampler chose them.

    Optuna records a queued trial's parameters only in this system attribute; a trial that must be
    re-queued (surplus or cancelled) is queued again with them, so the retry is the same config
    whichever sampler runs, and a sampled trial is told apart from an enqueued one by it.
    """
    params = trial.system_attrs.get(_ENQUEUED_PARAMS)
    return None if params is None else dict(params)


def rdb_tables() -> set[str]:
    """Every table an Optuna RDB storage may hold.

    Optuna publishes no list of its schema; an existing SQLite file is recognised as a study (or as
    the start of one whose creator was killed) by holding no table outside it.
    """
    from optuna.storages._rdb import models

    return set(models.BaseModel.metadata.tables) | {"alembic_version"}
