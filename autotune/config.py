"""TrialConfig: everything one trial varies, as a frozen dataclass tree that round-trips YAML.

Each default is defined once, here. `TrialConfig.load(path)` rejects unknown keys, wrong types and
impossible values before any model is built, naming every problem with its key path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from autotune import schema

# The allocator settings parse in their own module; callers import them from here as before.
from autotune.allocator_conf import (
    ALLOC_CONF_VARS as ALLOC_CONF_VARS,
    AllocatorConfig as AllocatorConfig,
    effective_alloc_conf as effective_alloc_conf,
)
from autotune.errors import ConfigError
from autotune.schema import Problems

Phase = Literal["generation", "experience", "actor_train", "critic_train"]
PHASES: tuple[str, ...] = get_args(Phase)
_MiB = 1 << 20
# The largest memory budget (GiB) any command takes, for a simulated device or a search: far above any
# accelerator's memory, and far below where a byte count stops being an integer float arithmetic can hold.
MAX_MEMORY_GB = 65536.0


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
        yield from schema.non_finite(self)
        for key in ("actor", "critic", "reference", "reward"):
            if getattr(self, key) == "":
                yield key, "must not be empty (use null for the default)"


@dataclass(frozen=True, kw_only=True)
class WorkloadConfig:
    """The RLHF run itself: what is generated, how much, and how it learns."""

    task: str = "target-token"                 # a programmatic task from autotune.rlhf.tasks
    prompts_file: str | None = None            # local JSONL of {"prompt": ...} lines instead of task prompts
    # "task": the reward model still runs (its memory counts), the task scores
    reward_source: Literal["task", "model"] = "task"
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
        yield from schema.non_finite(self)
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
        yield from schema.non_finite(self)
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
        yield from schema.non_finite(self)
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                yield key, f"must be in [0, 1), got {value}"
        if self.weight_decay < 0:
            yield "weight_decay", f"must be non-negative, got {self.weight_decay}"
        if self.eps <= 0:
            yield "eps", f"must be positive, got {self.eps}"


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
        yield from schema.non_finite(self)
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
        yield from schema.non_finite(self)
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
