"""Every exported DeepSpeed JSON drives a real engine (CPU, gloo, one process), FRUGAL as the client optimizer.

Also the round trip: the JSON equals the config a trial passes to `deepspeed.initialize`, and
`export --format yaml` fed to `autotune trial --config` keeps the config hash.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune.export import export_config
from tests.export.configs import CASES, GOLDEN_CONFIG, ZERO3_FRUGAL_CONFIG
from tests.net import free_port

pytestmark = pytest.mark.slow   # DeepSpeed engines in subprocesses; the first run JIT-compiles shm_comm (~30 s)
ROOT = Path(__file__).resolve().parents[2]

ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys, torch, deepspeed
    from autotune.config import TrialConfig
    from autotune.export import export_config
    from autotune.export.features import frugal_models
    from autotune.optim import build_optimizer
    from autotune.rlhf.models import build_policy, build_value_model
    from tests.export.targets import optimizer_state_summary

    cfg = TrialConfig.load(sys.argv[1])
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    for name, text in export_config(cfg, "deepspeed").files.items():
        if not name.endswith(".json") or name == "ds_config_reference.json":
            continue
        model = "critic" if name == "ds_config_critic.json" else "actor"
        net = (build_policy if model == "actor" else build_value_model)(cfg.model.actor, dtype=cfg.model.dtype)
        # With FRUGAL the JSON carries no optimizer: pass it as a client optimizer, as the README says.
        lr = cfg.workload.actor_lr if model == "actor" else cfg.workload.critic_lr
        client = build_optimizer(net, cfg.optimizer, lr=lr, frugal=True) if model in frugal_models(cfg) else None
        engine, optimizer, _, _ = deepspeed.initialize(model=net, optimizer=client, config=json.loads(text))
        ids = torch.randint(0, 512, (2, 8))
        out = engine(ids)
        loss = (out.logits if model == "actor" else out).float().mean()
        engine.backward(loss)
        engine.step()
        summary = optimizer_state_summary(optimizer)
        print("RESULT", json.dumps({"file": name, "stage": engine.zero_optimization_stage(),
                                    "wrapper": type(optimizer).__name__, "offload": engine.zero_cpu_offload(),
                                    **summary}))
""")



def _ds_env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}


def _results(stdout: str) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("RESULT ")]


# fp16 is left out: DeepSpeed's CPU accelerator has no fp16 support (the JSON itself is parsed in
# test_exporters.py::test_deepspeed_json_is_accepted_by_deepspeed).
ENGINE_CASES = [name for name, cfg in CASES.items() if cfg.model.dtype != "float16"]


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_every_exported_json_initializes_and_steps_a_deepspeed_engine(case: str, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    cfg = CASES[case]
    cfg.dump(tmp_path / "c.yaml")
    proc = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, str(tmp_path / "c.yaml")], env=_ds_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["file"]: r for r in _results(proc.stdout)}
    expected = {n for n in export_config(cfg, "deepspeed").files if n.endswith(".json")} - {"ds_config_reference.json"}
    assert set(results) == expected
    for name, r in results.items():
        model = "critic" if "critic" in name else "actor"
        assert r["stage"] == cfg.memory.zero_stage
        assert r["offload"] == cfg.memory.offload_optimizer
        frugal = model in ("actor",) and cfg.optimizer.name == "frugal" or model == "critic" and (
            cfg.optimizer.critic == "frugal" and cfg.algorithm == "ppo")
        assert r["optimizer"] == ("FRUGAL" if frugal else "AdamW"), r
        assert r["tensors_with_state"] > 0, r                # the step happened
        if frugal:
            assert r["state_free_tensors"] > 0 and r["state_free_with_state"] == 0, r
    print(case, json.dumps(results))      # the figures the note quotes (-s to see them)


ROUND_TRIP_SCRIPT = textwrap.dedent("""
    import json, sys, deepspeed
    passed = []
    real = deepspeed.initialize
    def initialize(*args, **kwargs):
        passed.append(kwargs["config"])
        return real(*args, **kwargs)
    deepspeed.initialize = initialize
    from autotune.cli import main
    try:
        main(["trial", "--config", sys.argv[1], "--out", sys.argv[2]])
    except SystemExit as exc:
        code = exc.code
    json.dump(passed, open(sys.argv[3], "w"))
""")


@pytest.mark.parametrize("cfg", [GOLDEN_CONFIG, ZERO3_FRUGAL_CONFIG], ids=["golden", "zero3-offload-frugal"])
def test_exported_yaml_runs_as_a_trial_whose_deepspeed_config_is_the_exported_json(cfg, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    cfg = cfg.replace(**{"workload.steps": 1, "workload.ppo_epochs": 1})
    export_config(cfg, "yaml").write(tmp_path / "yaml")
    export_config(cfg, "deepspeed").write(tmp_path / "ds")
    proc = subprocess.run([sys.executable, "-c", ROUND_TRIP_SCRIPT, str(tmp_path / "yaml" / "trial.yaml"),
                           str(tmp_path / "result.json"), str(tmp_path / "passed.json")],
                          env=_ds_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "result.json").is_file(), proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok", result.get("message")
    assert result["config_hash"] == cfg.config_hash()
    passed = json.loads((tmp_path / "passed.json").read_text())
    exported = [json.loads((tmp_path / "ds" / name).read_text())
                for name in ("ds_config.json", "ds_config_critic.json")]
    # The only addition: an AdamW model's JSON names the optimizer the trial passed as a client.
    for data in exported:
        data.pop("optimizer", None)
    assert passed == exported
