"""Phase probes: per-phase peaks, OOM attribution, offload, the report and the timeline."""
from __future__ import annotations

import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from autotune import schema
from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.allocator import SimulatedOutOfMemoryError
from autotune.memory.probe import MemoryProbe
from autotune.memory.probes import make_probe
from autotune.memory.report import MemoryReport
from tests.memory.llama_step import tiny_llama_step

MiB = 1 << 20


def test_phase_peaks_reset_at_edges_and_repeats_merge():
    probe = make_probe("cpu", AllocatorConfig())
    with probe:
        with probe.phase("generation"):
            a = torch.empty(1000)                  # 4000 B -> 4096 B block in a 2 MiB segment
        with probe.phase("actor_train"):
            b = torch.empty(5 * MiB // 4)          # 5 MiB -> a 20 MiB segment
            del b
        with probe.phase("generation"):
            c = torch.empty(3 * MiB // 4)          # 3 MiB fits the cached 20 MiB segment
            del c
    report = probe.report()
    assert [p.name for p in report.phases] == ["generation", "actor_train"]
    gen, train = report.phases
    assert train.peak_allocated_bytes == 4096 + 5 * MiB
    assert train.peak_reserved_bytes == 22 * MiB
    assert train.end_allocated_bytes == 4096
    # generation, merged: max(4096, 4096 + 3 MiB) allocated, max(2, 22) MiB reserved
    assert gen.peak_allocated_bytes == 4096 + 3 * MiB
    assert gen.peak_reserved_bytes == 22 * MiB
    assert report.peak_allocated_bytes == 4096 + 5 * MiB
    assert report.peak_reserved_bytes == 22 * MiB
    assert gen.wall_time_s > 0
    del a


def test_simulated_oom_is_raised_inside_the_op_and_names_the_phase():
    probe = make_probe("cpu", AllocatorConfig(), capacity_bytes=10 * MiB)
    with probe:
        with pytest.raises(SimulatedOutOfMemoryError) as info:
            with probe.phase("generation"):
                torch.empty(4 * MiB)               # 16 MiB > 10 MiB
    assert probe.failed_phase == "generation"
    assert info.value.phase == "generation"
    report = probe.report()
    assert report.num_ooms == 1 and report.num_alloc_retries == 1
    assert report.phase("generation") is not None


def test_empty_cache_and_offload_reach_the_simulator():
    layer = torch.nn.Linear(512, 1024)             # weight 2 MiB, bias 4 KiB
    probe = make_probe("cpu", AllocatorConfig())
    with probe:
        probe.track(layer)
        stats = probe.sim.stats()
        assert stats["allocated_bytes"] == 2 * MiB + 4096
        probe.to_host(layer)
        assert probe.sim.stats()["allocated_bytes"] == 0
        probe.empty_cache()                        # both segments are now entirely free
        assert probe.sim.stats()["reserved_bytes"] == 0
        probe.to_device(layer)
        assert probe.sim.stats()["allocated_bytes"] == 2 * MiB + 4096
    assert layer.weight.device.type == "cpu"       # the tensors themselves never moved


def test_phases_do_not_nest():
    probe = make_probe("cpu", AllocatorConfig())
    with probe, probe.phase("generation"):
        with pytest.raises(ConfigError, match="do not nest"):
            with probe.phase("experience"):
                pass


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown memory backend"):
        make_probe("tpu", AllocatorConfig())


def _llama_report(backend: str) -> MemoryReport:
    model, opt, step = tiny_llama_step()
    probe = make_probe(backend, AllocatorConfig())
    with probe:
        probe.track(model)
        for _ in range(2):
            with probe.phase("actor_train"):
                step()
    return probe.report()


def test_fake_backend_predicts_what_the_cpu_backend_measures():
    cpu = _llama_report("cpu")
    with FakeTensorMode():
        fake = _llama_report("fake")
    assert isinstance(make_probe("fake", AllocatorConfig()), MemoryProbe)
    assert fake.backend == "fake" and cpu.backend == "cpu"
    assert cpu.peak_allocated_bytes > 0
    strip = [(p.peak_allocated_bytes, p.peak_reserved_bytes, p.end_allocated_bytes) for p in cpu.phases]
    assert [(p.peak_allocated_bytes, p.peak_reserved_bytes, p.end_allocated_bytes) for p in fake.phases] == strip
    assert (fake.peak_allocated_bytes, fake.peak_reserved_bytes) == (cpu.peak_allocated_bytes, cpu.peak_reserved_bytes)


def test_report_round_trips_through_json():
    report = _llama_report("cpu")
    text = json.dumps(schema.to_dict(report))
    assert schema.from_dict(MemoryReport, json.loads(text)) == report


def test_timeline_png_is_written(tmp_path):
    probe = make_probe("cpu", AllocatorConfig(), capacity_bytes=64 * MiB)
    with probe:
        with probe.phase("generation"):
            kv = [torch.empty(64 * 1024 * (i + 1)) for i in range(8)]
        del kv
        probe.empty_cache()
        with probe.phase("actor_train"):
            torch.empty(4 * MiB)
    path = probe.save_timeline(tmp_path / "sub" / "timeline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_probe_reads_the_real_allocator():
    probe = make_probe("cuda", AllocatorConfig())
    with probe:
        with probe.phase("generation"):
            x = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")
            del x
        with probe.phase("actor_train"):
            y = torch.empty(1000, dtype=torch.uint8, device="cuda")
    report = probe.report()
    gen, train = report.phases
    assert gen.peak_allocated_bytes - gen.end_allocated_bytes == 5 * MiB
    assert train.end_allocated_bytes - gen.end_allocated_bytes == 1024      # 1000 B rounded to 2 x 512
    del y


def test_oom_in_backward_keeps_its_type_and_phase():
    layer = torch.nn.Linear(1024, 1024)                    # 4 MiB weight
    x = torch.randn(2048, 1024, requires_grad=True)        # 8 MiB
    probe = make_probe("cpu", AllocatorConfig(), capacity_bytes=30 * MiB)
    with probe:
        probe.track(layer, x)                              # one 20 MiB segment holds both; bias: 2 MiB
        with pytest.raises(SimulatedOutOfMemoryError):
            with probe.phase("actor_train"):
                y = layer(x)                               # 8 MiB: exactly the segment's free rest
                y.sum().backward()                         # an 8 MiB gradient needs 20 MiB more: 42 > 30
    assert probe.failed_phase == "actor_train"


def test_optimizer_state_offload_frees_exactly_its_blocks():
    layer = torch.nn.Linear(256, 256)
    opt = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(4, 256)).sum().backward()
    opt.step()
    probe = make_probe("cpu", AllocatorConfig())
    with probe:
        probe.track(layer, opt)
        before = probe.sim.stats()["allocated_bytes"]
        probe.to_host(opt)
        # exp_avg and exp_avg_sq: 2 x (256 KiB weight + 1 KiB bias); step: 2 scalars of 512 B each
        assert before - probe.sim.stats()["allocated_bytes"] == 2 * (256 * 1024 + 1024) + 2 * 512


def test_probe_entered_twice_keeps_following_live_storages():
    probe = make_probe("cpu", AllocatorConfig())
    with probe:
        x = torch.empty(1000)
    assert probe.sim.stats()["allocated_bytes"] == 4096
    del x                                  # freed between the two `with` blocks: still seen
    assert probe.sim.stats()["allocated_bytes"] == 0
    with probe:
        y = torch.empty(1000)
    assert probe.sim.stats()["allocated_bytes"] == 4096
    probe.tracer.close()
    del y                                  # after close(): no longer followed
    assert probe.sim.stats()["allocated_bytes"] == 4096


def test_saved_trace_replays_to_the_live_simulator_figures(tmp_path):
    from autotune.memory.replay import replay_trace
    from autotune.memory.trace import Trace

    config = AllocatorConfig(max_split_size_mb=32)
    model, opt, step = tiny_llama_step()
    probe = make_probe("cpu", config)
    with probe:
        probe.track(model)
        with probe.phase("actor_train"):
            step()
        probe.to_host(opt)
        probe.empty_cache()
        with probe.phase("actor_train"):
            probe.to_device(opt)
            step()
    probe.trace().save(tmp_path / "trace.npz")
    replay = replay_trace(Trace.load(tmp_path / "trace.npz"), config)
    assert replay.stats == probe.sim.stats()
    assert replay.reserved.max() == probe.report().peak_reserved_bytes


def test_replay_at_a_smaller_capacity_names_the_failing_event_and_phase():
    from autotune.memory.replay import replay_trace

    probe = make_probe("cpu", AllocatorConfig())
    with probe:
        with probe.phase("generation"):
            a = torch.empty(1000)
        with probe.phase("actor_train"):
            b = torch.empty(4 * MiB)                   # 16 MiB
    with pytest.raises(SimulatedOutOfMemoryError, match=r"trace event 1, phase 'actor_train'") as info:
        replay_trace(probe.trace(), AllocatorConfig(), capacity_bytes=8 * MiB)
    assert info.value.phase == "actor_train"
    del a, b
