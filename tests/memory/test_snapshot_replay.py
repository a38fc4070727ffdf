"""Replaying `torch.cuda.memory._snapshot()` traces through the simulator."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from autotune.config import AllocatorConfig, effective_alloc_conf
from autotune.errors import ConfigError
from autotune.memory.replay import replay_snapshot, replay_snapshot_events
from autotune.memory.snapshot import load_snapshot

MiB = 1 << 20
DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURES = sorted(DATA.glob("cuda_snapshot*.json"))
# Real traces from public repositories (sources and licence in tests/data/README.md), with what each
# holds: (events, segment_alloc events, bytes reserved before recording began).
REAL_TRACES = {
    "snapshot_cs336_silmont_mem.pickle": (97, 9, 0),
    "snapshot_cs336_silmont_forward_fp32.pickle": (2043, 0, 610_271_232),
    "snapshot_cs336_magma27.pickle": (5163, 0, 14_180_941_824),
    # Not committed: its repository carries no licence (tests/data/README.md). Put a copy in
    # tests/data to run it: kkaitlyn111/cs336-a2-systems@c1272e18, memory_files/memory_ctx256_fullstep_.pickle.
    # It opens with the program's own empty_cache(), which returns 780 cached segments (47 GB) held
    # before recording began, so its peak reserved is the 61.1 GB of that moment.
    "snapshot_cs336_kkaitlyn_ctx256_fullstep.pickle": (20128, 791, 61_111_009_280),
}


@pytest.mark.parametrize("name", sorted(REAL_TRACES))
def test_seeded_replay_reproduces_reserved_after_every_event_of_a_real_trace(name):
    if not (DATA / name).is_file():
        pytest.skip(f"{name} is not committed (see REAL_TRACES)")
    snapshot = load_snapshot(DATA / name)
    events, segment_allocs, reserved_before = REAL_TRACES[name]
    replay = replay_snapshot_events(snapshot)
    assert len(replay.actions) == events and replay.actions.count("segment_alloc") == segment_allocs
    assert replay.compared.sum() == events - segment_allocs
    assert replay.mismatches == 0
    assert (replay.reserved[replay.compared] == replay.real_reserved[replay.compared]).all()
    assert replay.reserved_before == reserved_before
    assert replay.stats["peak_reserved_bytes"] == max(reserved_before, replay.real_reserved.max())
    assert replay.stats["reserved_bytes"] == replay.real_final["reserved_bytes"]
    assert replay.stats["allocated_bytes"] == replay.real_final["allocated_bytes"]
    assert replay.skipped_frees == 0 and replay.unmatched_releases == 0
    assert replay_snapshot(snapshot) == replay.stats          # the plain form issue 15's GPU check calls


def test_a_trace_that_opens_with_empty_cache_peaks_at_the_memory_held_before_it():
    """reset_peak_memory_stats(); empty_cache(); step: the real peak stat keeps what was reserved first."""
    events = [_event("segment_free", 0x1000_0000, 20 * MiB),           # cached before recording: returned
              _event("segment_alloc", 0x3000_0000, 2 * MiB), _event("alloc", 0x3000_0000, 512)]
    live = [{"address": 0x2000_0000, "size": 4 * MiB, "state": "active_allocated"}]
    final = [{"address": 0x2000_0000, "total_size": 4 * MiB, "allocated_size": 4 * MiB, "segment_type": "large",
              "blocks": live},
             {"address": 0x3000_0000, "total_size": 2 * MiB, "allocated_size": 512, "segment_type": "small",
              "blocks": [{"address": 0x3000_0000, "size": 512, "state": "active_allocated"}]}]
    replay = replay_snapshot_events({"device_traces": [events], "segments": final})
    assert replay.reserved_before == 24 * MiB and replay.mismatches == 0
    assert replay.stats["peak_reserved_bytes"] == 24 * MiB > replay.real_reserved[1:].max()
    assert replay.stats["reserved_bytes"] == replay.real_final["reserved_bytes"] == 6 * MiB


def test_an_unseeded_replay_of_a_mid_run_trace_is_wrong():
    """Why seeding is the default: from an empty allocator, 2 frees are lost and reserved is off."""
    snapshot = load_snapshot(DATA / "snapshot_cs336_magma27.pickle")
    replay = replay_snapshot_events(snapshot, seed=False)
    assert replay.skipped_frees == 2
    assert replay.stats["reserved_bytes"] != replay.real_final["reserved_bytes"]


def test_snapshot_loader_refuses_every_pickle_global(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"segments": [], "run": print}))     # names builtins.print
    with pytest.raises(ConfigError, match="refusing global builtins.print"):
        load_snapshot(path)


def test_snapshot_loader_rejects_a_non_snapshot(tmp_path):
    path = tmp_path / "list.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ConfigError, match="no 'segments'"):
        load_snapshot(path)


def _event(action: str, addr: int, size: int = 0) -> dict:
    return {"action": action, "addr": addr, "size": size, "stream": 0, "frames": []}


def test_replay_follows_alloc_free_and_segment_frees():
    events = [
        _event("segment_alloc", 0x1000, 2 * MiB), _event("alloc", 0x1000, 1000),
        _event("segment_alloc", 0x9000, 20 * MiB), _event("alloc", 0x9000, 5 * MiB),
        _event("free_requested", 0x9000, 5 * MiB), _event("free_completed", 0x9000, 5 * MiB),
        _event("segment_free", 0x9000, 20 * MiB),          # empty_cache(): that segment goes back
        _event("free_completed", 0xdead, 512),              # allocated before recording: skipped
        _event("alloc", 0x20000, 12 * MiB),
    ]
    stats = replay_snapshot({"device_traces": [events], "segments": []}, AllocatorConfig())
    assert stats["reserved_bytes"] == 2 * MiB + 12 * MiB
    assert stats["allocated_bytes"] == 1024 + 12 * MiB
    assert stats["peak_reserved_bytes"] == 22 * MiB
    assert stats["num_device_free"] == 1


def _on(stream: int, action: str, addr: int, size: int) -> dict:
    return {**_event(action, addr, size), "stream": stream}


def test_replay_keeps_streams_apart_and_frees_when_the_free_completes():
    events = [
        _on(1, "segment_alloc", 0x1000_0000, 20 * MiB), _on(1, "alloc", 0x1000_0000, 20 * MiB),
        _on(1, "free_requested", 0x1000_0000, 20 * MiB),
        # record_stream: the block is not reusable until free_completed, so this needs a new segment
        _on(1, "segment_alloc", 0x2000_0000, 20 * MiB), _on(1, "alloc", 0x2000_0000, 20 * MiB),
        _on(1, "free_completed", 0x1000_0000, 20 * MiB),
        # a side stream cannot take stream 1's cached block either
        _on(2, "segment_alloc", 0x3000_0000, 20 * MiB), _on(2, "alloc", 0x3000_0000, 20 * MiB),
    ]
    replay = replay_snapshot_events({"device_traces": [events], "segments": []})
    assert replay.mismatches == 0 and replay.stats["reserved_bytes"] == 60 * MiB


def test_snapshot_without_traces_is_rejected():
    with pytest.raises(ConfigError, match="_record_memory_history"):
        replay_snapshot({"segments": []}, AllocatorConfig())


def _strip_frames(snapshot: dict) -> dict:
    traces = [[{k: v for k, v in e.items() if k != "frames"} for e in device] for device in snapshot["device_traces"]]
    return {"device_traces": traces}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_of_a_real_trace_matches_the_real_allocator():
    """Run in a fresh process: the allocator must start empty for the peaks to compare."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    kept = []
    for step in range(64):
        kv = torch.empty((step + 1) * 192 * 1024, dtype=torch.uint8, device="cuda")
        if step % 6 == 0:
            kept.append(torch.empty(3 * MiB, dtype=torch.uint8, device="cuda"))
        del kv
    big = torch.empty(96 * MiB, dtype=torch.uint8, device="cuda")
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    real = torch.cuda.memory_stats()
    stats = replay_snapshot(snapshot, AllocatorConfig.from_environ(os.environ))
    assert stats["peak_reserved_bytes"] == real["reserved_bytes.all.peak"]
    assert stats["peak_allocated_bytes"] == real["allocated_bytes.all.peak"]
    if os.environ.get("AUTOTUNE_RECORD_GPU_FIXTURE"):
        DATA.mkdir(exist_ok=True)
        (DATA / "cuda_snapshot_rlhf_pattern.json").write_text(json.dumps({
            "alloc_conf": effective_alloc_conf(os.environ),
            "snapshot": _strip_frames(snapshot),
            "expected": {"peak_reserved_bytes": real["reserved_bytes.all.peak"],
                         "peak_allocated_bytes": real["allocated_bytes.all.peak"]},
        }))
    del big, kept


@pytest.mark.parametrize("path", FIXTURES or [None], ids=lambda p: p.name if p else "none")
def test_replay_of_recorded_fixture_matches_its_gpu_figures(path):
    if path is None:
        pytest.skip("no real GPU trace recorded yet")
    data = json.loads(path.read_text())
    stats = replay_snapshot(data["snapshot"], AllocatorConfig.from_env_string(data["alloc_conf"]))
    for key, value in data["expected"].items():
        assert stats[key] == value, key
