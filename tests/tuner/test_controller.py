"""The controller with a stand-in trial program: studies finish, failures are recorded, nothing is lost."""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError, StorageError
from autotune.tuner.controller import SearchSettings, run_search
from autotune.tuner.launcher import Launcher, run_trial
from autotune.tuner.study import default_storage, load_records, open_storage
from tests.tuner.tuner_helpers import (
    BUDGET_GB,
    FAKE_COMMAND,
    ci_space,
    fake_launcher,
    result_count,
    search_cmd,
    subprocess_env,
)


def _settings(study: str, n: int, **kw: object) -> SearchSettings:
    kw.setdefault("launcher", fake_launcher())
    return SearchSettings(study=study, space=ci_space(), n_trials=n, budget_gb=BUDGET_GB, track=False, seed=0,
                          heartbeat_interval_s=1, **kw)  # type: ignore[arg-type]


def test_six_trial_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = run_search(_settings("six", 6))
    records = load_records("six")
    assert [r.number for r in records] == list(range(6)) and outcome.trials_run == 6
    baseline = records[0]
    assert baseline.advisor_reason == "baseline"
    assert baseline.config.optimizer.name == "adamw" and baseline.config.memory.empty_cache_after == ()
    # the AdamW baseline (27.5 MiB) does not fit 0.025 GiB: an OOM, told as infeasible
    assert baseline.result.status == "oom" and not baseline.feasible
    assert "reward" not in baseline.objectives   # Optuna's stand-in value is not a measurement
    study = optuna.load_study(study_name="six", storage=default_storage("six"))
    assert study.best_trials
    assert {t.number for t in study.best_trials} <= {r.number for r in records if r.feasible}
    # advisor proposals interleave with sampled trials, each with its reason
    reasons = [r.advisor_reason for r in records[1:]]
    assert any(reasons) and None in reasons
    assert all(not (a and b) for a, b in zip(reasons, reasons[1:]))
    recommended = TrialConfig.load(tmp_path / "runs" / "six" / "recommended.yaml")
    assert recommended == outcome.recommendation.record.config
    rerun = run_trial(recommended, tmp_path / "rerun", launcher=fake_launcher()).result
    assert rerun.reward == pytest.approx(outcome.recommendation.record.result.reward)
    assert (tmp_path / "runs" / "six" / "pareto.json").is_file()
    assert (tmp_path / "runs" / "six" / "trials" / "0" / "result.json").is_file()


def test_crash_timeout_and_oom_are_recorded_and_the_study_goes_on(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "1:raise,2:sleep,3:oom")
    run_search(_settings("rough", 6, launcher=fake_launcher(timeout_s=3.0)))
    by_number = {r.number: r for r in load_records("rough")}
    assert len(by_number) == 6
    assert by_number[1].result.status == "error" and "crashed on purpose" in by_number[1].result.message
    assert by_number[2].result.status == "timeout" and "timed out" in by_number[2].result.message
    assert by_number[3].result.status == "oom" and not by_number[3].feasible
    study = optuna.load_study(study_name="rough", storage=default_storage("rough"))
    states = {t.number: t.state for t in study.trials}
    assert states[1] == states[2] == optuna.trial.TrialState.FAIL
    assert states[3] == optuna.trial.TrialState.COMPLETE and study.trials[3].constraints["did_not_run"] > 0


def test_sigkill_mid_study_then_resume(tmp_path: Path) -> None:
    env = subprocess_env(FAKE_TRIAL_SLEEP_S="0.8")
    proc = subprocess.Popen(search_cmd("killed", 6), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while result_count(tmp_path) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)   # land inside the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(search_cmd("killed", 6), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    storage = f"sqlite:///{tmp_path}/runs/killed/optuna.db"
    records = load_records("killed", storage)
    assert len(records) == 6   # exactly the requested number: none lost, none run twice
    assert len({r.number for r in records}) == 6 and records[0].advisor_reason == "baseline"
    # the trial that was running when the controller died went stale and was retried, once
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    stale = [t.number for t in trials
             if t.state == optuna.trial.TrialState.FAIL and "autotune.result" not in t.user_attrs]
    retried = [t.system_attrs.get("failed_trial") for t in trials if "failed_trial" in t.system_attrs]
    assert stale and sorted(retried) == stale


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    env = subprocess_env(FAKE_TRIAL_SLEEP_S="0.3")
    workers = [subprocess.Popen(search_cmd("pair", 8), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0, err
    storage = f"sqlite:///{tmp_path}/runs/pair/optuna.db"
    records = load_records("pair", storage)
    assert len(records) == 8 and [r.number for r in records if r.advisor_reason == "baseline"] == [0]


def test_parallel_gpus_with_prescreening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two "GPUs" run trials side by side; configs predicted over budget never reach a GPU."""
    monkeypatch.chdir(tmp_path)
    # a two-GPU host, as the search sees it: it refuses listed GPUs that CUDA does not see (search_plan)
    monkeypatch.setattr("autotune.tuner.fidelity.detect_gpus", lambda: ("0", "1"))
    launcher = Launcher(trial_command=FAKE_COMMAND, plan_command=FAKE_COMMAND, timeout_s=30)
    outcome = run_search(_settings("gpus", 6, gpus=("0", "1"), launcher=launcher))
    records = load_records("gpus")
    assert len(records) == 6 and outcome.trials_run == 6
    screened = [r for r in records if r.result.status == "prescreened"]
    assert screened and all(not r.feasible and "exceeds" in r.result.message for r in screened)
    for r in screened:   # planned only: no trial result was ever written for it
        assert not (tmp_path / "runs" / "gpus" / "trials" / str(r.number) / "result.json").exists()
    assert records[0].result.status == "prescreened"   # the AdamW baseline is predicted over budget


def test_an_invalid_sampled_combination_is_infeasible_not_fatal(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    space_file = tmp_path / "zero.yaml"
    space_file.write_text("base: {device: cpu}\n"
                          "dimensions: {memory.zero_stage: [0, 1], memory.offload_optimizer: [false, true]}\n"
                          "objectives: [{metric: reward, direction: maximize}, "
                          "{metric: peak_reserved_gb, direction: minimize}]\n")
    from autotune.tuner.space import load_space

    settings = SearchSettings(study="zero", space=load_space(space_file), n_trials=4, sampler="random", seed=5,
                              launcher=fake_launcher(), track=False, advisor=False)
    # the sampler would hit the combination sooner or later; queue it so the test need not wait
    study = optuna.create_study(study_name="zero", storage=open_storage(default_storage("zero")),
                                directions=["maximize", "minimize"])
    study.enqueue_trial({"memory.zero_stage": 0, "memory.offload_optimizer": True})
    run_search(settings)
    records = load_records("zero")
    invalid = [r for r in records if r.result.message.startswith("invalid config")]
    assert len(records) == 4 and invalid[0].number == 0
    assert all(not r.feasible and "zero_stage >= 1" in r.result.message for r in invalid)
    # recorded as what it was (for MLflow's params and hash), not as the base config
    assert invalid[0].config.memory.offload_optimizer and invalid[0].config.memory.zero_stage == 0
    assert invalid[0].result.config_hash == invalid[0].config.config_hash() != settings.space.base.config_hash()


def _dead_owner() -> str:
    from autotune import owner

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{owner.this_process().rsplit(':', 2)[0]}:{gone.stdout.strip()}:0"


@pytest.mark.timeout(180)
def test_running_trials_of_dead_controllers_are_failed_and_retried(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller killed between ask() and its first heartbeat left a RUNNING trial every later run waited for."""
    from autotune.result import USER_ATTR_CONFIG
    from autotune.tuner.controller import USER_ATTR_OWNER, USER_ATTR_OWNER_TRIAL, baseline_config

    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="orphans", storage=open_storage(default_storage("orphans")),
                                directions=["maximize", "minimize"])
    dead = study.ask()   # its controller died after ask(): no heartbeat ever, owner on this host gone
    dead.set_user_attr(USER_ATTR_OWNER, _dead_owner())
    dead.set_user_attr(USER_ATTR_OWNER_TRIAL, dead.number)
    dead.set_user_attr(USER_ATTR_CONFIG, baseline_config(ci_space()).to_dict())
    unowned = study.ask()   # died even before it could say who it was
    time.sleep(1.2)
    run_search(_settings("orphans", 3, grace_period_s=1))
    trials = optuna.load_study(study_name="orphans", storage=default_storage("orphans")).trials
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING] == []
    assert trials[dead.number].state == trials[unowned.number].state == optuna.trial.TrialState.FAIL
    assert len(load_records("orphans")) == 3
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].user_attrs[USER_ATTR_CONFIG] == dead.user_attrs[USER_ATTR_CONFIG]


def test_a_fresh_retry_that_still_carries_its_predecessors_dead_owner_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that asked a re-queued trial has not yet written its owner over the copied, dead one;
    another worker must not fail that trial under it (seen under load when the write took > 2 s)."""
    from autotune.tuner.controller import USER_ATTR_OWNER, USER_ATTR_OWNER_TRIAL, Controller

    monkeypatch.chdir(tmp_path)
    controller = Controller(_settings("retry", 3, grace_period_s=60))
    copy = controller.study.ask()
    copy.set_user_attr(USER_ATTR_OWNER, _dead_owner())         # copied from the trial it retries
    copy.set_user_attr(USER_ATTR_OWNER_TRIAL, copy.number - 1)
    own = controller.study.ask()
    own.set_user_attr(USER_ATTR_OWNER, _dead_owner())          # its own owner, who has died
    own.set_user_attr(USER_ATTR_OWNER_TRIAL, own.number)
    time.sleep(2.5)   # older than any fixed "owner not written yet" window
    controller.claims.fail_orphans()
    states = {t.number: t.state for t in controller.study.trials}
    assert states[copy.number] == optuna.trial.TrialState.RUNNING
    assert states[own.number] == optuna.trial.TrialState.FAIL


def test_an_unwritable_trials_folder_stops_the_search_and_leaves_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "readonly"
    folder.mkdir(parents=True)
    (folder / "trials").write_text("a file where the trials folder should be\n")
    with pytest.raises(StorageError, match="run the same command again to resume"):
        run_search(_settings("readonly", 3))
    trials = optuna.load_study(study_name="readonly", storage=default_storage("readonly")).trials
    assert trials and all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    assert any(t.state == optuna.trial.TrialState.WAITING for t in trials)   # the baseline, queued again


@pytest.mark.parametrize(("key", "value"), [("budget_gb", float("nan")), ("timeout_s", float("nan")),
                                            ("min_reward_ratio", float("nan")), ("budget_gb", float("inf"))])
def test_non_finite_settings_fail_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str,
                                                       value: float) -> None:
    monkeypatch.chdir(tmp_path)
    settings = dataclasses.replace(_settings("nan", 2), **{key: value})
    with pytest.raises(ConfigError, match=f"{key}: must be a positive, finite number"):
        run_search(settings)
    assert not (tmp_path / "runs").exists()
