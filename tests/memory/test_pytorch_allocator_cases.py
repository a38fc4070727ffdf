"""PyTorch's own allocator tests, each exact-number case run against the config parser and the simulator.

Sources (pytorch/pytorch, main as of 2026-11):
- test/test_cuda.py, class TestCuda: test_allocator_settings, test_allocator_memory_fraction_setting,
  test_set_per_process_memory_fraction, test_out_of_memory_retry, test_max_split_expandable,
  test_garbage_collect_expandable;
- c10/test/core/AllocatorConfig_test.cpp: AllocatorConfigTest.allocator_config_test.
Where a case cannot apply as written, the test says what was adapted and why.
"""
from __future__ import annotations

import pytest

from autotune import schema
from autotune.config import AllocatorConfig
from autotune.errors import ConfigError
from autotune.memory.allocator import CachingAllocatorSim, SimulatedOutOfMemoryError

MiB, GiB = 1 << 20, 1 << 30
TOTAL = 80 * GiB        # an 80 GB device; its default context reserve is 500 MiB


def power2_div(size: int, div_factor: int) -> int:
    """test_allocator_settings' own helper: the next 1/div_factor step of the power-of-two interval."""
    pow2 = 1
    while pow2 < size:
        pow2 *= 2
    if pow2 == size:
        return pow2
    step, ret = pow2 // 2 // div_factor, pow2 // 2
    while ret < size:
        ret += step
    return ret


def allocated_delta(settings: str, nbytes: int) -> int:
    """`active_bytes.all.allocated` grown by one torch.rand of `nbytes` under `settings`."""
    sim = CachingAllocatorSim(AllocatorConfig.from_env_string(settings), capacity_bytes=TOTAL)
    sim.malloc(nbytes)
    return sim.stats()["allocated_bytes"]


NBYTES, NBYTES_BIG = 4 * 21 * MiB, 4 * 100 * MiB     # nelems 21 Mi and 100 Mi floats


# -- test_cuda.py::TestCuda::test_allocator_settings ---------------------------------------------
@pytest.mark.parametrize(("settings", "nbytes", "expected"), [
    ("", NBYTES, NBYTES),
    ("roundup_power2_divisions:4", NBYTES, power2_div(NBYTES, 4)),
    ("garbage_collection_threshold:0.5,max_split_size_mb:40", NBYTES, NBYTES),
    ("garbage_collection_threshold:0.5,roundup_power2_divisions:[64:8,128:2,256:2,512:2,1024:1,>:1]",
     NBYTES, power2_div(NBYTES, 8)),
    ("garbage_collection_threshold:0.5,roundup_power2_divisions:[64:8,128:2,256:2,512:2,1024:1,>:1]",
     NBYTES_BIG, power2_div(NBYTES_BIG, 2)),
    ("release_lock_on_cudamalloc:True", NBYTES, NBYTES),
])
def test_allocator_settings_allocated_bytes(settings, nbytes, expected):
    assert allocated_delta(settings, nbytes) == expected


def test_allocator_settings_figures_are_the_ones_pytorch_asserts():
    assert (power2_div(NBYTES, 4), power2_div(NBYTES, 8), power2_div(NBYTES_BIG, 2)) == (96 * MiB, 88 * MiB, 512 * MiB)


@pytest.mark.parametrize("settings", [
    "foo:1,bar:2",
    "garbage_collection_threshold:1.2",
    "max_split_size_mb:2",
    "release_lock_on_cudamalloc:none",
    "pinned_use_cuda_host_register:none",
    "pinned_num_register_threads:none",
    "pinned_num_register_threads:1024",
])
def test_allocator_settings_rejects_what_pytorch_rejects(settings):
    with pytest.raises(ConfigError):
        AllocatorConfig.from_env_string(settings)


# -- test_cuda.py::TestCuda::test_allocator_memory_fraction_setting ------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_memory_fraction_setting_in_the_env_string(fraction):
    config = AllocatorConfig.from_env_string(f"per_process_memory_fraction:{fraction}")
    assert config.memory_fraction == fraction


@pytest.mark.parametrize("fraction", [-0.1, 1.1])
def test_memory_fraction_setting_rejects_out_of_range(fraction):
    with pytest.raises(ConfigError, match="memory_fraction"):
        AllocatorConfig.from_env_string(f"per_process_memory_fraction:{fraction}")


# -- test_cuda.py::TestCuda::test_set_per_process_memory_fraction --------------------------------
def test_set_per_process_memory_fraction():
    sim = CachingAllocatorSim(AllocatorConfig(memory_fraction=0.5), capacity_bytes=TOTAL)
    sim.malloc(1024 * 4)                                  # tensor = torch.zeros(1024)
    sim.empty_cache()
    application = int(TOTAL * 0.499) - sim.stats()["peak_reserved_bytes"]
    sim.free(sim.malloc(application))                     # 0.499 of the device is fine
    sim.empty_cache()
    with pytest.raises(SimulatedOutOfMemoryError):
        sim.malloc(int(TOTAL * 0.5))                      # more than half is not
    sim.malloc(1024 * 4)                                  # and the allocator still works after it


@pytest.mark.parametrize("fraction", [-0.1, 2.0])
def test_set_per_process_memory_fraction_rejects_invalid_values(fraction):
    with pytest.raises(ConfigError, match="memory_fraction"):
        schema.from_dict(AllocatorConfig, {"memory_fraction": fraction})


# -- test_cuda.py::TestCuda::test_out_of_memory_retry --------------------------------------------
def test_out_of_memory_retry():
    sim = CachingAllocatorSim(AllocatorConfig(), capacity_bytes=TOTAL)
    size = int(TOTAL * 0.5)
    a = sim.malloc(size)
    with pytest.raises(SimulatedOutOfMemoryError):
        sim.malloc(size)          # the context reserve leaves less than the second half
    sim.free(a)
    sim.malloc(size)              # served from the cached block of the first
    assert sim.stats()["num_alloc_retries"] == 1 and sim.stats()["num_ooms"] == 1


def test_out_of_memory_retry_needs_the_context_reserve():
    """With the whole device usable (the simulator before the reserve), the second half fitted."""
    sim = CachingAllocatorSim(AllocatorConfig(), capacity_bytes=TOTAL, context_reserve_bytes=0)
    sim.malloc(int(TOTAL * 0.5))
    sim.malloc(int(TOTAL * 0.5))


# -- test_cuda.py::TestCuda::test_max_split_expandable and test_garbage_collect_expandable --------
# Adapted: PyTorch switches expandable_segments on and off between the allocations; the simulator
# takes one setting for its life, so these run with fixed segments throughout.
def _fraction_for(allowed_bytes: int) -> float:
    return allowed_bytes / TOTAL                        # total_allowed = 120 MiB + pre_reserved (0)


def test_max_split_release_cached_blocks_serves_120mib():
    config = AllocatorConfig(max_split_size_mb=40, memory_fraction=_fraction_for(120 * MiB))
    sim = CachingAllocatorSim(config, capacity_bytes=TOTAL, torch_version=(2, 13))
    blocks = [sim.malloc(40 * MiB) for _ in range(3)]
    with pytest.raises(SimulatedOutOfMemoryError):
        sim.malloc(40 * MiB)
    for handle in blocks:
        sim.free(handle)
    sim.malloc(120 * MiB)         # only after the three cached 40 MiB segments are released
    assert sim.stats()["reserved_bytes"] == 120 * MiB


def test_garbage_collect_before_the_fraction_runs_out():
    config = AllocatorConfig(garbage_collection_threshold=0.5, memory_fraction=_fraction_for(120 * MiB))
    sim = CachingAllocatorSim(config, capacity_bytes=TOTAL, torch_version=(2, 13))
    a, b = sim.malloc(40 * MiB), sim.malloc(40 * MiB)
    sim.free(a)
    sim.free(b)
    sim.malloc(80 * MiB)          # 80 MiB reserved > 0.5 x 120 MiB: the GC frees the cached segments
    assert sim.stats()["reserved_bytes"] == 80 * MiB and sim.stats()["num_alloc_retries"] == 0


# -- c10/test/core/AllocatorConfig_test.cpp: AllocatorConfigTest.allocator_config_test -----------
# Adapted: the C++ test configures a generic device, whose async backend is called "async"; on CUDA
# it is "cudaMallocAsync", which is what the environment string for a CUDA trial must say.
C10_FIRST = ("max_split_size_mb:40,max_non_split_rounding_mb:30,garbage_collection_threshold:0.5,"
             "roundup_power2_divisions:[64:8,128:2,256:4,512:2,1024:4,>:1],backend:cudaMallocAsync,"
             "expandable_segments:True,release_lock_on_device_malloc:True,pinned_use_device_host_register:True,"
             "pinned_num_register_threads:8,pinned_use_background_threads:True")


def _divisions_at(config: AllocatorConfig, size_mib: int) -> int:
    table = config.roundup_intervals()
    return table[min(max(size_mib.bit_length() - 1, 0), len(table) - 1)]


def test_c10_allocator_config_first_settings():
    config = AllocatorConfig.from_env_string(C10_FIRST)
    assert config.max_split_size_bytes == 40 * MiB
    assert config.max_non_split_rounding_bytes == 30 * MiB
    assert config.garbage_collection_threshold == 0.5
    expected = {32: 8, 64: 8, 128: 2, 256: 4, 512: 2, 1024: 4, 2048: 1, 4096: 1, 8192: 1}
    assert {mib: _divisions_at(config, mib) for mib in expected} == expected
    assert config.backend == "cudaMallocAsync" and config.expandable_segments
    for key in ("release_lock_on_device_malloc:True", "pinned_use_device_host_register:True",
                "pinned_num_register_threads:8", "pinned_use_background_threads:True"):
        assert key in config.passthrough.split(",")
    assert config.to_env_string() == AllocatorConfig.from_env_string(config.to_env_string()).to_env_string()


def test_c10_allocator_config_max_split_20_is_valid():
    config = AllocatorConfig.from_env_string("max_split_size_mb:20,max_non_split_rounding_mb:40,"
                                             "garbage_collection_threshold:0.8")
    assert (config.max_split_size_bytes, config.max_non_split_rounding_bytes) == (20 * MiB, 40 * MiB)
    assert config.garbage_collection_threshold == 0.8


def test_c10_allocator_config_native_and_pinned_off():
    config = AllocatorConfig.from_env_string(
        "backend:native,expandable_segments:False,release_lock_on_device_malloc:False")
    assert config.backend == "native" and not config.expandable_segments
    pinned = AllocatorConfig.from_env_string("pinned_use_device_host_register:False,pinned_num_register_threads:4,"
                                             "pinned_use_background_threads:False")
    assert "pinned_num_register_threads:4" in pinned.passthrough


# The C++ test's third string, "[128:8,256:16,512:1,2048:8>:2]", lacks a comma before '>' and its
# 1024 MiB figure carries over from the previous call; autotune parses each string on its own and
# rejects the malformed one, so that case is not reproduced.


def test_max_non_split_rounding_lets_a_big_request_take_a_bigger_cached_block():
    """max_non_split_rounding_mb: a request >= max_split_size takes a cached block < request + it."""
    def reserved(settings: str) -> int:
        sim = CachingAllocatorSim(AllocatorConfig.from_env_string(settings))
        sim.free(sim.malloc(76 * MiB))
        sim.malloc(50 * MiB)
        return sim.stats()["reserved_bytes"]

    assert reserved("max_split_size_mb:40") == 126 * MiB                            # 76 >= 50 + 20
    assert reserved("max_split_size_mb:40,max_non_split_rounding_mb:30") == 76 * MiB  # 76 < 50 + 30
