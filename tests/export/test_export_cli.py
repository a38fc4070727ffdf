"""`autotune export` and `autotune sync` through the real entry point (message and exit code)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from autotune.cli import main
from autotune.config import TrialConfig
from tests.export.study_factory import make_record, make_study, tiny_study


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)   # runs/<study>/ is relative to the working directory
    return tmp_path


def test_export_a_config_file_prints_files_and_warnings(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = TrialConfig().replace(**{"memory.zero_stage": 3, "memory.static_kv_cache": True})
    cfg.dump(in_tmp / "c.yaml")
    code, out, err = run_cli(["export", "--config", "c.yaml", "--format", "openrlhf"], capsys)
    assert code == 0
    assert "# ---- openrlhf.args" in out and "--ds.zero_stage 3" in out
    assert "warning: memory.static_kv_cache=true" in err


def test_export_recommended_trial_of_a_study_to_a_folder(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    records = tiny_study()
    make_study("s", "sqlite:///runs/s/optuna.db", records)
    code, out, _ = run_cli(["export", "--study", "s", "--format", "deepspeed", "--out", "exported"], capsys)
    assert code == 0, out
    data = json.loads((in_tmp / "exported" / "ds_config.json").read_text())
    # max-reward picks trial 0 (reward 0.5, the best of the feasible ones), whose zero_stage is 0 % 3
    assert data["zero_optimization"]["stage"] == records[0].config.memory.zero_stage


def test_export_prefers_the_saved_recommendation(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_study("s", "sqlite:///runs/s/optuna.db", tiny_study())
    TrialConfig().replace(**{"memory.zero_stage": 2}).dump(in_tmp / "runs" / "s" / "recommended.yaml")
    code, out, _ = run_cli(["export", "--study", "s", "--format", "openrlhf"], capsys)
    assert code == 0 and "--ds.zero_stage 2" in out


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_saved_recommendation_falls_back_to_the_storage(in_tmp: Path, capsys: pytest.CaptureFixture,
                                                                  text: str) -> None:
    records = tiny_study()
    # the pick (trial 0) differs from the defaults, so an export of the defaults cannot pass
    records[0] = dataclasses.replace(records[0], config=records[0].config.replace(**{"memory.zero_stage": 2}))
    make_study("s", "sqlite:///runs/s/optuna.db", records)
    (in_tmp / "runs" / "s" / "recommended.yaml").write_text(text)
    code, out, err = run_cli(["export", "--study", "s", "--format", "yaml"], capsys)
    assert code == 0, err
    assert "recommended.yaml is empty" in err
    exported = TrialConfig.from_dict(yaml.safe_load(out.split("\n", 1)[1]))
    assert exported == records[0].config != TrialConfig()      # the study's pick, not the defaults


def test_an_empty_config_file_is_an_error(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    (in_tmp / "empty.yaml").write_text("")
    code, out, err = run_cli(["export", "--config", "empty.yaml", "--format", "yaml"], capsys)
    assert code == 1 and out == ""
    assert "error: empty.yaml: empty config file" in err


def test_gpus_is_only_for_formats_with_global_batches(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    TrialConfig().dump(in_tmp / "c.yaml")
    code, out, _ = run_cli(["export", "--config", "c.yaml", "--format", "openrlhf", "--gpus", "4"], capsys)
    assert code == 0 and "--actor.num_gpus_per_node 4" in out and "--rollout.batch_size 32" in out
    code, _, err = run_cli(["export", "--config", "c.yaml", "--format", "deepspeed", "--gpus", "4"], capsys)
    assert code == 1 and "--gpus applies to --format openrlhf only" in err


def test_unknown_format_lists_valid_ones(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    TrialConfig().dump(in_tmp / "c.yaml")
    code, _, err = run_cli(["export", "--config", "c.yaml", "--format", "megatron"], capsys)
    assert code == 2
    assert "megatron" in err and "'deepspeed-chat'" in err and "'verl'" in err


def test_study_without_feasible_trial_says_so(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    failed = [make_record(0, reserved_gib=4.0, allocated_gib=4.0, reward=None, status="oom", feasible=False)]
    make_study("bad", "sqlite:///runs/bad/optuna.db", failed)
    code, _, err = run_cli(["export", "--study", "bad", "--format", "yaml"], capsys)
    assert code == 1 and "no feasible" in err


def test_missing_study_names_the_storage(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["export", "--study", "nope", "--format", "yaml"], capsys)
    assert code == 1 and "sqlite:///runs/nope/optuna.db" in err
    make_study("other", "sqlite:///shared.db", tiny_study()[:1])
    code, _, err = run_cli(["export", "--study", "nope", "--storage", "sqlite:///shared.db", "--format", "yaml"],
                           capsys)
    assert code == 1 and "sqlite:///shared.db" in err


def test_export_needs_exactly_one_source(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["export", "--format", "yaml"], capsys)
    assert code == 2 and "exactly one of --study or --config" in err


def test_sync_command_adds_then_adds_nothing(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("mlflow")
    make_study("s", "sqlite:///runs/s/optuna.db", tiny_study())
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    code, out, err = run_cli(["sync", "--study", "s", "--tracking-uri", uri], capsys)
    assert code == 0, err
    assert "s: 5 of 5 trials added" in out
    code, out, _ = run_cli(["sync", "--study", "s", "--tracking-uri", uri], capsys)
    assert code == 0 and "s: 0 of 5 trials added" in out


def test_export_storage_and_pareto_follow_the_policy_stored_in_the_study(in_tmp: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    import optuna

    from autotune.tuner.recommend import Policy, store_policy

    records = tiny_study()
    storage = "sqlite:///runs/s/optuna.db"
    make_study("s", storage, records)
    # min-memory at half the baseline's reward (0.5): trial 1 (1 GiB, reward 0.4) beats trial 0 (2 GiB)
    store_policy(optuna.load_study(study_name="s", storage=storage), Policy(name="min-memory", min_reward_ratio=0.5))
    code, out, err = run_cli(["export", "--study", "s", "--storage", storage, "--format", "yaml"], capsys)
    assert code == 0, err
    assert TrialConfig.from_dict(yaml.safe_load(out)).memory.zero_stage == records[1].config.memory.zero_stage == 1
    code, out, err = run_cli(["pareto", "--study", "s", "--storage", storage], capsys)
    assert code == 0 and "*1 " in out, err


def test_export_gpu_gb_writes_that_rows_config(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    def timed(number: int, reserved: float, step: float, reason: str | None = None):
        record = make_record(number, reserved_gib=reserved, allocated_gib=reserved * 0.9, reward=0.5, reason=reason)
        return dataclasses.replace(record, result=dataclasses.replace(record.result, step_time_s=step))

    # zero_stage = number % 3: the baseline (0, 46 GiB, fastest), #1 (30 GiB), #2 (20 GiB, slowest)
    make_study("g", "sqlite:///runs/g/optuna.db", [timed(0, 46.0, 1.0, "baseline"), timed(1, 30.0, 1.2),
                                                   timed(2, 20.0, 1.5)])
    for gb, stage in (("24", 2), ("40", 1), ("80", 0)):
        code, out, err = run_cli(["export", "--study", "g", "--gpu-gb", gb, "--format", "yaml"], capsys)
        assert code == 0, err
        assert TrialConfig.from_dict(yaml.safe_load(out)).memory.zero_stage == stage
    code, _, err = run_cli(["export", "--study", "g", "--gpu-gb", "16", "--format", "yaml"], capsys)
    assert code == 1 and "nothing in the space fits: the lowest peak is 20.0 GiB" in err
    code, out, err = run_cli(["pareto", "--study", "g", "--by-gpu"], capsys)
    assert code == 0 and "Per GPU size" in out and "none (baseline)" in out, err
