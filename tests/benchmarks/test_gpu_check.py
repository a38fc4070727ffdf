"""The GPU check (benchmarks/gpu_check.py) on the CPU: its pieces, its imports, and the whole dry run.

The figures in the trace and report tests are worked out by hand from the allocator's rules
(a request up to 1 MiB takes a 2 MiB segment, a request under 10 MiB a 20 MiB one).
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.replay import replay_snapshot, replay_snapshot_events
from autotune.memory.trace import ALLOC, EMPTY_CACHE, FREE, Trace
from benchmarks import gpu_check as gc, gpu_check_report as rep, gpu_check_trace as gt

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
# A real GPU run's gpu_check.json and snapshots, committed once a session with a GPU has run it.
GPU_FIXTURES = REPO / "tests" / "data" / "gpu_check"
# What the GPU image lacks (optuna, mlflow, deepspeed), and libraries it may lack that torch and
# transformers do not need.
BLOCKED = ("optuna", "mlflow", "deepspeed", "rich", "click", "matplotlib", "plotly")


def _trace(rows: list[tuple[int, int, int]]) -> Trace:
    return Trace.from_rows([(op, sid, nbytes, "cuda:0", "p", "") for op, sid, nbytes in rows])


# alloc 1000 B (2 MiB small segment) and 5 MiB (20 MiB large segment); free the 5 MiB block and
# empty the cache (its segment goes); then 12 MiB (a segment of its own, rounded to 12 MiB).
PATTERN = [(ALLOC, 1, 1000), (ALLOC, 2, 5 * MiB), (FREE, 2, 5 * MiB), (EMPTY_CACHE, 0, 0), (ALLOC, 3, 12 * MiB)]


# -- traces --------------------------------------------------------------------------------------
def test_synthetic_snapshot_round_trips_and_replays_to_the_hand_figures(tmp_path: Path) -> None:
    snapshot, index_of = gt.synthesize_snapshot(_trace(PATTERN))
    path = tmp_path / "t.pickle.gz"
    gt.save_snapshot(snapshot, path)
    loaded = gt.load_snapshot(path)

    actions = [e["action"] for e in gt.busiest_trace(loaded)]
    assert actions == ["segment_alloc", "alloc", "segment_alloc", "alloc", "free_requested", "free_completed",
                       "segment_free", "segment_alloc", "alloc"]
    assert index_of == [1, 3, 5, 6, 8]
    replay = replay_snapshot_events(loaded, AllocatorConfig())
    assert replay.real_reserved[index_of].tolist() == [2 * MiB, 22 * MiB, 22 * MiB, 2 * MiB, 14 * MiB]
    summary = gt.summarize_replay(replay)
    assert summary["exact"] and summary["compared_events"] == 6     # 3 allocs, 2 frees, 1 segment release
    assert summary["reserved_before_recording_bytes"] == 0
    assert summary["real_peak_reserved_bytes"] == summary["sim_peak_reserved_bytes"] == 22 * MiB
    assert replay_snapshot(loaded, AllocatorConfig())["peak_reserved_bytes"] == 22 * MiB


def test_expandable_segments_become_map_and_unmap_events() -> None:
    config = AllocatorConfig(expandable_segments=True)
    snapshot, _ = gt.synthesize_snapshot(_trace(PATTERN), config)
    events = gt.busiest_trace(snapshot)

    assert [e["action"] for e in events if e["action"].startswith("segment")] == [
        "segment_map", "segment_map", "segment_unmap", "segment_map"]
    assert [e["size"] for e in events if e["action"].startswith("segment")] == [2 * MiB, 20 * MiB, 20 * MiB, 20 * MiB]
    no_empty_cache = _trace([row for row in PATTERN if row[0] != EMPTY_CACHE])
    grown, _ = gt.synthesize_snapshot(no_empty_cache, config)
    assert gt.summarize_replay(replay_snapshot_events(grown, config))["exact"]


def test_a_wrong_allocator_setting_shows_as_mismatching_events() -> None:
    snapshot, _ = gt.synthesize_snapshot(_trace(PATTERN))
    summary = gt.summarize_replay(replay_snapshot_events(snapshot, AllocatorConfig(expandable_segments=True)))

    # The two agree until empty_cache: the real allocator frees its 20 MiB segment (event 6), a
    # simulator with one expandable pool has no such segment to free and keeps its pages: 20 MiB apart.
    assert not summary["exact"] and summary["first_mismatch_event"] == 6
    assert summary["max_abs_diff_bytes"] == 20 * MiB


def test_a_midrun_slice_is_replayed_from_what_was_reserved() -> None:
    snapshot, index_of = gt.synthesize_snapshot(_trace(PATTERN))
    mid = gt.midrun_snapshot(snapshot, index_of[1] + 1)          # after the 5 MiB alloc

    seeded = replay_snapshot_events(mid, AllocatorConfig())
    assert seeded.reserved_before == 22 * MiB
    assert seeded.real_reserved.tolist() == [22 * MiB, 22 * MiB, 2 * MiB, 14 * MiB, 14 * MiB]
    assert gt.summarize_replay(seeded)["exact"]
    unseeded = replay_snapshot_events(mid, AllocatorConfig(), seed=False)    # starts empty: it cannot agree
    assert not gt.summarize_replay(unseeded)["exact"]


def test_analyse_trace_reports_whole_and_midrun(tmp_path: Path) -> None:
    snapshot, index_of = gt.synthesize_snapshot(_trace(PATTERN))
    path = tmp_path / "t.pickle.gz"
    gt.save_snapshot(snapshot, path)
    trial = {"memory": {"peak_reserved_bytes": 22 * MiB, "peak_allocated_bytes": 12 * MiB + 1024},
             "snapshot": {"iteration_event_index": [index_of[1], index_of[-1]]}}
    out = gt.analyse_trace(path, None, trial)

    assert out["whole"]["exact"] and out["whole"]["real_peak_reserved_bytes"] == 22 * MiB
    assert out["replay_snapshot"]["peak_allocated_bytes"] == 12 * MiB + 1024     # 1000 B rounds to 1024
    mid = out["midrun"]
    assert mid["start_event"] == index_of[1] + 1 and mid["events"] == 5
    assert mid["seeded"]["exact"] and mid["seeded"]["reserved_before_recording_bytes"] == 22 * MiB
    assert mid["seeded"]["real_final_reserved_bytes"] == 14 * MiB and not mid["unseeded"]["exact"]


def test_snapshot_pickles_with_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"device_traces": [[]], "where": Path("/etc")}))
    with pytest.raises(ConfigError, match="plain data only"):
        gt.load_snapshot(path)


def test_cuda_recorder_marks_iterations_and_saves_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA side of the recorder, with torch's history functions stood in for (no GPU here)."""
    from autotune.config import TrialConfig
    from benchmarks import gpu_check_child as child

    calls: list[dict] = []
    events = [{"action": "segment_alloc", "addr": 0, "size": 2 * MiB, "stream": 0, "time_us": 0, "frames": ["x"]}]
    monkeypatch.setattr("torch.cuda.memory._record_memory_history", lambda **kw: calls.append(kw))
    monkeypatch.setattr("torch.cuda.memory._snapshot", lambda: {"device_traces": [list(events)], "segments": []})
    recorder = child._Recorder(TrialConfig(device="cuda"), str(tmp_path / "t.pickle.gz"))
    recorder.start()
    for step in range(2):
        events.append({"action": "alloc", "addr": step, "size": 512, "stream": 0, "time_us": step + 1})
        recorder.mark(probe=None)
    out = recorder.finish()

    assert calls[0]["enabled"] == "all" and calls[0]["context"] is None and calls[-1]["enabled"] is None
    assert out["iteration_event_index"] == [1, 2] and out["events"] == 3 and not out["synthetic"]
    saved = gt.load_snapshot(tmp_path / "t.pickle.gz")
    assert "frames" not in gt.busiest_trace(saved)[0]


def test_saved_weights_load_as_policy_and_value_model(tmp_path: Path) -> None:
    """Step 3 on the GPU loads every model from the folder the save_model task writes."""
    import torch

    from autotune.rlhf.models import build_policy, build_value_model
    from benchmarks import gpu_check_child as child

    out = child.task_save_model({"model": "llama-tiny", "dtype": "float32", "path": str(tmp_path / "m")})
    assert out["status"] == "ok" and out["parameters"] > 0
    preset = build_policy("llama-tiny")
    loaded = build_policy(str(tmp_path / "m"))
    for (name, a), (_, b) in zip(preset.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name          # the same seed: the same random weights
    value = build_value_model(str(tmp_path / "m"))
    assert torch.equal(value.backbone.embed_tokens.weight, preset.model.embed_tokens.weight)


# -- report --------------------------------------------------------------------------------------
def test_plan_errors_per_phase_against_the_target() -> None:
    real = [{"name": "generation", "peak_reserved_bytes": 100}, {"name": "experience", "peak_reserved_bytes": 200}]
    plan = {"status": "ok", "memory": {"peak_reserved_bytes": 202, "phases": [
        {"name": "generation", "peak_reserved_bytes": 101}, {"name": "experience", "peak_reserved_bytes": 202}]}}
    row = rep.plan_vs_real("x", plan, real, 200)
    assert [p["rel_error"] for p in row["phases"]] == pytest.approx([0.01, 0.01])
    assert row["rel_error"] == pytest.approx(0.01) and row["within_target"]

    plan["memory"]["phases"][1]["peak_reserved_bytes"] = 210
    assert not rep.plan_vs_real("x", plan, real, 200)["within_target"]
    assert not rep.plan_vs_real("x", None, real, 200)["within_target"]     # a missing plan never passes


def _paper_entry(name: str, empty_cache: bool, reserved: int, step_s: float) -> dict:
    config = {"memory": {"empty_cache_after": ["generation"] if empty_cache else [],
                         "allocator": {"expandable_segments": False}}}
    trial = {"status": "ok", "memory": {"peak_reserved_bytes": reserved, "peak_allocated_bytes": reserved // 2,
                                        "fragmentation": 0.5}, "step_time_s": step_s, "iterations": []}
    return {"name": name, "config": config, "trial": trial}


def test_paper_ratios_and_claims() -> None:
    papers = [_paper_entry("baseline", False, 400, 1.0), _paper_entry("empty_cache", True, 300, 1.02)]
    plans = {"paper:baseline": {"memory": {"peak_reserved_bytes": 400}},
             "paper:empty_cache": {"memory": {"peak_reserved_bytes": 360}}}
    rows = rep.paper_rows(papers, plans)
    assert rows[1]["reserved_vs_baseline"] == pytest.approx(0.75)
    assert rows[1]["step_time_vs_baseline"] == pytest.approx(1.02)
    assert rows[1]["plan_rel_error"] == pytest.approx(0.2)
    claims = rep.paper_claims(rows)
    assert claims[0]["measured"] == pytest.approx(-0.25) and claims[0]["plan"] == pytest.approx(-0.1)
    assert claims[1]["measured"] == pytest.approx(0.02) and claims[1]["paper"] == 0.02


def test_output_problems_name_what_would_not_come_back(tmp_path: Path) -> None:
    for i in range(9):
        (tmp_path / f"f{i}.json").write_text("{}")
    (tmp_path / "a b.txt").write_text("")
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "deep.txt").write_text("")
    with (tmp_path / "big.bin").open("wb") as handle:
        handle.truncate(17 * MiB)
    files, problems = rep.output_problems(tmp_path)
    assert len(files) == 12
    text = "\n".join(problems)
    for expected in ("a b.txt: a name", "deep.txt: more than two folders", "big.bin: 17.0 MiB", "12 files"):
        assert expected in text


# -- orchestration -------------------------------------------------------------------------------
def test_child_environment_sets_both_allocator_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    children = gc.Children(gc.SETTINGS["dry"], gc.Clock(60), tmp_path, device="cuda")
    env = children.env("expandable_segments:True")
    assert env["PYTORCH_ALLOC_CONF"] == env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    plain = children.env("")
    assert "PYTORCH_ALLOC_CONF" not in plain and "PYTORCH_CUDA_ALLOC_CONF" not in plain


def test_time_guard_skips_a_step_without_starting_it(tmp_path: Path) -> None:
    children = gc.Children(gc.SETTINGS["dry"], gc.Clock(0), tmp_path, device="cpu")
    out = children.run("context", {})
    assert out["status"] == "skipped" and "time guard" in out["message"]
    assert not list(tmp_path.iterdir())


def test_skipped_and_failed_steps_still_give_a_document_and_a_table(tmp_path: Path) -> None:
    cfg = gc.trace_configs(gc.SETTINGS["dry"], "cpu")["ppo"]
    skipped = {"status": "skipped", "message": "time guard: 3 s left of 450 s"}
    doc = rep.assemble(
        schema=gc.SCHEMA, settings=gc.SETTINGS["dry"], device="cuda", steps=gc.STEPS,
        context={"status": "error", "message": "RuntimeError: no CUDA"},
        traces=[{"name": "ppo", "model": "m", "algorithm": "ppo", "config": cfg.to_dict(), "trial": skipped}],
        papers=[{"name": "baseline", "config": cfg.to_dict(), "trial": {"status": "timeout"}}],
        plans={"status": "timeout", "plans": []}, wall_time_s=450.0, nvidia_smi=None)
    table = rep.write(doc, tmp_path)

    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["traces"][0]["status"] == "skipped" and saved["paper"]["rows"][0]["status"] == "timeout"
    assert saved["plan"]["rows"][0]["within_target"] is False
    assert "skipped" in table and "timeout" in table and (tmp_path / "summary.txt").read_text().strip() == table


def test_variants_and_configs() -> None:
    configs = gc.paper_configs(gc.SETTINGS["full"], "cuda")
    assert list(configs) == ["baseline", "empty_cache", "expandable", "empty_cache+expandable"]
    both = configs["empty_cache+expandable"]
    assert both.memory.empty_cache_after == ("generation",) and both.memory.allocator.expandable_segments
    assert both.model.actor == "llama-1b" and both.model.dtype == "bfloat16" and both.workload.steps == 3
    assert configs["baseline"].memory.allocator.to_env_string() == ""
    traces = gc.trace_configs(gc.SETTINGS["full"], "cuda")
    assert [c.algorithm for c in traces.values()] == ["ppo", "grpo"]


def test_bad_steps_give_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gc.main(["--steps", "traces,bogus", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --steps: unknown step(s) bogus") and "\n" not in err


# -- imports and the whole dry run ---------------------------------------------------------------
def _blocking_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import what the GPU image lacks (a sitecustomize blocks it)."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None     # `import name` raises ImportError, find_spec says absent
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_the_script_imports_without_optuna_mlflow_deepspeed(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import importlib, sys
        for name in ("optuna", "mlflow", "deepspeed"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"the blocker let {name} through")
        import benchmarks.gpu_check
        assert "torch" not in sys.modules, "the parent must not load torch (nor hold a CUDA context)"
        import benchmarks.gpu_check_child, benchmarks.gpu_check_trace, benchmarks.gpu_check_report
        import autotune.rlhf.trial, autotune.rlhf.workload, autotune.rlhf.models, autotune.rlhf.generation
        import autotune.memory.cuda_probe, autotune.memory.sim_probe, autotune.memory.replay, autotune.optim
        print("imports ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_blocking_env(tmp_path), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imports ok" in done.stdout


@pytest.mark.slow
def test_cpu_dry_run_writes_the_full_document(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--dry-run",
                           "--out", str(out)], env=_blocking_env(tmp_path), cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["schema"] == gc.SCHEMA and doc["device"] == "cpu" and doc["dry_run"]
    assert doc["problems"] == [] and len(doc["files"]) == 4
    assert "1. traces" in done.stdout and (out / "summary.txt").read_text().strip() in done.stdout

    traces = {t["name"]: t for t in doc["traces"]}
    assert set(traces) == {"ppo", "grpo"}
    for t in traces.values():
        assert t["status"] == "ok" and t["synthetic"] and not t["history_full"]
        assert (out / t["snapshot_file"]).stat().st_size == t["snapshot_bytes"] > 0
        assert t["whole"]["exact"] and t["whole"]["compared_events"] > 100
        assert t["whole"]["reserved_before_recording_bytes"] == 0
        # the probe's live simulator, the replayed series and replay_snapshot agree on the peaks
        assert t["probe_peak_reserved_bytes"] == t["whole"]["real_peak_reserved_bytes"] \
            == t["replay_snapshot"]["peak_reserved_bytes"] > 0
        assert t["probe_peak_allocated_bytes"] == t["replay_snapshot"]["peak_allocated_bytes"]
        mid = t["midrun"]
        assert mid["start_event"] == t["iteration_event_index"][0] + 1
        assert mid["seeded"]["exact"] and mid["seeded"]["reserved_before_recording_bytes"] > 0
        assert not mid["unseeded"]["exact"]

    plan = {r["name"]: r for r in doc["plan"]["rows"]}
    assert doc["plan"]["status"] == "ok" and set(plan) == {"trace:ppo", "trace:grpo", *(
        f"paper:{v.name}" for v in gc.VARIANTS)}
    assert [p["phase"] for p in plan["trace:ppo"]["phases"]] == ["generation", "experience", "actor_train",
                                                                 "critic_train"]
    assert [p["phase"] for p in plan["trace:grpo"]["phases"]] == ["generation", "experience", "actor_train"]
    for row in plan.values():
        for p in row["phases"]:   # each error is recomputed from the figures beside it
            assert p["rel_error"] == pytest.approx((p["plan_peak_reserved_bytes"] - p["real_peak_reserved_bytes"])
                                                   / p["real_peak_reserved_bytes"])

    rows = {r["name"]: r for r in doc["paper"]["rows"]}
    assert list(rows) == [v.name for v in gc.VARIANTS] and all(r["status"] == "ok" for r in rows.values())
    assert all(r["weights_saved"] for r in rows.values())      # the GPU run's save step works
    for name in ("paper:baseline", "paper:empty_cache"):        # the cpu and fake backends agree
        assert abs(plan[name]["rel_error"]) < 0.02, plan[name]
    assert rows["baseline"]["reserved_vs_baseline"] == 1.0
    assert rows["empty_cache"]["empty_cache_after_generation"] and rows["expandable"]["expandable_segments"]
    for r in rows.values():
        assert len(r["iteration_peak_reserved_bytes"]) == 3 and len(r["step_times_s"]) == 3
        assert 0 <= r["fragmentation"] < 1 and r["plan_peak_reserved_bytes"] > 0
        assert r["expandable_in_effect"] is None          # only CUDA can say
    assert [c["paper"] for c in doc["paper"]["claims"]] == [-0.25, 0.02]

    stages = doc["context"]["stages"]
    assert [s["stage"] for s in stages] == ["cuda_init", "first_allocation", "cublas", "sdpa"]
    assert all(s["outside_allocator_bytes"] is None for s in stages)    # no CUDA, no figures
    assert len(doc["context"]["after_trials"]) == 6
    assert doc["machine"]["cuda_available"] is False and doc["machine"]["torch"]


def _recorded_traces() -> list[dict]:
    path = GPU_FIXTURES / "gpu_check.json"
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    return [t for t in doc["traces"] if t.get("snapshot_file") and not t.get("synthetic")
            and (GPU_FIXTURES / t["snapshot_file"]).is_file()]


@pytest.mark.parametrize("recorded", _recorded_traces() or [None], ids=lambda t: t["name"] if t else "none")
def test_real_gpu_traces_replay_to_the_real_reserved_bytes(recorded: dict | None) -> None:
    """Real snapshots from `make gpu-check`, replayed on the CPU against what the GPU reserved."""
    if recorded is None:
        pytest.skip(f"no real GPU run committed under {GPU_FIXTURES.relative_to(REPO)} yet")
    config = AllocatorConfig(**recorded["alloc_conf"])
    trial = {"memory": {"peak_reserved_bytes": recorded["probe_peak_reserved_bytes"]},
             "snapshot": {"iteration_event_index": recorded["iteration_event_index"]}}
    out = gt.analyse_trace(GPU_FIXTURES / recorded["snapshot_file"], config, trial)

    assert out["whole"]["exact"], out["whole"]
    assert out["whole"]["real_peak_reserved_bytes"] == out["whole"]["sim_peak_reserved_bytes"] \
        == recorded["probe_peak_reserved_bytes"]
    assert out["midrun"]["seeded"]["exact"], out["midrun"]["seeded"]
