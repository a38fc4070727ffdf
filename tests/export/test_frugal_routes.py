"""The README's FRUGAL route per stack, executed where the stack installs, and TRL training from the export.

Each route prints the optimizer it ended up with and its state after a step: FRUGAL, with no state
on the state-free parameters. DeepSpeed's route runs in test_deepspeed_engine.py and verl's in
test_targets.py. DeepSpeed-Chat is not on the package index, so its snippet is not executed here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.export import export_config
from tests.export.configs import CASES, GOLDEN_CONFIG, ZERO3_FRUGAL_CONFIG
from tests.export.test_deepspeed_engine import ROOT, _ds_env, _results
from tests.net import free_port

pytestmark = pytest.mark.slow   # tiny models, but DeepSpeed engines and a GRPO trainer in subprocesses
SCRIPTS = Path(__file__).parent / "scripts"


def _accelerate_env(folder: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file accelerate.yaml` gives the training process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_simple_launcher_cmd_env

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = launch_command_parser().parse_args(["--config_file", "accelerate.yaml", "train.py"])
        args, defaults, mp_from_config_flag = _validate_launch_command(args)
        if not args.use_deepspeed:
            return prepare_simple_launcher_cmd_env(args)[1]
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config_flag else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("case", ["golden", "zero3-offload-frugal", "stage0-fp32-adamw"])
def test_grpo_trainer_runs_two_steps_from_the_trl_export(case: str, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    cfg = CASES[case]
    export_config(cfg, "trl").write(tmp_path)
    # accelerate's launcher env is a copy of os.environ: this test's own port and import path go last
    env = {**_ds_env(), **_accelerate_env(tmp_path), "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "trl_grpo.py"), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _results(proc.stdout)[-1]
    print(case, json.dumps(result))
    assert result["steps"] == 2
    assert result["deepspeed"] == cfg.memory.needs_deepspeed
    assert result["optimizer"] == ("FRUGAL" if cfg.optimizer.name == "frugal" else "AdamW")
    assert result["tensors_with_state"] > 0
    if cfg.optimizer.name == "frugal":
        assert result["state_free_tensors"] > 0 and result["state_free_with_state"] == 0


@pytest.mark.parametrize("cfg", [GOLDEN_CONFIG, ZERO3_FRUGAL_CONFIG], ids=["golden", "zero3-offload-frugal"])
def test_openrlhf_strategy_builds_frugal_through_the_hook(cfg, tmp_path: Path) -> None:
    pytest.importorskip("openrlhf")
    cfg = cfg.replace(**{"model.dtype": "bfloat16", "optimizer.partition.placement": "top"})
    export_config(cfg, "openrlhf").write(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPTS / "openrlhf_frugal.py"), str(tmp_path)], env=_ds_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _results(proc.stdout)[-1]
    print(json.dumps(result))
    assert (result["stage"], result["offload"], result["optimizer"]) == (cfg.memory.zero_stage, True, "FRUGAL")
    assert result["tensors_with_state"] > 0                     # the step happened
    assert result["state_free_tensors"] > 0 and result["state_free_with_state"] == 0
