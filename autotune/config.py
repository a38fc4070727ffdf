"""TrialConfig: everything one trial varies, as a frozen dataclass tree that round-trips YAML.

Each default is defined once, here. `TrialConfig.load(path)` rejects unknown keys, wrong types and
impossible values before any model is built, naming every problem with its key path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Mapping, get_args

from autotune import schema
from autotune.errors import ConfigError

Phase = Literal["generation", "experience", "actor_train", "critic_train"]
PHASES: tuple[str, ...] = get_args(Phase)
Problems = Iterator[tuple[str, str]]

_MiB = 1 << 20
# The largest memory budget (GiB) any command takes, for a simulated device or a search: far above any
# accelerator's memory, and far below where a byte count stops being an integer float arithmetic can hold.
MAX_MEMORY_GB = 65536.0


def _non_finite(record: object) -> Problems:
    """Every float field of `record` that is NaN or infinite: each range check below would let NaN
    through (every comparison with NaN is false), and an infinite size or rate is never meant."""
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            yield f.name, f"must be a finite number, got {value}"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which networks a trial builds. Each entry is a preset name or a local Hugging Face directory."""

    actor: str = "llama-tiny"
    critic: str | None = None      # None: same as the actor (DeepSpeed-Chat pairs opt-1.3b with opt-350m)
    reference: str | None = None   # None: same as the actor, as the KL anchor must be
    reward: str | None = None      # None: same as the critic
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def critic_name(self) -> str:
        return self.critic or self.actor

    @property
    def reference_name(self) -> str:
        return self.reference or self.actor

    @property
    def reward_name(self) -> str:
        return self.reward or self.critic_name

    def problems(self) -> Problems:
        yield from _non_finite(self)
        for key in ("actor", "critic", "reference", "reward"):
            if getattr(self, key) == "":
                yield key, "must not be empty (use null for the default)"


@dataclass(frozen=True, kw_only=True)
class WorkloadConfig:
    """The RLHF run itself: what is generated, how much, and how it learns."""

    task: str = "target-token"                 # a programmatic task from autotune.rlhf.tasks
    prompts_file: str | None = None            # local JSONL of {"prompt": ...} lines instead of task prompts
    reward_source: Literal["task", "model"] = "task"  # "task": the reward model still runs (its memory counts), the task scores
    batch_size: int = 8                        # prompts per RLHF iteration
    group_size: int = 4                        # GRPO samples per prompt
    prompt_len: int = 8
    gen_len: int = 16
    steps: int = 8                             # RLHF iterations
    ppo_epochs: int = 4                        # PPO passes over each batch; 1 barely moves reward in a short trial
    micro_batch: int = 8                       # sequences per forward/backward in training
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    kl_coef: float = 0.02
    clip_ratio: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    temperature: float = 1.0
    seed: int = 0

    def problems(self) -> Problems:
        yield from _non_finite(self)
        for key in ("batch_size", "group_size", "prompt_len", "gen_len", "steps", "ppo_epochs", "micro_batch"):
            value = getattr(self, key)
            if value < 1:
                yield key, f"must be at least 1, got {value}"
        for key in ("actor_lr", "critic_lr", "temperature"):
            value = getattr(self, key)
            if value <= 0:
                yield key, f"must be positive, got {value}"
        for key in ("kl_coef", "clip_ratio", "value_clip"):
            value = getattr(self, key)
            if value < 0:
                yield key, f"must be non-negative, got {value}"
        for key in ("gamma", "lam"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                yield key, f"must be in [0, 1], got {value}"
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            yield "prompts_file", f"no such file: {self.prompts_file}"


@dataclass(frozen=True, kw_only=True)
class PartitionSpec:
    """Which parameters keep full AdamW state (FRUGAL). `autotune.optim.partition` turns it into groups.

    `layers` names the state-full transformer blocks explicitly; otherwise `density` and `placement`
    choose round(n_layers * density) of them (`top`, `bottom`, `spread`), or `rotate` hands the
    optimizer every Linear weight and lets it keep round(n_blocks * density) state-full at a time,
    moving on every `update_gap` steps in `order` (the paper's block variant). `window` is `slide`
    (the authors' rule: slide on by k modulo n, every rotating block's moments restart at each move)
    or `cycle` (autotune's earlier rule: restart from the first block after each pass).
    """

    layers: tuple[int, ...] | None = None
    density: float = 0.25
    placement: Literal["top", "bottom", "spread", "rotate"] = "rotate"
    order: Literal["descending", "ascending", "random", "mirror", "sweep"] = "descending"
    window: Literal["slide", "cycle"] = "slide"
    update_gap: int = 200
    mode: Literal["block", "column"] = "block"
    state_free_rule: Literal["signsgd", "sgd", "none"] = "signsgd"
    state_free_lr_scale: float = 1.0
    embeddings_statefull: bool = True
    lm_head_statefull: bool = True
    norms_statefull: bool = True

    def problems(self) -> Problems:
        yield from _non_finite(self)
        if not 0.0 <= self.density <= 1.0:
            yield "density", f"must be in [0, 1], got {self.density}"
        if self.update_gap < 1:
            yield "update_gap", f"must be at least 1, got {self.update_gap}"
        if self.state_free_lr_scale < 0:
            yield "state_free_lr_scale", f"must be non-negative, got {self.state_free_lr_scale}"
        if self.layers is not None and any(i < 0 for i in self.layers):
            yield "layers", f"layer indices must be non-negative, got {list(self.layers)}"
        if self.mode == "column" and (self.layers is not None or self.placement != "rotate"):
            yield "mode", "'column' splits every eligible weight by columns; it needs placement 'rotate' and no layers"

    @property
    def rotates(self) -> bool:
        """The optimizer, not the spec, picks the state-full blocks (the paper's block variant)."""
        return self.layers is None and self.placement == "rotate"


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The actor's optimizer, and the critic's. FRUGAL uses `partition`; AdamW ignores it."""

    name: Literal["adamw", "frugal"] = "adamw"
    critic: Literal["adamw", "frugal"] = "adamw"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    partition: PartitionSpec = field(default_factory=PartitionSpec)

    def problems(self) -> Problems:
        yield from _non_finite(self)
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                yield key, f"must be in [0, 1), got {value}"
        if self.weight_decay < 0:
            yield "weight_decay", f"must be non-negative, got {self.weight_decay}"
        if self.eps <= 0:
            yield "eps", f"must be positive, got {self.eps}"


# PyTorch reads PYTORCH_ALLOC_CONF first and falls back to the older PYTORCH_CUDA_ALLOC_CONF, which
# newer versions warn about; versions before the rename read only the older name. Setting both to
# one value reaches every version.
ALLOC_CONF_VARS: tuple[str, ...] = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
_MIN_SPLIT_MB = 20                 # kLargeBuffer / 1 MiB: the smallest max_split_size_mb PyTorch takes
_MAX_REGISTER_THREADS = 128        # pinned_max_register_threads()
_TRUE_FALSE = ("True", "False")    # PyTorch accepts exactly these spellings, and fails at CUDA start otherwise
_DEVICES = ("cuda", "hip", "device")   # PyTorch accepts the CUDA, ROCm and device-neutral spellings


def _passthrough_keys() -> dict[str, str]:
    """Keys that change nothing the simulator models, with the kind of value PyTorch wants."""
    keys = {"backend": "backend", "pinned_num_register_threads": "threads",
            "pinned_use_background_threads": "bool", "pinned_reserve_segment_size_mb": "int",
            "graph_capture_record_stream_reuse": "bool"}
    for dev in _DEVICES:
        keys[f"release_lock_on_{dev}malloc"] = "bool"
        keys[f"release_lock_on_{dev}_malloc"] = "bool"
        keys[f"pinned_use_{dev}_host_register"] = "bool"
    return keys


_PASSTHROUGH = _passthrough_keys()


@dataclass(frozen=True, kw_only=True)
class AllocatorConfig:
    """PyTorch CUDA caching-allocator settings (`PYTORCH_ALLOC_CONF`, formerly `PYTORCH_CUDA_ALLOC_CONF`).

    The same record configures the real allocator (through the environment, before CUDA starts) and
    the simulator in `autotune.memory.allocator`. Every key current PyTorch accepts parses; the ones
    that change what the simulator models get a field, the rest (`backend`, `release_lock_on_cudamalloc`,
    `pinned_*`, `graph_capture_record_stream_reuse`) are kept verbatim in `passthrough` and reach the
    trial's environment unchanged.
    """

    expandable_segments: bool = False
    max_split_size_mb: int | None = None
    garbage_collection_threshold: float | None = None
    # One division count for every size, or PyTorch's per-interval list, e.g. "[64:8,256:4,>:1]".
    roundup_power2_divisions: int | str | None = None
    # Per-process memory fraction (torch.cuda.set_per_process_memory_fraction, or the
    # `per_process_memory_fraction` key); the GC threshold only acts under one.
    memory_fraction: float | None = None
    # A request >= max_split_size takes a cached block at most this much bigger (default 20 MiB).
    max_non_split_rounding_mb: int | None = None
    passthrough: str = ""

    def problems(self) -> Problems:
        yield from _non_finite(self)
        for key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            value = getattr(self, key)
            if value is not None and value < _MIN_SPLIT_MB:
                yield key, f"must be at least {_MIN_SPLIT_MB} (PyTorch's minimum), got {value}"
        if self.garbage_collection_threshold is not None and not 0.0 < self.garbage_collection_threshold < 1.0:
            yield "garbage_collection_threshold", f"must be in (0, 1), got {self.garbage_collection_threshold}"
        try:
            self.roundup_intervals()
        except ValueError as exc:
            yield "roundup_power2_divisions", str(exc)
        if self.memory_fraction is not None and not 0.0 <= self.memory_fraction <= 1.0:
            yield "memory_fraction", f"must be in [0, 1], got {self.memory_fraction}"
        try:
            _parse_pairs(self.passthrough, allowed=_PASSTHROUGH)
        except ValueError as exc:
            yield "passthrough", str(exc)

    @property
    def max_split_size_bytes(self) -> int | None:
        return None if self.max_split_size_mb is None else self.max_split_size_mb * _MiB

    @property
    def max_non_split_rounding_bytes(self) -> int:
        return (self.max_non_split_rounding_mb or _MIN_SPLIT_MB) * _MiB

    @property
    def backend(self) -> str:
        """`native` (the caching allocator autotune simulates) or `cudaMallocAsync`."""
        return dict(_parse_pairs(self.passthrough, allowed=_PASSTHROUGH)).get("backend", "native")

    def roundup_intervals(self) -> tuple[int, ...]:
        """The 16 division counts PyTorch keeps, for sizes [1 MiB, 2 MiB), [2, 4), ... up to >= 32 GiB.

        0 means no power-of-two rounding. Raises ValueError on a malformed or non-power-of-two value.
        """
        return roundup_table(self.roundup_power2_divisions)

    def to_env_string(self) -> str:
        """The `PYTORCH_ALLOC_CONF` value; empty when everything is PyTorch's default.

        `memory_fraction` is left out: PyTorch before 2.10 rejects `per_process_memory_fraction`, so
        the CUDA probe sets it through `torch.cuda.set_per_process_memory_fraction` instead.
        """
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size_mb is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size_mb}")
        if self.max_non_split_rounding_mb is not None:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding_mb}")
        if self.garbage_collection_threshold is not None:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold}")
        if self.roundup_power2_divisions is not None:
            parts.append(f"roundup_power2_divisions:{self.roundup_power2_divisions}")
        if self.passthrough:
            parts.append(self.passthrough)
        return ",".join(parts)

    @classmethod
    def from_env_string(cls, text: str, *, source: str = "PYTORCH_ALLOC_CONF") -> AllocatorConfig:
        """Parse allocator-config syntax ("key:value,key:value"), as PyTorch's `parseArgs` does.

        Raises:
            ConfigError: naming every malformed pair, unknown key or bad value.
        """
        problems: list[str] = []
        try:
            pairs = _parse_pairs(text, allowed={**_MODELLED, **_PASSTHROUGH})
        except ValueError as exc:
            raise ConfigError(str(exc), source=source) from None
        values: dict[str, object] = {}
        passthrough = []
        for key, raw in pairs:
            if key in _PASSTHROUGH:
                passthrough.append(f"{key}:{raw}")
                continue
            field_name, convert = _MODELLED[key]
            try:
                values[field_name] = convert(raw)
            except ValueError:
                problems.append(f"{key}: cannot parse {raw!r}")
        if passthrough:
            values["passthrough"] = ",".join(passthrough)
        if problems:
            raise ConfigError(problems, source=source)
        return schema.from_dict(cls, values, source=source)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AllocatorConfig:
        """The settings PyTorch would use: `PYTORCH_ALLOC_CONF`, else `PYTORCH_CUDA_ALLOC_CONF`."""
        for name in ALLOC_CONF_VARS:
            if name in environ:
                return cls.from_env_string(environ[name], source=name)
        return cls()


def effective_alloc_conf(environ: Mapping[str, str]) -> str:
    """The allocator string PyTorch reads from `environ` (the primary variable wins)."""
    return next((environ[name] for name in ALLOC_CONF_VARS if name in environ), "")


def _roundup_value(raw: str) -> int | str:
    return raw if raw.startswith("[") else int(raw)


def _true_false(raw: str) -> bool:
    if raw not in _TRUE_FALSE:
        raise ValueError(raw)
    return raw == "True"


_MODELLED: dict[str, tuple[str, object]] = {
    "expandable_segments": ("expandable_segments", _true_false),
    "max_split_size_mb": ("max_split_size_mb", int),
    "max_non_split_rounding_mb": ("max_non_split_rounding_mb", int),
    "garbage_collection_threshold": ("garbage_collection_threshold", float),
    "roundup_power2_divisions": ("roundup_power2_divisions", _roundup_value),
    "per_process_memory_fraction": ("memory_fraction", float),
}


def _lex(text: str) -> list[str]:
    """PyTorch's `lexArgs`: `,` `:` `[` `]` are tokens of their own; spaces are dropped."""
    tokens, word = [], ""
    for ch in text:
        if ch in ",:[]":
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
        elif ch != " ":
            word += ch
    return tokens + ([word] if word else [])


def _parse_pairs(text: str, *, allowed: Mapping[str, object]) -> list[tuple[str, str]]:
    """(key, raw value) pairs in order; a bracketed list comes back as its text, e.g. "[64:8,>:1]".

    Raises:
        ValueError: a malformed pair, an unknown key, or a passthrough value PyTorch would refuse.
    """
    tokens, pairs, i = _lex(text), [], 0
    while i < len(tokens):
        key = tokens[i]
        if key == ",":
            i += 1
            continue
        if key not in allowed:
            known = sorted(k for k in allowed if not k.startswith(("pinned_use_", "release_lock_on_")))
            raise ValueError(f"unknown key {key!r} (PyTorch's allocator takes {', '.join(known)}, "
                             "release_lock_on_cudamalloc and pinned_use_cuda_host_register)")
        if i + 2 >= len(tokens) or tokens[i + 1] != ":" or tokens[i + 2] in ",:]":
            raise ValueError(f"{key!r} is not of the form key:value")
        i += 2
        if tokens[i] == "[":
            close = tokens.index("]", i) if "]" in tokens[i:] else -1
            if close < 0:
                raise ValueError(f"{key}: a '[' without its ']'")
            raw, i = "".join(tokens[i:close + 1]), close + 1
        else:
            raw, i = tokens[i], i + 1
        _check_passthrough(key, raw)
        pairs.append((key, raw))
    return pairs


def _check_passthrough(key: str, raw: str) -> None:
    kind = _PASSTHROUGH.get(key)
    if kind == "bool" and raw not in _TRUE_FALSE:
        raise ValueError(f"{key} takes True or False, got {raw!r}")
    if kind == "backend" and raw not in ("native", "cudaMallocAsync"):
        raise ValueError(f"backend takes native or cudaMallocAsync, got {raw!r}")
    if kind in ("int", "threads"):
        if not raw.isdigit():
            raise ValueError(f"{key} takes a whole number, got {raw!r}")
        if kind == "threads" and not (_power_of_two(int(raw)) and int(raw) <= _MAX_REGISTER_THREADS):
            raise ValueError(f"{key} must be a power of two up to {_MAX_REGISTER_THREADS}, got {raw}")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_ROUNDUP_INTERVALS = 16     # kRoundUpPowerOfTwoIntervals: [1 MiB, 2 MiB) ... [32 GiB, 64 GiB) and above


def roundup_table(value: int | str | None) -> tuple[int, ...]:
    """PyTorch's `roundup_power2_divisions` table (one count per power-of-two interval from 1 MiB).

    An int fills every interval. The list form "[64:8,256:4,>:1]" sets the interval that starts at
    64 MiB (and every smaller one, as the first entry does) to 8, the one at 256 MiB to 4, and every
    interval after the last named one to 1 (`>`), following c10/test/core/AllocatorConfig_test.cpp.

    Raises:
        ValueError: a count or an interval that is not a power of two (counts may also be 0).
    """
    table = [0] * _ROUNDUP_INTERVALS
    if value is None:
        return tuple(table)
    if isinstance(value, int):
        if not _power_of_two(value):
            raise ValueError(f"must be a power of two, got {value}")
        return (value,) * _ROUNDUP_INTERVALS
    tokens = [t for t in _lex(value) if t not in ("[", "]")]
    entries, i = [], 0
    while i < len(tokens):
        if tokens[i] == ",":
            i += 1
            continue
        if i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise ValueError(f"{value!r}: expected interval:divisions entries")
        entries.append((tokens[i], tokens[i + 2]))
        i += 3
    last, first = -1, True
    for interval, raw in entries:
        if not raw.isdigit() or not (int(raw) == 0 or _power_of_two(int(raw))):
            raise ValueError(f"{value!r}: divisions must be a power of two or 0, got {raw!r}")
        divisions = int(raw)
        if interval == ">":
            table[last + 1:] = [divisions] * (_ROUNDUP_INTERVALS - last - 1)
            continue
        if not interval.isdigit() or not _power_of_two(int(interval)):
            raise ValueError(f"{value!r}: intervals must be powers of two (MiB) or '>', got {interval!r}")
        index = min(int(interval).bit_length() - 1, _ROUNDUP_INTERVALS - 1)
        if first:
            table[:index] = [divisions] * index
            first = False
        table[index] = divisions
        last = index
    return tuple(table)


@dataclass(frozen=True, kw_only=True)
class MemoryConfig:
    """The memory interventions; docs/SEARCH.md, "Where the interventions act", says where each acts."""

    empty_cache_after: tuple[Phase, ...] = ()
    actor_gradient_checkpointing: bool = False
    critic_gradient_checkpointing: bool = False
    offload_reference: bool = False        # reference model lives on the CPU, moved in for experience only
    offload_reward: bool = False           # same for the reward model
    zero_stage: int = 0                    # DeepSpeed ZeRO; 0 without offload needs no DeepSpeed
    offload_optimizer: bool = False        # ZeRO-Offload of optimizer state to the CPU
    static_kv_cache: bool = False          # preallocate the generation KV cache instead of growing it
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)

    def problems(self) -> Problems:
        yield from _non_finite(self)
        if self.zero_stage not in (0, 1, 2, 3):
            yield "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}"
        if len(set(self.empty_cache_after)) != len(self.empty_cache_after):
            yield "empty_cache_after", f"lists a phase twice: {list(self.empty_cache_after)}"

    @property
    def needs_deepspeed(self) -> bool:
        return self.zero_stage > 0 or self.offload_optimizer


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One trial: a model, an RLHF algorithm and workload, an optimizer partition and a memory policy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: Literal["ppo", "grpo"] = "ppo"
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    device: Literal["cuda", "cpu", "fake"] = "cpu"
    # Simulated device capacity for the cpu and fake backends: a trial over it is an OOM. None: unlimited.
    device_memory_gb: float | None = None
    # Data-parallel ranks of one trial (DeepSpeed, started by torchrun). It sits here, beside `device`,
    # and not in MemoryConfig: it is the hardware a trial spans, not an intervention the tuner turns
    # on or off, and every rank runs the whole workload, so it scales what ZeRO shards rather than
    # what any one memory switch does. `fake` plans rank 0 of `world_size`.
    world_size: int = 1

    def problems(self) -> Problems:
        yield from _non_finite(self)
        if self.device_memory_gb is not None and self.device_memory_gb <= 0:
            yield "device_memory_gb", f"must be positive, got {self.device_memory_gb}"
        elif self.device_memory_gb is not None and self.device_memory_gb > MAX_MEMORY_GB:
            yield "device_memory_gb", f"must be at most {MAX_MEMORY_GB:g} GiB, got {self.device_memory_gb:g}"
        if self.world_size < 1:
            yield "world_size", f"must be at least 1, got {self.world_size}"
        if self.algorithm == "grpo" and "critic_train" in self.memory.empty_cache_after:
            yield "memory.empty_cache_after", "lists critic_train, but GRPO has no critic"
        if self.memory.offload_optimizer and self.memory.zero_stage == 0:
            yield "memory.offload_optimizer", "needs memory.zero_stage >= 1 (ZeRO-Offload)"
        uses_frugal = self.optimizer.name == "frugal" or (self.algorithm == "ppo" and self.optimizer.critic == "frugal")
        if uses_frugal and self.optimizer.partition.rotates and self.memory.zero_stage > 0:
            yield ("optimizer.partition.placement", "'rotate' cannot work under ZeRO (memory.zero_stage > 0 flattens "
                   "parameter groups); choose top, bottom, spread or explicit layers")

    @property
    def uses_deepspeed(self) -> bool:
        """DeepSpeed runs the updates: ZeRO or offload asked for, or more than one rank to keep in step."""
        return self.memory.needs_deepspeed or self.world_size > 1

    # -- I/O -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> TrialConfig:
        return schema.load_yaml(cls, path)

    @classmethod
    def from_dict(cls, data: dict, *, source: str | None = None) -> TrialConfig:
        return schema.from_dict(cls, data, source=source)

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    def dump(self, path: str | Path | None = None) -> str:
        return schema.dump_yaml(self, path)

    def replace(self, **overrides: object) -> TrialConfig:
        """A copy with dotted-path overrides, e.g. replace(**{"memory.zero_stage": 2}); validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"{dotted}: unknown key path")
                node = node[key]
            if leaf not in node:
                raise ConfigError(f"{dotted}: unknown key path")
            node[leaf] = list(value) if isinstance(value, tuple) else value
        return TrialConfig.from_dict(data)

    def config_hash(self) -> str:
        """A short stable hash of the full config, for naming and de-duplicating trials."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def flatten(obj: object, prefix: str = "") -> dict[str, object]:
    """A dataclass tree as {'memory.zero_stage': 2, ...}: for MLflow params and search spaces."""
    out: dict[str, object] = {}
    data = schema.to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    for key, value in data.items():  # type: ignore[union-attr]
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
