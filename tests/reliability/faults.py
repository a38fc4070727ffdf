"""The fault suite's machinery: run the real `autotune search` (with the stand-in trial), stop it at
random points, and check the invariants a user relies on after every stop and resume.

Invariants (each checked by `check_after_stop` / `check_after_resume`):
* exactly N trials with a result once a resume finishes;
* no RUNNING trial whose controller is gone (after a resume: none RUNNING at all);
* no process left behind (nothing runs with its working folder under the test's folder);
* `autotune sync` leaves exactly one MLflow child run per trial, and no parent run RUNNING;
* every trial that had a result keeps it, byte for byte, in the study and in its result.json.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autotune import owner
from tests.tuner.tuner_helpers import BUDGET_GB, CI_TINY, FAKE_COMMAND, subprocess_env

AUTOTUNE = [sys.executable, "-m", "autotune"]
START_TIMEOUT_S = 240.0
_ORPHAN_WAIT_S = 5.0        # a trial notices its controller is gone within a quarter second; slack for load


@dataclass
class Case:
    """One study driven through `stops` random stops and a final resume."""

    tmp: Path
    study: str
    n_trials: int
    sig: int
    seed: int
    tracking: bool = True
    env: dict[str, str] = field(default_factory=dict)
    kill_points: list[float] = field(default_factory=list)   # seconds after start, each a landed stop

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.tmp / 'mlflow.db'}"

    @property
    def storage(self) -> Path:
        return self.tmp / "runs" / self.study / "optuna.db"

    def search_argv(self) -> list[str]:
        argv = [*AUTOTUNE, "search", "--model", "llama-tiny", "--space", str(CI_TINY), "--trials", str(self.n_trials),
                "--study", self.study, "--budget-gb", str(BUDGET_GB), "--heartbeat", "1", "--no-timeline",
                "--seed", str(self.seed), "--trial-command", " ".join(FAKE_COMMAND)]
        return argv + (["--tracking-uri", self.tracking_uri] if self.tracking else ["--no-tracking"])

    def start(self, label: str) -> subprocess.Popen:
        log = (self.tmp / f"{label}.log").open("wb")
        return subprocess.Popen(self.search_argv(), cwd=self.tmp, env=subprocess_env(**self.env), stdout=log,
                                stderr=subprocess.STDOUT)


def stop_at_random(case: Case, rng: random.Random, max_delay_s: float, label: str) -> bool:
    """Start a search, send `case.sig` after a random delay; True when the signal landed mid-run."""
    proc = case.start(label)
    delay = rng.uniform(0.5, max_delay_s)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    landed = proc.poll() is None
    if landed:
        proc.send_signal(case.sig)
        case.kill_points.append(round(delay, 2))
    code = proc.wait(timeout=START_TIMEOUT_S)
    log = (case.tmp / f"{label}.log").read_text(errors="replace")
    assert "Traceback" not in log, log
    if landed and case.sig != signal.SIGKILL:
        # 130: stopped cleanly; 0: it finished as the signal came. SIGTERM's handler exists once the
        # search command starts; before that (Python importing the CLI) it ends the process as SIGTERM does.
        allowed = (130, 0, -signal.SIGTERM) if case.sig == signal.SIGTERM else (130, 0)
        assert code in allowed, f"exit {code} after {signal.Signals(case.sig).name}:\n{log}"
    return landed


def resume(case: Case, label: str = "resume") -> None:
    done = subprocess.run(case.search_argv(), cwd=case.tmp, env=subprocess_env(**case.env), capture_output=True,
                          text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def sync(case: Case) -> None:
    done = subprocess.run([*AUTOTUNE, "sync", "--study", case.study, "--tracking-uri", case.tracking_uri], cwd=case.tmp,
                          env=subprocess_env(), capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr


# -- what the study holds ------------------------------------------------------------------------
def trials(case: Case) -> list[dict]:
    """Every trial of the study: number, state, whether it has a result, and its owner."""
    if not case.storage.is_file():
        return []
    connection = sqlite3.connect(f"file:{case.storage}?mode=ro", uri=True, timeout=60)
    try:
        rows = connection.execute("SELECT t.trial_id, t.number, t.state FROM trials t JOIN studies s "
                                  "ON s.study_id = t.study_id WHERE s.study_name = ?", (case.study,)).fetchall()
        attrs = connection.execute("SELECT trial_id, key, value_json FROM trial_user_attributes").fetchall()
    finally:
        connection.close()
    by_id: dict[int, dict[str, object]] = {}
    for trial_id, key, value in attrs:
        by_id.setdefault(trial_id, {})[key] = json.loads(value)
    return [{"number": number, "state": state, "result": by_id.get(tid, {}).get("autotune.result"),
             "config": by_id.get(tid, {}).get("autotune.config"), "owner": by_id.get(tid, {}).get("autotune.owner")}
            for tid, number, state in rows]


def finished_results(case: Case) -> dict[int, tuple[str, str]]:
    """{number: (stored result+config JSON, result.json text)} of every finished trial with a result."""
    out = {}
    for t in trials(case):
        if t["state"] in ("COMPLETE", "FAIL") and t["result"] is not None:
            path = case.tmp / "runs" / case.study / "trials" / str(t["number"]) / "result.json"
            text = path.read_text() if path.is_file() else ""
            out[t["number"]] = (json.dumps([t["result"], t["config"]], sort_keys=True), text)
    return out


def live_processes(root: Path) -> list[str]:
    """Processes (not zombies) working under `root`: the searches' trials and controllers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd == str(root) or cwd.startswith(f"{root}/")) and owner.pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def wait_no_processes(root: Path, timeout_s: float = _ORPHAN_WAIT_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := live_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# -- the invariants ------------------------------------------------------------------------------
def check_after_stop(case: Case, before: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """After a stopped search: no process left, no RUNNING trial with a live owner, results kept."""
    assert wait_no_processes(case.tmp) == [], "processes outlived their controller"
    for t in trials(case):
        if t["state"] == "RUNNING":
            # only a SIGKILLed controller leaves one, and then its owner is dead (the resume fails it)
            assert case.sig == signal.SIGKILL, f"trial {t['number']} RUNNING after {signal.Signals(case.sig).name}"
            assert t["owner"] is None or owner.is_dead(t["owner"]), t
    return check_results_kept(case, before)


def check_results_kept(case: Case, before: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    now = finished_results(case)
    for number, recorded in before.items():
        assert now.get(number) == recorded, f"trial {number}'s result changed"
    return now


def check_after_resume(case: Case, before: dict[int, tuple[str, str]], syncs: int = 1) -> None:
    """After the final resume (and `syncs` syncs): N results, nothing RUNNING, no process, one run per trial."""
    all_trials = trials(case)
    assert [t["number"] for t in all_trials if t["state"] == "RUNNING"] == []
    with_result = sorted(t["number"] for t in all_trials if t["result"] is not None)
    assert len(with_result) == case.n_trials, all_trials
    assert wait_no_processes(case.tmp) == []
    check_results_kept(case, before)
    if case.tracking:
        for _ in range(syncs):
            sync(case)
        assert mlflow_trial_runs(case) == {n: 1 for n in with_result}
        assert "RUNNING" not in mlflow_parent_states(case)


def mlflow_trial_runs(case: Case) -> dict[int, int]:
    """{trial number: how many MLflow child runs log it} for the case's study."""
    rows = _mlflow(case, "SELECT n.value, COUNT(*) FROM tags n JOIN tags s ON s.run_uuid = n.run_uuid "
                         "JOIN runs r ON r.run_uuid = n.run_uuid WHERE n.key = 'autotune.trial_number' "
                         "AND s.key = 'autotune.study' AND s.value = ? AND r.lifecycle_stage = 'active' "
                         "GROUP BY n.value")
    return {int(number): count for number, count in rows}


def mlflow_parent_states(case: Case) -> list[str]:
    rows = _mlflow(case, "SELECT r.status FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid JOIN tags s "
                         "ON s.run_uuid = r.run_uuid WHERE k.key = 'autotune.kind' AND k.value = 'search' "
                         "AND s.key = 'autotune.study' AND s.value = ?")
    return [status for (status,) in rows]


def _mlflow(case: Case, query: str) -> list[tuple]:
    connection = sqlite3.connect(f"file:{case.tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=60)
    try:
        return connection.execute(query, (case.study,)).fetchall()
    finally:
        connection.close()


def run_case(case: Case, stops: int, max_delay_s: float, syncs: int = 1) -> Case:
    """Drive one study through `stops` random stops, then resume it to the end; check after each."""
    rng = random.Random(case.seed)
    before: dict[int, tuple[str, str]] = {}
    for i in range(stops):
        stop_at_random(case, rng, max_delay_s, f"stop{i}")
        before = check_after_stop(case, before)
    resume(case)
    check_after_resume(case, before, syncs)
    return case
