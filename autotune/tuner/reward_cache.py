"""The study's reward runs, stored in the study itself so that every worker shares them.

One `RewardOutcome` per reward key, in the Optuna study's user attributes under
`autotune.reward.<key>`. The study's storage is the one every worker already points at (SQLite on
one machine, PostgreSQL across machines), so a reward run measured by one worker is read by all, and
nothing else needs to be shared. A failed run is stored with its status, so that a key whose run
crashes or times out is not retried by every later trial.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from autotune.attrs import STUDY_ATTR_REWARD_PREFIX
from autotune.errors import ConfigError
from autotune.rlhf.reward_run import RewardOutcome

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class RewardCache:
    """Reward outcomes by reward key, kept in an Optuna study's storage.

    Args:
        study: The study whose storage holds the outcomes.
    """

    def __init__(self, study: optuna.Study):
        self.study = study

    def get(self, key: str) -> RewardOutcome | None:
        """The stored outcome of `key` (ok or failed), or None when no run has finished for it."""
        stored = self.study.user_attrs.get(STUDY_ATTR_REWARD_PREFIX + key)
        if stored is None:
            return None
        try:
            return RewardOutcome.from_dict(stored)
        except ConfigError:
            # written by another autotune version: measure again rather than guess
            log.warning("reward %s in the study is unreadable; it will be measured again", key)
            return None

    def put(self, outcome: RewardOutcome) -> None:
        """Store `outcome` under its key (a later outcome for the same key replaces it)."""
        self.study.set_user_attr(STUDY_ATTR_REWARD_PREFIX + outcome.key, outcome.to_dict())

    def all(self) -> dict[str, RewardOutcome]:
        """Every stored outcome, by key (for reports: reward runs against trials)."""
        outcomes = {}
        for name in self.study.user_attrs:
            if name.startswith(STUDY_ATTR_REWARD_PREFIX):
                outcome = self.get(name[len(STUDY_ATTR_REWARD_PREFIX):])
                if outcome is not None:
                    outcomes[outcome.key] = outcome
        return outcomes
