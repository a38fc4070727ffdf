"""Bad input to any command: non-zero exit, one line naming the input and the fix, no traceback.

Most cases call the console entry point in this process (the same code path, without paying the
imports per case); the last ones run the real program.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import autotune.cli
from tests.tuner.tuner_helpers import CI_TINY, FAKE_COMMAND, subprocess_env

SEARCH = ["search", "--model", "llama-tiny", "--space", str(CI_TINY), "--trials", "2", "--no-tracking",
          "--trial-command", " ".join(FAKE_COMMAND)]


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        autotune.cli.main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(autotune.cli, "_debug", False, raising=False)


@pytest.mark.parametrize(("option", "value"), [
    ("--budget-gb", "nan"), ("--budget-gb", "inf"), ("--timeout", "nan"), ("--trial-timeout", "inf"),
    ("--min-reward-ratio", "nan"), ("--seed", "99999999999999999999999"), ("--seed", "-1"),
    ("--reward-seeds", "0"), ("--reward-seeds", "nan"),
])
def test_bad_numbers_fail_before_anything_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 option: str, value: str) -> None:
    code, _, err = _main([*SEARCH, "--study", "s", option, value], capsys)
    _one_line_error(code, err, option, value)
    assert not (tmp_path / "runs").exists()   # no empty optuna.db left behind


@pytest.mark.parametrize("study", ["../../x", "/tmp/abs", "a/b"])
def test_study_names_outside_runs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], study: str) -> None:
    code, _, err = _main([*SEARCH, "--study", study, "--budget-gb", "0.025"], capsys)
    _one_line_error(code, err, "study name", "--study my-study")
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize(("storage", "needle"), [
    ("notaurl", "not a database URL"), ("nosuchdialect://h/db", "unknown database dialect"),
    ("postgresql+pg8000://u@127.0.0.1:1/db", "not installed"), ("sqlite:///notes.txt", "not a SQLite database"),
    ("sqlite:///adir", "not a file"),
])
def test_malformed_storages_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str,
                                         needle: str) -> None:
    (tmp_path / "notes.txt").write_text("notes\n")
    (tmp_path / "adir").mkdir()
    code, _, err = _main([*SEARCH, "--study", "s", "--budget-gb", "0.025", "--storage", storage], capsys)
    _one_line_error(code, err, needle)


def test_read_only_commands_leave_other_databases_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mlflow_db = tmp_path / "mlflow.db"
    with sqlite3.connect(mlflow_db) as connection:
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    before = mlflow_db.read_bytes()
    code, _, err = _main(["pareto", "--study", "s", "--storage", f"sqlite:///{mlflow_db}"], capsys)
    _one_line_error(code, err, "not an Optuna study database")
    assert mlflow_db.read_bytes() == before

    optuna_db = tmp_path / "optuna.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{optuna_db}")
    before = optuna_db.read_bytes()
    code, _, err = _main(["sync", "--study", "s", "--storage", f"sqlite:///{optuna_db}",
                          "--tracking-uri", f"sqlite:///{optuna_db}"], capsys)
    _one_line_error(code, err, "not an MLflow store")
    assert optuna_db.read_bytes() == before


def test_an_unwritable_export_out_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autotune.config import TrialConfig

    TrialConfig().dump(tmp_path / "trial.yaml")
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    code, _, err = _main(["export", "--config", "trial.yaml", "--format", "deepspeed", "--out", "blocker/sub"], capsys)
    _one_line_error(code, err, "--out", "blocker")
    assert (tmp_path / "blocker").read_text() == "a file, not a folder\n"


def test_an_unwritable_trial_out_fails_before_the_trial_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from autotune.config import TrialConfig

    TrialConfig().dump(tmp_path / "trial.yaml")
    (tmp_path / "blocker").write_text("x\n")
    code, _, err = _main(["trial", "--config", "trial.yaml", "--out", "blocker/result.json"], capsys)
    _one_line_error(code, err, "--out", "blocker")
    assert "step 1/" not in err   # not a single RLHF step ran


def test_a_result_that_cannot_be_written_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.cli import trial_cmds
    from autotune.result import TrialResult

    def fail(_result: object, _path: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("autotune.rlhf.trial.write_result", fail)
    result = TrialResult(config_hash="abc", status="ok", backend="cpu", reward=0.5)
    with pytest.raises(Exception, match="result is printed above"):
        trial_cmds._save(result, tmp_path / "result.json")
    assert TrialResult.from_dict(__import__("json").loads(capsys.readouterr().out)) == result


@pytest.mark.parametrize("kind", ["config", "space", "prompts"])
def test_non_utf8_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    latin = "device: cpu  # caf\xe9\n".encode("latin-1")
    (tmp_path / "bad.yaml").write_bytes(latin)
    (tmp_path / "prompts.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    argv = {"config": ["trial", "--config", "bad.yaml", "--out", "r.json"],
            "space": [*SEARCH[:3], "--space", "bad.yaml", "--study", "s", "--budget-gb", "0.025"],
            "prompts": ["trial", "--config", "p.yaml", "--out", "r.json"]}[kind]
    (tmp_path / "p.yaml").write_text("workload: {prompts_file: prompts.jsonl}\n")
    code, _, err = _main(argv, capsys)
    if kind == "prompts":   # the trial reports it as its error, without a traceback
        assert code == 1 and "not UTF-8" in err and "Traceback" not in err
    else:
        _one_line_error(code, err, "not UTF-8", "save it as UTF-8")


def test_a_space_with_nan_budget_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nan.yaml").write_text(CI_TINY.read_text().replace("budget_gb: 0.035", "budget_gb: .nan"))
    code, _, err = _main([*SEARCH[:3], "--space", "nan.yaml", "--study", "s"], capsys)
    assert code == 1 and "budget_gb: must be a positive, finite number" in err and "Traceback" not in err


def test_plan_with_a_bad_model_prints_no_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["plan", "--model", "no-such-model-anywhere"], capsys)
    assert code == 1 and "no-such-model-anywhere" in err
    assert "peak reserved" not in out and "0.0 MiB" not in out


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    argv = [sys.executable, "-m", "autotune", "trial", "--config", "bad.yaml", "--out", "r.json"]
    plain = subprocess.run(argv, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*argv[:3], "--debug", *argv[3:]], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                           text=True, timeout=120)
    assert plain.returncode == debug.returncode == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert plain.stderr.strip().splitlines()[-1] == debug.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("workload", "needle"), [
    ("{task: no-such-task}", "unknown task 'no-such-task'"),
    ("{prompts_file: prompts.txt}", "line 1: not JSON"),
])
def test_an_unknown_task_or_a_non_jsonl_prompts_file_fails_before_any_trial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], workload: str, needle: str) -> None:
    (tmp_path / "prompts.txt").write_text("just a sentence, not JSON\n")
    (tmp_path / "space.yaml").write_text(f"base: {{device: cpu, workload: {workload}}}\n"
                                         "dimensions: {memory.static_kv_cache: [false, true]}\n"
                                         "objectives: [{metric: reward, direction: maximize}]\n")
    code, _, err = _main([*SEARCH[:3], "--space", "space.yaml", "--study", "s", "--budget-gb", "0.025"], capsys)
    assert code == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_stop_signal_after_the_work_is_done_changes_nothing(tmp_path: Path) -> None:
    # Ctrl-C as a finished search shuts down used to end it as killed by SIGINT (exit -2) or print a traceback
    script = tmp_path / "late.py"
    script.write_text("import atexit, os, signal, sys\n"
                      "sys.argv = ['autotune', '--version']\n"
                      "from autotune.cli import main\n"
                      "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
                      "main()\n")
    done = subprocess.run([sys.executable, str(script)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
