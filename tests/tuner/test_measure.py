"""How trials are measured: host memory decides real run or plan, reward runs are shared per key,
every result names its sources, and the budget is never missing. Stand-in programs throughout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import ConfigError
from autotune.rlhf.reward_run import reward_config, reward_key
from autotune.tuner import fidelity, measure
from autotune.tuner.controller import CORNER_REASON, SearchSettings, corner_config, run_search
from autotune.tuner.study import load_records
from tests.tuner.tuner_helpers import BUDGET_GB, ci_space, fake_launcher


def _settings(study: str, n: int, **kw: object) -> SearchSettings:
    kw.setdefault("launcher", fake_launcher())
    kw.setdefault("budget_gb", BUDGET_GB)
    kw.setdefault("reward_steps", 4)    # the ci-tiny workload's own length, one seed: what these tests count
    kw.setdefault("reward_seeds", 1)
    return SearchSettings(study=study, space=ci_space(), n_trials=n, track=False, seed=0, heartbeat_interval_s=1,
                          **kw)  # type: ignore[arg-type]


def _host(monkeypatch: pytest.MonkeyPatch, *available_gb: float) -> None:
    """The host's free memory, call by call (the last value repeats)."""
    values = list(available_gb)
    monkeypatch.setattr(measure, "host_available_gb", lambda: values.pop(0) if len(values) > 1 else values[0])


def test_no_budget_means_a_stated_default_never_an_error() -> None:
    budget = fidelity.choose_budget(None, ())
    assert budget.gb == 80.0 and budget.assumed and "assuming an 80 GiB GPU" in budget.note
    assert fidelity.choose_budget(24.0, ()).gb == 24.0


def test_memory_mode_follows_the_host() -> None:
    assert fidelity.choose_memory_mode(gpus=("0",), need_gb=500.0, available_gb=1.0) == "gpu"
    assert fidelity.choose_memory_mode(gpus=(), need_gb=4.0, available_gb=18.0) == "cpu"
    assert fidelity.choose_memory_mode(gpus=(), need_gb=47.5, available_gb=18.0) == "planned"
    assert fidelity.choose_memory_mode(gpus=(), need_gb=None, available_gb=18.0) == "planned"


def test_a_model_the_host_cannot_hold_is_planned_never_launched(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 0.5)   # the baseline needs its 27.5 MiB plus 1.5 GiB of process: more than 0.5 GiB
    log = tmp_path / "rewards.log"
    monkeypatch.setenv("FAKE_REWARD_LOG", str(log))
    outcome = run_search(_settings("planned", 8, reward_proxy="llama-small"))
    records = load_records("planned")
    assert outcome.memory_mode == "planned" and len(records) == 8
    # no trial was launched: only plans ran in the trial folders
    assert not list((tmp_path / "runs" / "planned" / "trials").glob("*/trial.log"))
    assert all(r.result.memory_source == "llama-tiny, planned (simulator)" for r in records)
    # one reward run per reward key, every other trial with that key reads it from the study's cache
    keys = [r.result.reward_key for r in records if r.result.reward_key]
    runs = [line.split()[0] for line in log.read_text().splitlines()]
    # the baseline's key ran first, to set the runs' length (its trial then reads it from the cache)
    assert sorted(runs) == sorted(set(keys)) and outcome.reward_runs + outcome.settling_runs == len(runs)
    assert outcome.settling_runs == 1
    assert outcome.reward_runs + outcome.reward_hits == len(keys) == 8
    by_key: dict[str, float] = {}
    for r in records:
        assert by_key.setdefault(r.result.reward_key, r.result.reward) == r.result.reward
        assert r.result.reward_source == "llama-small proxy, 4 steps" and r.result.reward_se == 0.01


def test_reward_seeds_reach_every_reward_run_and_its_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 0.5)
    run_search(_settings("seeded", 3, reward_proxy="llama-small", reward_seeds=3))
    scored = [r for r in load_records("seeded") if r.result.reward_key]
    assert scored and all(r.result.reward_source == "llama-small proxy, 4 steps, 3 seeds" for r in scored)
    assert {r.result.reward_key for r in scored} == {
        reward_key(reward_config(r.config, proxy="llama-small"), seeds=3) for r in scored}


def test_a_cpu_trial_over_the_free_host_memory_is_not_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # room for the baseline when the study starts; then another process takes the memory
    _host(monkeypatch, 64.0, 0.7)
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "2:raise")   # trial 2's plan crashes as well
    outcome = run_search(_settings("squeezed", 3))
    by_number = {r.number: r for r in load_records("squeezed")}
    assert outcome.memory_mode == "cpu"
    assert not list((tmp_path / "runs" / "squeezed" / "trials").glob("*/trial.log"))
    planned = by_number[0].result
    assert planned.memory is not None and planned.memory_source == "llama-tiny, planned (simulator)"
    assert "not run on the CPU: needs 1.5 GiB of host memory, 0.7 GiB available" in planned.message
    infeasible = by_number[2]
    assert infeasible.result.status == "prescreened" and not infeasible.feasible
    assert infeasible.result.message.startswith("needs 1.5 GiB of host memory, 0.7 GiB available")


def test_a_host_that_holds_the_model_runs_it_and_labels_both_sources(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 64.0)
    notes: list[str] = []
    outcome = run_search(_settings("real", 3, reward_seeds=3), on_note=notes.append)
    records = load_records("real")
    assert outcome.memory_mode == "cpu" and outcome.reward_runs == 0
    assert any("reward: from each run (one seed: --reward-seeds 3 applies to reward runs only)" in n for n in notes)
    assert all((tmp_path / "runs" / "real" / "trials" / str(r.number) / "trial.log").is_file() for r in records)
    assert {r.result.memory_source for r in records} == {
        "llama-tiny, measured on the CPU (traced, simulator), 4 iterations"}
    assert {r.result.reward_source for r in records} == {"llama-tiny, 4 steps (this trial)"}


def test_a_baseline_that_cannot_be_planned_runs_a_small_model_for_real(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 64.0)
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "baseline-plan:raise")
    notes: list[str] = []
    outcome = run_search(_settings("unplanned", 2), on_note=notes.append)
    assert outcome.memory_mode == "cpu"
    records = load_records("unplanned")
    assert all((tmp_path / "runs" / "unplanned" / "trials" / str(r.number) / "trial.log").is_file() for r in records)
    assert all(r.result.status in ("ok", "oom") for r in records)
    assert any("its baseline could not be planned" in n and "plan.log" in n for n in notes)


def test_a_baseline_that_cannot_be_planned_is_a_clear_error_when_plans_are_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "baseline-plan:raise")
    with pytest.raises(ConfigError, match="the full-size plan of the baseline failed .*plan.log"):
        run_search(_settings("unplanned", 2, plan_memory=True))


def test_a_failed_reward_run_fails_its_trials_and_is_not_retried(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 0.5)
    log = tmp_path / "rewards.log"
    monkeypatch.setenv("FAKE_REWARD_LOG", str(log))
    monkeypatch.setenv("FAKE_REWARD_FAIL", "1")
    run_search(_settings("nreward", 4, reward_proxy="llama-small"))
    records = load_records("nreward")
    within = [r for r in records if r.result.status != "prescreened"]   # the over-budget baseline stays so
    assert within and all(r.result.status == "error" and "reward run error: failed on purpose" in r.result.message
                          for r in within)
    runs = log.read_text().splitlines()
    assert len(runs) == len(set(runs))   # a stored failure is read back, not rerun


def test_gpu_trials_measure_memory_in_a_short_run_and_reward_in_a_reward_run(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # a GPU host, as the search sees it: it refuses listed GPUs that CUDA does not see (search_plan)
    monkeypatch.setattr("autotune.tuner.fidelity.detect_gpus", lambda: ("0",))
    run_search(_settings("gpu", 4, gpus=("0",), budget_gb=1.0))
    records = load_records("gpu")
    ran = [r for r in records if r.result.ok]
    assert ran
    for r in ran:
        steps = fidelity.MEMORY_ITERATIONS
        assert r.result.memory_source == f"llama-tiny, measured on the GPU, {steps} iterations"
        assert r.result.reward_source == "llama-tiny, 4 steps"   # the full model, on the GPU
        trial_yaml = (tmp_path / "runs" / "gpu" / "trials" / str(r.number) / "trial.yaml").read_text()
        assert f"steps: {min(steps, 4)}" in trial_yaml and r.config.workload.steps == 4


def test_the_corner_trial_takes_every_saver_the_space_offers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corner = corner_config(ci_space())
    assert corner is not None
    optimizer = corner.optimizer
    assert (optimizer.name, optimizer.critic, optimizer.partition.density) == ("frugal", "frugal", 0.0)
    assert corner.memory.offload_reference and corner.memory.offload_reward
    assert corner.memory.actor_gradient_checkpointing
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 64.0)
    run_search(_settings("corner", 2))
    records = load_records("corner")
    assert [r.advisor_reason for r in records] == ["baseline", CORNER_REASON]
    assert records[1].config == corner.replace(device_memory_gb=BUDGET_GB)   # the budget sizes the simulated device


def test_reward_runs_double_until_the_baseline_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 0.5)
    log = tmp_path / "rewards.log"
    monkeypatch.setenv("FAKE_REWARD_LOG", str(log))
    monkeypatch.setenv("FAKE_REWARD_LEARNS_AT", "128")
    notes: list[str] = []
    run_search(_settings("longer", 3, reward_proxy="llama-small", reward_steps=None, reward_seeds=2),
               on_note=notes.append)
    steps = [int(line.split()[1]) for line in log.read_text().splitlines()]
    # the baseline at 64 steps, then 128; every other run at 128
    assert steps[:2] == [64, 128] and set(steps[2:]) <= {128}
    assert any("64 steps are too short" in n and "doubling to 128 steps" in n for n in notes)
    assert any(n.startswith("reward runs: 128 steps x 2 seeds: the baseline's gain") and n.endswith(": learned")
               for n in notes)
    scored = [r for r in load_records("longer") if r.result.reward_key]
    assert scored and all(r.result.reward_source == "llama-small proxy, 128 steps, 2 seeds" for r in scored)
    # what a proxy cannot establish is said on the first lines and in both outputs
    caveat = "reward proxy: the proxy ranks how configs learn on the proxy; that the model itself ranks them alike"
    assert any(n.startswith(caveat) for n in notes)
    out = tmp_path / "runs" / "longer"
    assert f"# {caveat}" in (out / "recommended.yaml").read_text()
    assert json.loads((out / "pareto.json").read_text())["reward_proxy"]["model"] == "llama-small"
    # a resume trains the same length without settling again
    log.unlink()
    notes.clear()
    run_search(_settings("longer", 4, reward_proxy="llama-small", reward_steps=None, reward_seeds=2),
               on_note=notes.append)
    assert any("128 steps x 2 seeds, as this study settled them" in n for n in notes)
    assert all(int(line.split()[1]) == 128 for line in log.read_text().splitlines())


def test_a_baseline_that_never_learns_leaves_the_choice_to_memory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _host(monkeypatch, 0.5)
    monkeypatch.setenv("FAKE_REWARD_LEARNS_AT", "1000000")
    notes: list[str] = []
    outcome = run_search(_settings("flat", 3, reward_proxy="llama-small", reward_steps=None, reward_seeds=2,
                                   budget_gb=1.0), on_note=notes.append)
    assert any("256 steps x 2 seeds (the cap is 256 steps)" in n and "rests on memory alone" in n for n in notes)
    # the default policy, fastest, then weighs memory and step time only
    assert outcome.recommendation is not None and "on memory and time alone" in outcome.recommendation.reason
    assert "did not learn" in outcome.recommendation.reason and outcome.settling_runs == 3   # 64, 128, 256 steps
