"""The claim protocol: which worker runs which trial of a study shared by any number of workers.

The stop rule counts trials that carry a result in the storage, so any number of workers on any
number of machines together finish exactly `n_trials`. A worker claims a trial (Optuna's ask) only
while results plus running trials fall short of it; a trial claimed past it (two workers asked at
once) is released unrun. A trial whose worker died goes stale (heartbeat) and is re-queued by
Optuna's RetryHeartbeatStaleTrialCallback; one whose controller died before its first heartbeat is
recognised by its owner (autotune.owner) and re-queued here.
"""
from __future__ import annotations

import datetime
import enum
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune import owner
from autotune.attrs import (
    USER_ATTR_CANCELLED,
    USER_ATTR_CONFIG,
    USER_ATTR_OWNER,
    USER_ATTR_OWNER_TRIAL,
    USER_ATTR_REASON,
    USER_ATTR_RESULT,
    USER_ATTR_SURPLUS,
)
from autotune.tuner.optuna_internals import enqueued_params, trial_id

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)


class ClaimState(enum.Enum):
    """What a claim came back with (named after Optuna's TrialState)."""

    RUN = "run"      # a trial to run: `Claim.trial`
    WAIT = "wait"    # other workers are finishing the last trials, or this one was surplus: ask again soon
    DONE = "done"    # the study holds `n_trials` results, or the search's deadline passed


@dataclass(frozen=True, kw_only=True)
class Claim:
    """The outcome of one `Claims.claim`: a state, and with RUN the trial to run."""

    state: ClaimState
    trial: optuna.Trial | None = None


class Claims:
    """Claims and releases one study's trials for this controller's workers.

    Not thread-safe: the caller holds one lock around `claim` and `release`, which keeps the surplus
    check exact within a process (across processes, surplus trials are released).

    Args:
        study: The (shared) study.
        storage: Its storage, with a heartbeat.
        n_trials: Trials with a result the study should hold, all workers together.
        grace_s: How long a trial without an owner of its own may stay RUNNING before it counts as orphaned.
        deadline: `time.monotonic()` after which nothing new is claimed; None: no deadline.
    """

    def __init__(self, study: optuna.Study, storage: RDBStorage, *, n_trials: int, grace_s: float,
                 deadline: float | None = None):
        self.study = study
        self.storage = storage
        self.n_trials = n_trials
        self.grace_s = grace_s
        self.deadline = deadline

    def claim(self, before_ask: Callable[[list[FrozenTrial]], None] | None = None) -> Claim:
        """The next trial to run, WAIT while others finish the last ones, or DONE.

        Args:
            before_ask: Called with the study's trials just before a new trial is asked for (the
                controller queues an advisor proposal there, so the ask takes it).
        """
        from optuna.exceptions import ExperimentalWarning
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        n = self.n_trials
        with warnings.catch_warnings():
            # The controller beats and fails stale trials itself, as it uses ask/tell rather than
            # Study.optimize; Optuna warns about exactly that, and that heartbeats are experimental.
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            fail_stale_trials(self.study)
            self.fail_orphans()
            trials = self.study.get_trials(deepcopy=False)
            done = sum(USER_ATTR_RESULT in t.user_attrs for t in trials if t.state.is_finished())
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done >= n or (self.deadline is not None and time.monotonic() > self.deadline):
                return Claim(state=ClaimState.DONE)
            if done + running >= n:
                return Claim(state=ClaimState.WAIT)
            if before_ask is not None:
                before_ask(trials)
            trial = self.study.ask()
            # owned and beating from the first moment, so a controller that dies now leaves a trial
            # the next run recognises as orphaned (see fail_orphans)
            trial.set_user_attr(USER_ATTR_OWNER, owner.this_process())
            trial.set_user_attr(USER_ATTR_OWNER_TRIAL, trial.number)   # after the owner: see fail_orphans
            self.storage.record_heartbeat(trial_id(trial))
            if self.claims_before(trial.number) >= n:
                self.release(trial, USER_ATTR_SURPLUS, requeue=True)
                return Claim(state=ClaimState.WAIT)
            if self.duplicate_baseline(trial):
                self.release(trial, USER_ATTR_SURPLUS, requeue=False)
                return Claim(state=ClaimState.WAIT)
            return Claim(state=ClaimState.RUN, trial=trial)

    def fail_orphans(self) -> None:
        """Fail, and re-queue, RUNNING trials that no live controller runs.

        Optuna's heartbeat only sees trials that beat at least once; a controller killed between
        ask() and its first beat left a trial RUNNING forever, and every later run waited for it.
        A trial is orphaned when its owner ran on this host and has exited, or when it has no owner
        of its own and is older than the heartbeat grace period. A re-queued copy carries the dead
        owner of the trial it retries until the worker that asked it writes over it; the owner is
        its own only once USER_ATTR_OWNER_TRIAL (written after the owner) names this trial.
        """
        from optuna.trial import TrialState

        now = datetime.datetime.now()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            holder = trial.user_attrs.get(USER_ATTR_OWNER)
            if holder is not None and trial.user_attrs.get(USER_ATTR_OWNER_TRIAL) == trial.number:
                orphaned = owner.is_dead(str(holder))
            else:
                orphaned = (now - (trial.datetime_start or now)).total_seconds() > self.grace_s
            if orphaned and self.storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL):
                log.warning("trial %d: its controller (%s) is gone; failed and re-queued", trial.number, holder)
                callback = self.storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(self.study, self.storage.get_trial(trial_id(trial)))

    def duplicate_baseline(self, trial: optuna.Trial) -> bool:
        """Two workers starting one study at once both queue a baseline; the first one counts."""
        if trial.user_attrs.get(USER_ATTR_REASON) != "baseline":
            return False
        from optuna.trial import TrialState

        # a stale or released baseline (failed without a result) was re-queued and does not count
        return any(t.number < trial.number and t.user_attrs.get(USER_ATTR_REASON) == "baseline"
                   and not (t.state == TrialState.FAIL and USER_ATTR_RESULT not in t.user_attrs)
                   for t in self.study.get_trials(deepcopy=False))

    def claims_before(self, number: int) -> int:
        """Trials numbered below `number` that run or carry a result: the claims ahead of trial `number`."""
        from optuna.trial import TrialState

        return sum(t.number < number and (t.state == TrialState.RUNNING or USER_ATTR_RESULT in t.user_attrs)
                   for t in self.study.get_trials(deepcopy=False))

    def release(self, trial: optuna.Trial, marker: str, *, requeue: bool) -> None:
        """End a trial that must not count (surplus, duplicate or cancelled), re-queuing what it carried.

        A sampled surplus trial is not re-queued: the sampler proposes afresh next time.
        """
        from optuna.trial import TrialState

        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        params = enqueued_params(frozen)
        carried = USER_ATTR_CONFIG in frozen.user_attrs and (marker == USER_ATTR_CANCELLED or params is not None)
        if requeue and carried:
            self.study.enqueue_trial(params if params is not None else frozen.params, user_attrs={
                USER_ATTR_CONFIG: frozen.user_attrs[USER_ATTR_CONFIG],
                USER_ATTR_REASON: frozen.user_attrs.get(USER_ATTR_REASON)})
        trial.set_user_attr(marker, True)
        self.study.tell(trial, state=TrialState.FAIL)
