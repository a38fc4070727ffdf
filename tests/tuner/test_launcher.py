"""The launcher: one subprocess per trial; OOM, crash and timeout come back as results, never raised."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import StorageError
from autotune.memory.report import GiB
from autotune.tuner.launcher import Launcher, prescreen, run_trial, trial_env
from tests.tuner.tuner_helpers import FAKE_COMMAND, fake_launcher, subprocess_env

CFG = TrialConfig()


@pytest.mark.parametrize("user_var", ["PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"])
def test_env_pins_one_gpu_and_this_trials_allocator(monkeypatch: pytest.MonkeyPatch, user_var: str) -> None:
    monkeypatch.setenv(user_var, "max_split_size_mb:64")
    cfg = CFG.replace(**{"memory.allocator.expandable_segments": True})
    env = trial_env(cfg, "3")
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    # PyTorch reads PYTORCH_ALLOC_CONF first, older versions only PYTORCH_CUDA_ALLOC_CONF: both carry it
    assert env["PYTORCH_ALLOC_CONF"] == env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    # the user's global setting, under either name, must not leak into a trial that asks for the defaults
    assert not {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"} & set(trial_env(CFG, None))
    assert trial_env(CFG, None)["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_trials_run_single_threaded_unless_the_user_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert trial_env(CFG, None)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in trial_env(CFG.replace(device="cuda"), "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert trial_env(CFG, None)["OMP_NUM_THREADS"] == "4"


def test_child_sees_the_environment(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys, json\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                     "open(out + '.env', 'w').write(json.dumps({k: os.environ.get(k) for k in "
                     "('CUDA_VISIBLE_DEVICES', 'PYTORCH_ALLOC_CONF', 'PYTORCH_CUDA_ALLOC_CONF')}))\n")
    cfg = CFG.replace(**{"memory.allocator.max_split_size_mb": 128})
    launched = run_trial(cfg, tmp_path / "t", launcher=Launcher(trial_command=(sys.executable, str(probe))), gpu="1")
    seen = json.loads((tmp_path / "t" / "result.json.env").read_text())
    assert seen == {"CUDA_VISIBLE_DEVICES": "1", "PYTORCH_ALLOC_CONF": "max_split_size_mb:128",
                    "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    assert launched.result.status == "error" and "no result file" in launched.result.message


def test_ok_and_oom_results_are_read_back(tmp_path: Path) -> None:
    ok = run_trial(CFG, tmp_path / "0", launcher=fake_launcher()).result
    assert ok.status == "ok" and ok.reward is not None
    assert TrialConfig.load(tmp_path / "0" / "trial.yaml") == CFG
    oom = run_trial(CFG.replace(device_memory_gb=0.001), tmp_path / "1", launcher=fake_launcher()).result
    assert oom.status == "oom" and oom.failed_phase is not None


def test_crash_is_an_error_with_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "7:raise")
    result = run_trial(CFG, tmp_path / "7", launcher=fake_launcher()).result
    assert result.status == "error" and "crashed on purpose" in result.message


def test_timeout_kills_the_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "4:sleep")
    launched = run_trial(CFG, tmp_path / "4", launcher=fake_launcher(timeout_s=2.0))
    assert launched.result.status == "timeout" and "2 s" in launched.result.message
    assert launched.subprocess_s < 10


def test_cancel_ends_the_running_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRIAL_SCRIPT", "5:sleep")
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    launched = run_trial(CFG, tmp_path / "5", launcher=fake_launcher(timeout_s=60), cancel=cancel)
    assert launched.cancelled and launched.subprocess_s < 10


def test_prescreen_rejects_a_predicted_overrun(tmp_path: Path) -> None:
    # the fake trial doubles as a planner: its AdamW baseline peaks at 27.5 MiB
    launcher = Launcher(plan_command=FAKE_COMMAND)
    screened = prescreen(CFG, tmp_path / "p", launcher=launcher, budget_gb=20 * (1 << 20) / GiB)
    assert screened is not None and screened.status == "prescreened" and "exceeds" in screened.message
    assert prescreen(CFG, tmp_path / "q", launcher=launcher, budget_gb=1.0) is None


def _script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text(body)
    return (sys.executable, str(path))


def test_nothing_the_trial_started_outlives_it(tmp_path: Path) -> None:
    # the trial leaves a grandchild behind in its process group, as a crashed worker pool might
    command = _script(tmp_path, "leaky.py", "import subprocess, sys\n"
                      "child = subprocess.Popen(['sleep', '60'])\n"
                      f"open({str(tmp_path / 'grandchild.pid')!r}, 'w').write(str(child.pid))\n")
    launched = run_trial(TrialConfig(), tmp_path / "t", launcher=Launcher(trial_command=command, timeout_s=30))
    assert launched.result.status == "error"
    pid = int((tmp_path / "grandchild.pid").read_text())
    assert not _alive_after(pid, 2.0), "the trial's grandchild outlived it"


def _alive_after(pid: int, wait_s: float) -> bool:
    from autotune.owner import pid_alive

    deadline = time.monotonic() + wait_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid_alive(pid)


def test_a_trial_ends_itself_when_its_controller_is_killed(tmp_path: Path) -> None:
    trial = _script(tmp_path, "trial.py", "import os, sys, time\n"
                    "from autotune.tuner.launcher import watch_controller\n"
                    "watch_controller()\n"
                    f"open({str(tmp_path / 'trial.pid')!r}, 'w').write(str(os.getpid()))\n"
                    "time.sleep(60)\n")
    controller = _script(tmp_path, "controller.py", "from pathlib import Path\n"
                         "from autotune.config import TrialConfig\n"
                         "from autotune.tuner.launcher import Launcher, run_trial\n"
                         f"run_trial(TrialConfig(), Path({str(tmp_path / 't')!r}), "
                         f"launcher=Launcher(trial_command={trial!r}))\n")
    proc = subprocess.Popen(controller, env=subprocess_env())
    pid_file = tmp_path / "trial.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _alive_after(int(pid_file.read_text()), 5.0), "the trial outlived its controller"


def test_a_non_utf8_result_is_an_error_result(tmp_path: Path) -> None:
    command = _script(tmp_path, "latin.py", "import sys\n"
                      "open(sys.argv[sys.argv.index('--out') + 1], 'wb').write(b'{\"status\": \"ok\\xe9\"}')\n")
    launched = run_trial(TrialConfig(), tmp_path / "t", launcher=Launcher(trial_command=command, timeout_s=30))
    assert launched.result.status == "error" and "not UTF-8" in launched.result.message


def test_an_unwritable_trial_folder_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "trials").write_text("a file where the folder should be\n")
    with pytest.raises(StorageError, match="cannot write .*run the same command again"):
        run_trial(TrialConfig(), tmp_path / "trials" / "0", launcher=Launcher(trial_command=("true",)))


@pytest.mark.parametrize(("sig", "expected"), [
    ("SIGKILL", "killed by SIGKILL from outside autotune"),   # the kernel's OOM count rose by nothing
    ("SIGSEGV", "killed by SIGSEGV"),
])
def test_a_trial_killed_by_a_signal_is_reported_by_name(tmp_path: Path, sig: str, expected: str) -> None:
    suicide = (sys.executable, "-c", f"import os, signal; print('loading'); os.kill(os.getpid(), signal.{sig})")
    launched = run_trial(CFG, tmp_path / "k", launcher=Launcher(trial_command=suicide, timeout_s=30))
    message = launched.result.message
    assert launched.result.status == "error" and message.startswith(expected), message
    assert "exit code" not in message and "loading" in message   # the log tail still comes along
    if sig == "SIGKILL":
        assert re.search(r"the host had \d+\.\d GiB available", message)
