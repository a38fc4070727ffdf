"""Trials over several ranks: the rank-0 plan against real DeepSpeed at world size 2, and the launcher's torchrun path.

The slow tests start real processes: `autotune plan` (one process, fake process group) and
`autotune trial` under torchrun with two gloo ranks on the CPU.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.memory.report import MemoryReport, PhaseMemory
from autotune.result import TrialResult, combine_ranks, rank_result_path
from autotune.tuner.controller import gpu_groups
from autotune.tuner.launcher import Launcher, run_trial, trial_argv
from autotune.tuner.study import load_records
from tests.tuner.tuner_helpers import CI_TINY, subprocess_env

# One PPO iteration of llama-tiny, small enough that model state (weights, grads, AdamW moments)
# is most of each phase's memory, so what ZeRO shards shows.
TINY = {"workload.batch_size": 4, "workload.prompt_len": 4, "workload.gen_len": 8, "workload.steps": 1,
        "workload.micro_batch": 4, "workload.ppo_epochs": 1, "world_size": 2}
TOLERANCE = 0.05


def _report(reserved_mib: int) -> MemoryReport:
    phase = PhaseMemory(name="actor_train", peak_allocated_bytes=reserved_mib << 19,
                        peak_reserved_bytes=reserved_mib << 20,
                        end_allocated_bytes=0, end_reserved_bytes=0, wall_time_s=0.1)
    return MemoryReport(backend="cpu", phases=(phase,), peak_allocated_bytes=reserved_mib << 19,
                        peak_reserved_bytes=reserved_mib << 20)


def _rank(rank: int, status: str = "ok", reserved_mib: int = 10, message: str = "") -> TrialResult:
    return TrialResult(config_hash="h", status=status, backend="cpu", memory=_report(reserved_mib), message=message,
                       reward=0.5 if rank == 0 else 0.1, world_size=2, rank=rank)


def test_combined_memory_is_the_largest_rank_and_keeps_every_rank():
    combined = combine_ranks({0: _rank(0, reserved_mib=10), 1: _rank(1, reserved_mib=12)}, 2)
    assert combined.ok and combined.world_size == 2 and combined.reward == 0.5   # rank 0's reward
    assert combined.memory.peak_reserved_bytes == 12 << 20
    assert [m.peak_reserved_bytes for m in combined.rank_memory] == [10 << 20, 12 << 20]


def test_a_failed_or_missing_rank_fails_the_trial_with_its_reason():
    failed = combine_ranks({0: _rank(0), 1: _rank(1, status="oom", message="simulated OOM")}, 2)
    assert (failed.status, failed.message) == ("oom", "rank 1: simulated OOM")
    missing = combine_ranks({0: _rank(0)}, 2)
    assert missing.status == "error" and "rank 1 ended without a result" in missing.message
    assert missing.rank_memory[1] is None


def test_world_size_is_validated():
    with pytest.raises(ConfigError, match="world_size"):
        TrialConfig().replace(world_size=0)
    assert TrialConfig().replace(world_size=2).uses_deepspeed and not TrialConfig().uses_deepspeed


def test_gpus_split_into_groups_per_trial():
    assert gpu_groups(("0", "1", "2", "3"), 2) == ("0,1", "2,3")
    assert gpu_groups(("0", "1"), 1) == ("0", "1")
    with pytest.raises(ConfigError, match="gpus-per-trial"):
        gpu_groups(("0", "1", "2"), 2)


def test_several_ranks_start_through_torchrun():
    launcher = Launcher(trial_command=("prog", "trial"))
    assert trial_argv(TrialConfig(), launcher) == ["prog", "trial"]
    argv = trial_argv(TrialConfig().replace(world_size=2), launcher)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and argv[-2:] == ["prog", "trial"]
    assert argv[argv.index("--nproc-per-node") + 1] == "2"


# A stand-in trial for torchrun: rank 1 fails (with a reason, or dies without one); rank 0 waits
# for it the way the real trial command does. Rank 1 fails only once rank 0 has written its own
# result, as a real rank fails mid-run: dying at start-up would race rank 0's imports, and torchrun
# could end rank 0 before it wrote anything (seen on a loaded CI box).
DYING_RANK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from autotune.result import TrialResult, rank_result_path
    from autotune.rlhf.trial import write_result, write_trial_outputs
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    rank, how = int(os.environ["RANK"]), os.environ["HOW"]
    result = TrialResult(config_hash="h", status="ok", backend="cpu", world_size=2, rank=rank)
    if rank == 1:
        while not rank_result_path(out, 0).is_file():
            time.sleep(0.05)
        if how == "reason":
            write_result(TrialResult(config_hash="h", status="error", backend="cpu", message="boom",
                                     world_size=2, rank=1), rank_result_path(out, 1))
        os._exit(1)
    write_trial_outputs(result, out)
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["reason", "killed"])
def test_a_rank_that_dies_fails_the_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str):
    script = tmp_path / "dying.py"
    script.write_text(DYING_RANK)
    for key, value in subprocess_env(HOW=how).items():
        monkeypatch.setenv(key, value)
    launched = run_trial(TrialConfig().replace(world_size=2), tmp_path / "trial",
                         launcher=Launcher(trial_command=(sys.executable, str(script)), timeout_s=120))
    result = launched.result
    assert result.status == "error" and result.world_size == 2
    assert result.message == ("rank 1: boom" if how == "reason" else
                              "rank 1 ended without a result (killed, or ended by its launcher)")


def _plan(cfg: TrialConfig, tmp_path: Path) -> TrialResult:
    """`autotune plan` in its own process: DeepSpeed sets up torch.distributed for the whole process."""
    cfg.dump(tmp_path / "plan.yaml")
    done = subprocess.run([sys.executable, "-m", "autotune", "plan", "--config", str(tmp_path / "plan.yaml"),
                           "--out", str(tmp_path / "plan.json")], env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return TrialResult.load(tmp_path / "plan.json")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_rank0_plan_matches_real_deepspeed_at_world_size_2(tmp_path: Path, stage: int):
    """Plan (fake tensors, fake process group) vs real DeepSpeed on two gloo ranks: each phase within 5%."""
    cfg = TrialConfig().replace(**TINY, **{"memory.zero_stage": stage})
    plan = _plan(cfg, tmp_path)
    launched = run_trial(cfg, tmp_path / "real", launcher=Launcher(timeout_s=900))
    real = launched.result
    assert real.status == "ok", real.message
    assert real.world_size == 2 and len(real.rank_memory) == 2
    rank0 = TrialResult.load(rank_result_path(tmp_path / "real" / "result.json", 0)).memory
    rows = []
    for predicted in plan.memory.phases:
        measured = rank0.phase(predicted.name)
        for field in ("peak_allocated_bytes", "peak_reserved_bytes"):
            p, m = getattr(predicted, field), getattr(measured, field)
            rows.append((predicted.name, field, p, m, p / m - 1))
    print(f"\nZeRO-{stage}, world size 2, rank 0: phase, figure, plan bytes, real bytes, plan/real - 1")
    print("\n".join(f"{n} {f} {p} {m} {e:+.4f}" for n, f, p, m, e in rows))
    assert all(abs(err) <= TOLERANCE for *_, err in rows), rows


@pytest.mark.slow
def test_sharding_lowers_the_rank0_plan():
    """ZeRO-3 over two ranks holds half the trained models' state: the actor update's allocated peak drops."""
    script = textwrap.dedent("""
        import sys
        from autotune.config import TrialConfig
        from autotune.rlhf.trial import plan_trial
        cfg = TrialConfig().replace(**{**%r, "world_size": int(sys.argv[1]), "memory.zero_stage": 3})
        print(plan_trial(cfg).memory.phase("actor_train").peak_allocated_bytes)
    """ % TINY)  # noqa: UP031 - the script's own braces would need escaping for str.format
    peaks = {}
    for ws in (1, 2):
        done = subprocess.run([sys.executable, "-c", script, str(ws)], env=subprocess_env(), capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[ws] = int(done.stdout.split()[-1])
    assert peaks[2] < 0.9 * peaks[1]


@pytest.mark.slow
def test_plan_runs_deepspeed_offload_and_says_what_it_cannot_see():
    """ZeRO-2 with optimizer offload, planned: DeepSpeed's host-side state leaves the simulated device."""
    script = textwrap.dedent("""
        from autotune.config import TrialConfig
        from autotune.rlhf.trial import plan_trial
        base = TrialConfig().replace(**{**%r, "memory.zero_stage": 2})
        for cfg in (base, base.replace(**{"memory.offload_optimizer": True})):
            r = plan_trial(cfg)
            print(r.status, r.memory.phase("generation").peak_allocated_bytes, "|", r.message)
    """ % TINY)  # noqa: UP031 - the script's own braces would need escaping for str.format
    done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (plain, offload) = [line.split(" | ") for line in done.stdout.strip().splitlines()[-2:]]
    assert plain[0].startswith("ok ") and offload[0].startswith("ok ")
    assert int(offload[0].split()[1]) < int(plain[0].split()[1])
    assert "rank 0 of 2 planned through DeepSpeed's own ZeRO-2 code" in plain[1] and "hybrid engine" in plain[1]


@pytest.mark.slow
def test_search_runs_a_two_rank_cpu_trial_through_torchrun(tmp_path: Path):
    """`search --world-size 2`: one trial, two gloo ranks started by torchrun, recorded with each rank's memory."""
    done = subprocess.run([sys.executable, "-m", "autotune", "search", "--model", "llama-tiny", "--space", str(CI_TINY),
                           "--trials", "1", "--study", "ws2", "--world-size", "2", "--no-tracking", "--no-timeline",
                           "--budget-gb", "1", "--seed", "0"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = load_records("ws2", f"sqlite:///{tmp_path}/runs/ws2/optuna.db")
    result = record.result
    assert result.status == "ok" and result.world_size == 2 and record.config.world_size == 2
    assert len(result.rank_memory) == 2 and all(m is not None for m in result.rank_memory)
    assert result.memory.peak_reserved_bytes == max(m.peak_reserved_bytes for m in result.rank_memory)
    assert record.objectives["peak_reserved_gb"] == pytest.approx(result.memory.peak_reserved_gb)
    trial_dir = tmp_path / "runs" / "ws2" / "trials" / "0"
    assert all(rank_result_path(trial_dir / "result.json", r).is_file() for r in (0, 1))   # two processes ran
