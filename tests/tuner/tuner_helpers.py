"""Shared pieces for the tuner tests: the fake trial command and a small search space."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from autotune.tuner.launcher import Launcher
from autotune.tuner.space import SearchSpace, load_space

FAKE_TRIAL = Path(__file__).with_name("fake_trial.py")
FAKE_COMMAND = (sys.executable, str(FAKE_TRIAL))
FAKE_REWARD_COMMAND = (sys.executable, str(FAKE_TRIAL.with_name("fake_reward.py")))
REPO = Path(__file__).resolve().parents[2]
CI_TINY = REPO / "search_spaces" / "ci-tiny.yaml"
# Between the fake trial's cheapest config (about 17 MiB) and its AdamW baseline (27.5 MiB, in actor_train).
BUDGET_GB = 0.025


def fake_launcher(timeout_s: float | None = 30.0) -> Launcher:
    """Trials, plans and reward runs all by the stand-ins (a plan is a fake trial's result)."""
    return Launcher(trial_command=FAKE_COMMAND, plan_command=FAKE_COMMAND, reward_command=FAKE_REWARD_COMMAND,
                    timeout_s=timeout_s)


def ci_space() -> SearchSpace:
    return load_space(CI_TINY)


def search_cmd(study: str, n: int, storage: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "autotune", "search", "--model", "llama-tiny", "--space", str(CI_TINY),
           "--trials", str(n), "--study", study, "--budget-gb", str(BUDGET_GB), "--heartbeat", "1",
           "--no-tracking", "--no-timeline", "--seed", "0", "--trial-command", " ".join(FAKE_COMMAND),
           "--plan-command", " ".join(FAKE_COMMAND), "--reward-command", " ".join(FAKE_REWARD_COMMAND)]
    return cmd + (["--storage", storage] if storage else [])


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **extra}


def result_count(path: Path) -> int:
    return len(list(path.glob("runs/*/trials/*/result.json")))
