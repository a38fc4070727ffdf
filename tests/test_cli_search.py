"""`autotune search` and `autotune pareto` end to end: the stand-in trial by default, the real one on ci-tiny."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.result import TrialResult
from autotune.tuner.study import load_records
from tests.tuner.tuner_helpers import CI_TINY, result_count, search_cmd, subprocess_env

AUTOTUNE = [sys.executable, "-m", "autotune"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=300)


def test_search_then_pareto(tmp_path: Path) -> None:
    done = _run(search_cmd("cli", 5), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Recommended: trial #" in done.stdout and "why:" in done.stdout
    assert (tmp_path / "runs" / "cli" / "recommended.yaml").is_file()
    table = _run([*AUTOTUNE, "pareto", "--study", "cli"], tmp_path)
    assert table.returncode == 0, table.stderr
    chosen = json.loads((tmp_path / "runs" / "cli" / "pareto.json").read_text())["recommended"]
    assert "Pareto front" in table.stdout and f"*{chosen} " in table.stdout
    records = load_records("cli", f"sqlite:///{tmp_path}/runs/cli/optuna.db")
    chosen_record = next(r for r in records if r.number == chosen)
    assert chosen_record.feasible
    assert chosen_record.config == TrialConfig.load(tmp_path / "runs" / "cli" / "recommended.yaml")


def test_bad_space_and_missing_study_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dimensions: {memory.zero_stage: [0, 9]}\nobjectives: [{metric: reward, direction: maximize}]\n")
    out = _run([*AUTOTUNE, "search", "--model", "llama-tiny", "--space", str(bad), "--no-tracking"], tmp_path)
    assert out.returncode == 1 and str(bad) in out.stderr and "dimensions.memory.zero_stage" in out.stderr
    assert "Traceback" not in out.stderr
    missing = _run([*AUTOTUNE, "pareto", "--study", "nope"], tmp_path)
    assert missing.returncode == 1 and "no study 'nope'" in missing.stderr
    assert not (tmp_path / "runs" / "nope").exists()


def test_no_budget_anywhere_is_a_stated_assumption_on_the_first_line(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(CI_TINY.read_text().replace("budget_gb: 0.035\n", ""))
    cmd = search_cmd("nobudget", 3)
    cmd[cmd.index("--space") + 1] = str(space)
    at = cmd.index("--budget-gb")
    del cmd[at:at + 2]
    out = _run(cmd, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ("no GPU: assuming an 80 GiB GPU as the memory budget "
                                          "(pass --budget-gb to change it)")
    assert (tmp_path / "runs" / "nobudget" / "recommended.yaml").is_file()


def test_the_output_says_where_each_objective_came_from(tmp_path: Path) -> None:
    done = _run(search_cmd("src", 3), tmp_path)
    assert done.returncode == 0, done.stderr
    label = "memory: llama-tiny, measured on the CPU (traced, simulator), 4 iterations"
    assert "trial 0 " in done.stdout and label in done.stdout                     # progress lines
    assert "sources         " + label in done.stdout                                 # summary
    recommended = (tmp_path / "runs" / "src" / "recommended.yaml").read_text()
    assert recommended.startswith("# autotune recommendation: trial #")
    assert "# memory: llama-tiny, measured on the CPU" in recommended
    table = _run([*AUTOTUNE, "pareto", "--study", "src"], tmp_path)
    assert "memory: llama-tiny, measured on the CPU" in table.stdout and "reward: llama-tiny, 4 steps" in table.stdout


def test_a_search_on_the_offline_similarity_reward_runs(tmp_path: Path) -> None:
    """`task: similarity` (the README's offline reward model) passes search's checks like any task."""
    space = tmp_path / "space.yaml"
    space.write_text(CI_TINY.read_text().replace("seed: 0}", "seed: 0, task: similarity}"))
    cmd = search_cmd("sim", 2)
    cmd[cmd.index("--space") + 1] = str(space)
    out = _run(cmd, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Recommended: trial #" in out.stdout
    assert TrialConfig.load(tmp_path / "runs" / "sim" / "recommended.yaml").workload.task == "similarity"


def test_unknown_model_fails_before_any_study_exists(tmp_path: Path) -> None:
    out = _run([*AUTOTUNE, "search", "--model", "llama-7q", "--space", str(CI_TINY), "--no-tracking"], tmp_path)
    assert out.returncode == 1 and "unknown model 'llama-7q'" in out.stderr and "llama-tiny" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    proc = subprocess.Popen(search_cmd("intr", 5), cwd=tmp_path, env=subprocess_env(FAKE_TRIAL_SLEEP_S="1.0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while result_count(tmp_path) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    storage = f"sqlite:///{tmp_path}/runs/intr/optuna.db"
    before = load_records("intr", storage)
    assert 2 <= len(before) < 5
    done = _run(search_cmd("intr", 5), tmp_path, FAKE_TRIAL_SLEEP_S="0")
    assert done.returncode == 0, done.stderr
    after = load_records("intr", storage)
    assert len(after) == 5 and [r.number for r in after[:len(before)]] == [r.number for r in before]


@pytest.mark.slow
def test_ci_tiny_with_the_real_trial(tmp_path: Path) -> None:
    """The real `autotune trial` on ci-tiny: 6 trials, baseline first, a reproducible recommendation."""
    done = _run([*AUTOTUNE, "search", "--model", "llama-tiny", "--space", str(CI_TINY), "--trials", "6",
                 "--study", "real", "--no-tracking", "--no-timeline", "--seed", "0"], tmp_path)
    assert done.returncode == 0, done.stderr
    records = load_records("real", f"sqlite:///{tmp_path}/runs/real/optuna.db")
    assert len(records) == 6 and records[0].advisor_reason == "baseline"
    assert any(r.feasible for r in records)
    recommended = tmp_path / "runs" / "real" / "recommended.yaml"
    config = TrialConfig.load(recommended)
    chosen = next(r for r in records if r.config == config)
    rerun = _run([*AUTOTUNE, "trial", "--config", str(recommended), "--out", str(tmp_path / "again.json")], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert TrialResult.load(tmp_path / "again.json").reward == pytest.approx(chosen.result.reward, abs=1e-6)


@pytest.mark.slow
def test_pareto_log_hands_the_front_to_mlflow(tmp_path: Path) -> None:
    done = _run(search_cmd("logged", 3), tmp_path)
    assert done.returncode == 0, done.stderr
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logged = _run([*AUTOTUNE, "pareto", "--study", "logged", "--log", "--tracking-uri", uri], tmp_path)
    assert logged.returncode == 0, logged.stderr
    import mlflow

    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()])
    assert runs, "pareto --log wrote no MLflow run"
