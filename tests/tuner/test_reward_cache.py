"""The reward cache: outcomes by key in the study's own storage, shared by every process that opens it."""
from __future__ import annotations

import optuna

from autotune.rlhf.reward_run import RewardOutcome
from autotune.tuner.reward_cache import RewardCache

OK = RewardOutcome(key="abc", model="llama-small", proxy=True, steps=8, reward=0.31, reward_se=0.002,
                   initial_reward=0.12, reward_curve=(0.1, 0.2), wall_time_s=40.0)


def sqlite_study(tmp_path, name="s"):
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}",
                               directions=["maximize", "minimize"], load_if_exists=True)


def test_put_then_get_from_another_handle_on_the_storage(tmp_path):
    RewardCache(sqlite_study(tmp_path)).put(OK)
    other = RewardCache(sqlite_study(tmp_path))   # as a second worker would open it
    assert other.get("abc") == OK
    assert other.get("missing") is None
    assert other.all() == {"abc": OK}


def test_a_failed_run_is_stored_with_its_status(tmp_path):
    cache = RewardCache(sqlite_study(tmp_path))
    failed = RewardOutcome(key="bad", model="llama-small", status="timeout", message="ran past 600 s")
    cache.put(failed)
    assert cache.get("bad").status == "timeout" and not cache.get("bad").ok


def test_studies_do_not_share_rewards(tmp_path):
    RewardCache(sqlite_study(tmp_path, "one")).put(OK)
    assert RewardCache(sqlite_study(tmp_path, "two")).get("abc") is None


def test_an_unreadable_entry_is_measured_again(tmp_path):
    study = sqlite_study(tmp_path)
    study.set_user_attr("autotune.reward.old", {"key": "old", "unknown_field": 1})
    assert RewardCache(study).get("old") is None
