"""`autotune trial` and `autotune plan` through the command line: files, exit codes, messages."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from autotune.cli import cli, main
from autotune.config import PHASES, TrialConfig
from autotune.result import TrialResult

SMALL = {"workload": {"batch_size": 4, "prompt_len": 4, "gen_len": 8, "steps": 2, "micro_batch": 4}}



def write_config(tmp_path, data: dict) -> str:
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_trial_writes_its_result_and_reports_progress(tmp_path):
    config = write_config(tmp_path, SMALL)
    out = tmp_path / "result.json"
    run = CliRunner().invoke(cli, ["trial", "--config", config, "--out", str(out),
                                   "--timeline", str(tmp_path / "timeline.png")])
    assert run.exit_code == 0, run.output
    result = TrialResult.load(out)
    assert result.status == "ok"
    assert result.config_hash == TrialConfig.load(config).config_hash()
    assert len(result.reward_curve) == 2
    assert [line.split()[1] for line in run.stderr.splitlines() if line.startswith("step ")] == ["1/2", "2/2"]
    assert (tmp_path / "timeline.png").stat().st_size > 0


def test_an_oom_trial_exits_3_with_its_result(tmp_path):
    config = write_config(tmp_path, {**SMALL, "device_memory_gb": 0.01})
    out = tmp_path / "result.json"
    run = CliRunner().invoke(cli, ["trial", "--config", config, "--out", str(out)])
    assert run.exit_code == 3
    assert TrialResult.load(out).status == "oom"
    assert run.stderr.strip().splitlines()[-1].startswith("error: out of memory")


@pytest.mark.parametrize(("text", "key_path"), [
    ("memory:\n  empty_cache_after: [generation]\n  bogus_knob: 1\n", "memory.bogus_knob: unknown key"),
    ("workload:\n  steps: many\n", "workload.steps: expected an integer"),
    ("memory:\n  zero_stage: 5\n", "memory.zero_stage must be 0, 1, 2 or 3"),
])
def test_a_bad_config_is_one_error_line_before_anything_is_built(tmp_path, capsys, text, key_path):
    config = tmp_path / "trial.yaml"
    config.write_text(text)
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["trial", "--config", str(config), "--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key_path in err[0]
    assert not out.exists()


def test_a_missing_model_path_is_a_clear_error_from_a_subprocess(tmp_path):
    missing = tmp_path / "no-such-model"
    config = write_config(tmp_path, {**SMALL, "model": {"actor": str(missing)}})
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "autotune", "trial", "--config", config, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last and "does not exist" in last
    assert json.loads(out.read_text())["status"] == "error"


def test_plan_prints_each_phase_and_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    run = CliRunner().invoke(cli, ["plan", "--model", "llama-tiny", "--algorithm", "grpo", "--out", str(out)])
    assert run.exit_code == 0, run.output
    result = TrialResult.load(out)
    assert result.backend == "fake" and result.reward is None
    names = [p.name for p in result.memory.phases]
    assert names == list(PHASES[:3])
    for name in names:
        assert name in run.stdout
    assert "critic_train" not in run.stdout
    assert "Assumes a single CUDA stream" in run.stdout


def test_plan_needs_a_model_or_a_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan"])
    assert exit_info.value.code == 1
    assert "give --model or --config" in capsys.readouterr().err
