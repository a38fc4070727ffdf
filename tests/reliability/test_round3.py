"""Reliability round 3 (issue 22): bad input, changed studies, links, storage and false successes.

Each test reproduces one reported case and checks the product's answer: one `error:` line, a refusal
that names the cause, or no write outside runs/. Most run the console entry point in this process.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune import owner
from tests.reliability.faults import wait_no_processes
from tests.test_cli_errors import SEARCH, _in_tmp, _main, _one_line_error  # noqa: F401 - _in_tmp is autouse
from tests.tuner.tuner_helpers import CI_TINY, FAKE_COMMAND, FAKE_REWARD_COMMAND, subprocess_env


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must succeed; its stdout."""
    import autotune.cli

    autotune.cli.main(argv)
    out, err = capsys.readouterr()
    assert "error:" not in err, err
    return out


# -- 1: a budget no device holds ------------------------------------------------------------------
@pytest.mark.parametrize("where", ["--budget-gb", "space", "pareto"])
def test_a_huge_budget_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "huge.yaml").write_text(CI_TINY.read_text().replace("budget_gb: 0.035", "budget_gb: 1.0e+308"))
    argv = {"--budget-gb": [*SEARCH, "--study", "s", "--budget-gb", "1e308"],
            "space": [*SEARCH[:3], "--space", "huge.yaml", "--study", "s", "--no-tracking"],
            "pareto": ["pareto", "--study", "s", "--budget-gb", "1e308"]}[where]
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, "1e+308", "65536")
    assert not (tmp_path / "runs").exists()


def test_a_trial_config_with_a_huge_device_is_one_error_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.yaml").write_text("device_memory_gb: 1.0e+308\n")
    code, _, err = _main(["trial", "--config", "t.yaml", "--out", "r.json"], capsys)
    _one_line_error(code, err, "device_memory_gb", "at most 65536")
    assert not (tmp_path / "r.json").exists()


# -- 7: links inside runs/ ------------------------------------------------------------------------
FAKES = ["--plan-command", " ".join(FAKE_COMMAND), "--reward-command", " ".join(FAKE_REWARD_COMMAND),
         "--no-timeline", "--seed", "0"]


def test_a_link_to_a_trial_folder_outside_runs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs" / "s" / "trials").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "trials" / "0").symlink_to(outside, target_is_directory=True)
    code, _, err = _main([*SEARCH, *FAKES, "--study", "s", "--budget-gb", "0.025"], capsys)
    _one_line_error(code, err, "runs/s/trials/0", "symbolic link")
    assert list(outside.iterdir()) == []


def test_links_at_output_files_are_replaced_not_followed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "runs" / "s"
    study.mkdir(parents=True)
    victims = {name: tmp_path / f"victim-{name}" for name in ("recommended.yaml", "pareto.json")}
    for name, victim in victims.items():
        victim.write_text("keep me\n")
        (study / name).symlink_to(victim)
    out = _ok([*SEARCH, *FAKES, "--trials", "1", "--study", "s", "--budget-gb", "1"], capsys)
    assert "wrote runs/s/recommended.yaml" in out
    for name, victim in victims.items():
        assert victim.read_text() == "keep me\n"
        assert not (study / name).is_symlink() and (study / name).stat().st_size > 0


def test_export_replaces_a_link_in_its_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autotune.config import TrialConfig

    TrialConfig().dump(tmp_path / "trial.yaml")
    (tmp_path / "victim.json").write_text("keep me\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ds_config.json").symlink_to(tmp_path / "victim.json")
    _ok(["export", "--config", "trial.yaml", "--format", "deepspeed", "--out", "out"], capsys)
    assert (tmp_path / "victim.json").read_text() == "keep me\n"
    assert not (tmp_path / "out" / "ds_config.json").is_symlink()


def test_only_folders_below_runs_must_not_be_links(tmp_path: Path) -> None:
    from autotune import files
    from autotune.errors import StorageError

    real = tmp_path / "disk"
    (real / "s").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(real, target_is_directory=True)   # runs/ itself on another disk: fine
    files.write_text(tmp_path / "runs" / "s" / "a.txt", "ok\n")
    assert (real / "s" / "a.txt").read_text() == "ok\n"
    (real / "t").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(StorageError, match="symbolic link"):
        files.write_text(tmp_path / "runs" / "t" / "a.txt", "no\n")
    assert not (tmp_path / "a.txt").exists()
    with pytest.raises(RuntimeError):   # a failed writer leaves neither the file nor a temporary one
        with files.replacing(real / "s" / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert sorted(p.name for p in (real / "s").iterdir()) == ["a.txt"]


# -- 6: a study whose space changed ---------------------------------------------------------------
@pytest.mark.parametrize(("change", "needle"), [
    (("direction: maximize", "direction: minimize"), "direction of reward: was maximize, now minimize"),
    (("{low: 1, high: 4}", "{low: 1, high: 2}"), "range of optimizer.partition.update_gap"),
    (("steps: 4,", "steps: 2,"), "base workload.steps: was 4, now 2"),
    (("budget_gb: 0.035", "budget_gb: 0.5"), "budget_gb: was 0.035, now 0.5"),
])
def test_a_changed_space_is_refused_naming_the_change(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      change: tuple[str, str], needle: str) -> None:
    text = CI_TINY.read_text()
    assert change[0] in text
    (tmp_path / "space.yaml").write_text(text)
    argv = [*SEARCH[:3], "--space", "space.yaml", *SEARCH[5:], *FAKES, "--trials", "1", "--study", "s"]
    _ok(argv, capsys)
    _ok(argv, capsys)                                    # the same space resumes
    (tmp_path / "space.yaml").write_text(text.replace(change[0], change[1]))
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, needle, "another --study name")
    assert not (tmp_path / "runs" / "s" / "trials" / "1").exists()


# -- 2: a model folder with a broken config.json ----------------------------------------------------
@pytest.mark.parametrize(("command", "text"), [
    ("search", '{"model_type": "llama", "hidden_si'),
    ("search", '{"model_type": "llama", "hidden_size": "big"}'),
    ("plan", '{"model_type": "llama", "hidden_si'),
    ("plan", '{"model_type": "llama", "hidden_size": "big"}'),
])
def test_a_broken_model_config_is_one_line_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             command: str, text: str) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(text)
    argv = ([*SEARCH[:1], "--model", "model", *SEARCH[3:], *FAKES, "--study", "s", "--budget-gb", "0.025"]
            if command == "search" else ["plan", "--model", "model"])
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, "model directory 'model'", "config.json cannot be used")
    assert not (tmp_path / "runs" / "s" / "trials").exists()


# -- 3: --gpus without CUDA ---------------------------------------------------------------------------
def test_gpus_without_cuda_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)   # as on this CPU box, also on a GPU runner
    code, _, err = _main([*SEARCH, *FAKES, "--study", "s", "--budget-gb", "0.025", "--gpus", "0,1"], capsys)
    _one_line_error(code, err, "--gpus 0,1", "CUDA is not available")
    assert not (tmp_path / "runs" / "s" / "trials").exists()


# -- 10: false successes ------------------------------------------------------------------------------
def test_pareto_log_with_mlflow_down_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ok([*SEARCH, *FAKES, "--trials", "1", "--study", "s", "--budget-gb", "1"], capsys)
    code, out, err = _main(["pareto", "--study", "s", "--log", "--tracking-uri", f"http://127.0.0.1:{_free_port()}"],
                           capsys)
    assert code == 1 and "error: the front was not logged" in err, err
    assert "logged the front" not in out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_on_a_port_in_use_fails_before_printing_a_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = _main(["ui", "--tracking-uri", "sqlite:///mlflow.db", "--port", str(port)], capsys)
    _one_line_error(code, err, f"--port {port}", "in use")
    assert "MLflow UI" not in out


def test_ui_for_an_unknown_study_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"   # absolute: MLflow caches a store by its URI
    MlflowClient(tracking_uri=store).create_experiment("real")
    capsys.readouterr()   # MLflow's own lines while the store was made
    code, out, err = _main(["ui", "--tracking-uri", store, "--study", "typo",
                            "--port", str(_free_port())], capsys)
    _one_line_error(code, err, "no study 'typo'")
    assert "MLflow UI" not in out


# -- 11: `autotune ui` stopped by a signal takes its server with it -----------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_ui_stopped_by_a_signal_ends_the_whole_server(tmp_path: Path, sig: int) -> None:
    # A stand-in for `mlflow ui`: a server process with a worker of its own, as uvicorn and huey are.
    (tmp_path / "server.py").write_text(
        "import pathlib, subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "pathlib.Path('pids').write_text(f'{worker.pid}\\n')\n"
        "time.sleep(300)\n")
    (tmp_path / "ui.py").write_text(
        "import sys\n"
        "import autotune.cli, autotune.tracking\n"
        f"autotune.tracking.ui_argv = lambda uri, port: [sys.executable, {str(tmp_path / 'server.py')!r}]\n"
        "autotune.cli.main(['ui', '--tracking-uri', 'sqlite:///mlflow.db'])\n")
    (tmp_path / "mlflow.db").touch()
    proc = subprocess.Popen([sys.executable, "ui.py"], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pids").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int((tmp_path / "pids").read_text())
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert wait_no_processes(tmp_path) == [], out
    assert not owner.pid_alive(worker)   # gone, or a zombie where the container's init does not reap


# -- 9: read-only storage -------------------------------------------------------------------------------
def _read_only_run(tmp_path: Path, target: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run autotune with `target` read-only: by its mode, or (root ignores modes) a read-only bind mount."""
    command = [sys.executable, "-m", "autotune", *argv]
    if os.geteuid() != 0:
        target.chmod(target.stat().st_mode & ~0o222)
    else:
        if shutil.which("unshare") is None:
            pytest.skip("root ignores file modes, and unshare is missing for a read-only mount")
        script = f"mount --bind {target} {target} && mount -o remount,bind,ro {target} && exec {shlex.join(command)}"
        command = ["unshare", "-m", "sh", "-c", script]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    if "unshare:" in done.stderr or "mount:" in done.stderr:
        pytest.skip(f"no read-only mount here: {done.stderr.strip()}")
    return done


def _closed_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A one-trial study whose database was closed cleanly (no -wal or -shm file beside it)."""
    _ok([*SEARCH, *FAKES, "--trials", "1", "--study", "s", "--budget-gb", "1"], capsys)
    db = tmp_path / "runs" / "s" / "optuna.db"
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return db


def test_pareto_reads_a_study_in_a_read_only_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _closed_study(tmp_path, capsys)
    done = _read_only_run(tmp_path, db.parent, ["pareto", "--study", "s"])
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr and "measured on the CPU" in done.stdout, done.stderr   # the front's table


def test_a_search_on_a_read_only_database_says_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _closed_study(tmp_path, capsys)
    done = _read_only_run(tmp_path, db, [*SEARCH, *FAKES, "--trials", "2", "--study", "s", "--budget-gb", "1"])
    assert done.returncode == 1, done.stderr
    assert "is not writable" in done.stderr and "internal error" not in done.stderr, done.stderr
    assert not (tmp_path / "runs" / "s" / "trials" / "1").exists()


# -- 8: a tracking store that is a folder ---------------------------------------------------------------
def test_a_folder_as_the_mlflow_store_warns_once_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mlflow.db").mkdir()
    argv = [*SEARCH, *FAKES, "--trials", "1", "--study", "s", "--budget-gb", "1", "--tracking",
            "--tracking-uri", "sqlite:///mlflow.db"]
    start = time.monotonic()
    out = _ok(argv, capsys)
    elapsed = time.monotonic() - start
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "mlflow" in r.getMessage().lower()]
    assert len(warnings) == 1 and "is a folder" in warnings[0], warnings
    assert "wrote runs/s/recommended.yaml" in out
    assert elapsed < 60, f"{elapsed:.0f} s: MLflow's retries were waited out"
    code, _, err = _main(["sync", "--study", "s", "--tracking-uri", "sqlite:///mlflow.db"], capsys)
    _one_line_error(code, err, "is a folder")


# -- 4: an empty --study ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "pareto"])
def test_an_empty_study_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    argv = [*SEARCH, *FAKES, "--budget-gb", "1", "--study", ""] if command == "search" else ["pareto", "--study", ""]
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, "study name ''")
    assert not (tmp_path / "runs").exists()


# -- 5: a key given twice ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["space", "config"])
def test_a_duplicated_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    if kind == "space":
        (tmp_path / "dup.yaml").write_text(CI_TINY.read_text().replace(
            "  optimizer.name: [adamw, frugal]\n", "  optimizer.name: [adamw, frugal]\n  optimizer.name: [frugal]\n"))
        argv = [*SEARCH[:3], "--space", "dup.yaml", *SEARCH[5:], *FAKES, "--study", "s"]
    else:
        (tmp_path / "dup.yaml").write_text("device: cpu\nworld_size: 1\ndevice: fake\n")
        argv = ["trial", "--config", "dup.yaml", "--out", "r.json"]
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, "duplicate key", "keep one of them")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()


def test_merge_keys_may_still_override(tmp_path: Path) -> None:
    from autotune import schema

    (tmp_path / "m.yaml").write_text("a: &base {x: 1, y: 2}\nb:\n  <<: *base\n  y: 3\n")
    assert schema.load_yaml_text(tmp_path / "m.yaml") == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


# -- 12: smaller ones ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("before", "after", "available_gb", "expected"), [
    (3, 4, 50.0, "killed by SIGKILL from the OS out-of-memory killer"),
    (3, 3, 0.5, "killed by SIGKILL from outside autotune, not the OS out-of-memory killer"),
    (None, None, 50.0, "killed by SIGKILL from outside autotune; the host had 50.0 GiB"),
    (None, None, 0.5, "killed by SIGKILL, most likely the OS out-of-memory killer; the host had 0.5 GiB"),
])
def test_a_sigkill_is_blamed_on_the_oom_killer_only_with_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                before: int | None, after: int | None,
                                                                available_gb: float, expected: str) -> None:
    from autotune.tuner import launcher

    monkeypatch.setattr(launcher, "oom_kill_count", lambda: after)
    message = launcher._no_result(-signal.SIGKILL, tmp_path / "none.log", available_gb, before)
    assert message.startswith(expected), message


@pytest.mark.parametrize("given", [False, True])
def test_the_budget_line_names_where_the_budget_came_from(capsys: pytest.CaptureFixture[str], given: bool) -> None:
    out = _ok([*SEARCH, *FAKES, "--trials", "1", "--study", "s", *(["--budget-gb", "0.05"] if given else [])], capsys)
    first = out.splitlines()[0]
    assert first == ("budget 0.05 GiB (--budget-gb)" if given else f"budget 0.035 GiB (budget_gb in {CI_TINY})"), first


def test_sighup_stops_a_search_like_ctrl_c(tmp_path: Path) -> None:
    from autotune.tuner.interrupts import STOP_SIGNALS

    assert signal.SIGHUP in STOP_SIGNALS   # the controller turns it into a clean stop while trials run
    argv = [sys.executable, "-m", "autotune", *SEARCH, *FAKES, "--trials", "50", "--study", "s", "--budget-gb", "1"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/s/trials/*/result.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "SIGHUP: ending the running trials" in out or "Interrupted." in out, out
    assert "Traceback" not in out


def test_sync_on_a_damaged_mlflow_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    _ok([*SEARCH, *FAKES, "--trials", "1", "--study", "s", "--budget-gb", "1"], capsys)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"   # absolute: MLflow caches a store by its URI
    MlflowClient(tracking_uri=store).search_experiments()
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:   # a table of the wrong shape
        connection.execute("DROP TABLE tags")
        connection.execute("CREATE TABLE tags (x INTEGER)")
    connection.close()
    capsys.readouterr()   # MLflow's own lines while the store above was made
    code, _, err = _main(["sync", "--study", "s", "--tracking-uri", store], capsys)
    _one_line_error(code, err, "cannot sync study 's'", "damaged")
    assert "SELECT" not in err
