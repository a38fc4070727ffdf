from __future__ import annotations

import pytest

from autotune.config import AllocatorConfig, TrialConfig, flatten
from autotune.errors import ConfigError


def test_default_config_round_trips_through_yaml(tmp_path):
    cfg = TrialConfig().replace(**{"memory.empty_cache_after": ("generation",), "optimizer.partition.layers": (0, 2)})
    path = tmp_path / "trial.yaml"
    cfg.dump(path)
    assert TrialConfig.load(path) == cfg


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("memory:\n  zero_stage: 4\n  bogus: 1\nworkload:\n  steps: many\n"
                    "optimizer:\n  partition:\n    density: 1.5\n")
    with pytest.raises(ConfigError) as err:
        TrialConfig.load(path)
    text = str(err.value)
    assert "memory.bogus: unknown key" in text
    assert "workload.steps: expected an integer, got 'many'" in text
    # value checks run only on records whose types are right, so zero_stage waits for the type fix
    fixed = path.read_text().replace("  bogus: 1\n", "").replace("many", "3")
    path.write_text(fixed)
    with pytest.raises(ConfigError) as err:
        TrialConfig.load(path)
    assert "memory.zero_stage must be 0, 1, 2 or 3, got 4" in str(err.value)
    assert "optimizer.partition.density must be in [0, 1], got 1.5" in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="GRPO has no critic"):
        TrialConfig().replace(algorithm="grpo", **{"memory.empty_cache_after": ("critic_train",)})
    with pytest.raises(ConfigError, match="offload_optimizer"):
        TrialConfig().replace(**{"memory.offload_optimizer": True})


def test_column_mode_needs_a_rotating_partition():
    with pytest.raises(ConfigError, match="optimizer.partition.mode 'column' .* needs placement 'rotate'"):
        TrialConfig().replace(**{"optimizer.partition.mode": "column", "optimizer.partition.placement": "top"})


def test_replace_rejects_unknown_paths():
    with pytest.raises(ConfigError, match="memory.nope: unknown key path"):
        TrialConfig().replace(**{"memory.nope": 1})


def test_config_hash_tracks_content():
    a = TrialConfig()
    assert a.config_hash() == TrialConfig().config_hash()
    assert a.config_hash() != a.replace(**{"memory.zero_stage": 1}).config_hash()


def test_flatten_uses_dotted_keys():
    flat = flatten(TrialConfig())
    assert flat["memory.allocator.expandable_segments"] is False
    assert flat["optimizer.partition.density"] == 0.25


@pytest.mark.parametrize(
    "text, expected",
    [
        ("expandable_segments:True,max_split_size_mb:128",
         AllocatorConfig(expandable_segments=True, max_split_size_mb=128)),
        ("garbage_collection_threshold:0.6, roundup_power2_divisions:4",
         AllocatorConfig(garbage_collection_threshold=0.6, roundup_power2_divisions=4)),
        ("", AllocatorConfig()),
    ],
)
def test_allocator_env_string_round_trips(text, expected):
    parsed = AllocatorConfig.from_env_string(text)
    assert parsed == expected
    assert AllocatorConfig.from_env_string(parsed.to_env_string()) == parsed


@pytest.mark.parametrize("text, needle", [
    ("max_split_size_mb", "not of the form key:value"),
    ("pinned_memory:True", "unknown key 'pinned_memory'"),
    ("max_split_size_mb:lots", "cannot parse 'lots'"),
    ("max_split_size_mb:10", "at least 20"),
])
def test_allocator_env_string_rejects_bad_input(text, needle):
    with pytest.raises(ConfigError, match=needle):
        AllocatorConfig.from_env_string(text)
