"""Reward runs: the reward objective, measured once per reward key and shared by every trial that has it.

Memory depends on every knob but not on the values inside the tensors; the reward depends on the
optimizer and the workload but, by construction, not on where tensors live or when the cache is
emptied. So a trial's reward comes from a *reward run*, identified by a *reward key*: a hash of the
part of the TrialConfig that can change the numbers. Trials that differ only in neutral knobs share
one reward run.

A knob is neutral only where a test shows a bit-identical reward curve and evaluation reward on the
CPU with and without it (tests/rlhf/test_reward_run.py). The candidates and the verdicts:

- `memory.empty_cache_after`, `memory.allocator.*`: neutral. They act on the caching allocator only.
- `memory.actor_gradient_checkpointing`, `memory.critic_gradient_checkpointing`: neutral. The
  recomputed forward is the same arithmetic in the same order (no dropout in these models).
- `memory.offload_reference`, `memory.offload_reward`: neutral. The same frozen weights are used,
  wherever they wait between experience phases.
- `memory.static_kv_cache`: neutral. The static cache masks the unused positions, and the
  probabilities that are sampled come out bit-identical.
- `memory.zero_stage` (no offload, world size 1): NOT neutral, in the key. DeepSpeed's engine
  scales the loss and averages gradients through its own buffers, so the updates differ in the last
  bits and the curves drift apart (and the reward run would need DeepSpeed, about 30 s of JIT).
- `memory.offload_optimizer`: not a candidate, in the key: the update runs on the host copy.

The reward run itself executes `reward_config(cfg, proxy=...)`: the full model where it fits, or a
proxy with the partition mapped onto the proxy's layers (density and placement carry over; an
explicit layer list maps proportionally), neutral knobs at their defaults. Key a study's cache by
`reward_key(reward_config(cfg, proxy=p))`: that key names what actually runs, and it merges
partitions that pick the same proxy layers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autotune import schema
from autotune.config import PartitionSpec, TrialConfig
from autotune.errors import AutotuneError
from autotune.result import RewardPoint

log = logging.getLogger(__name__)

NEUTRAL_KNOBS: tuple[str, ...] = (
    "memory.empty_cache_after",
    "memory.allocator",
    "memory.actor_gradient_checkpointing",
    "memory.critic_gradient_checkpointing",
    "memory.offload_reference",
    "memory.offload_reward",
    "memory.static_kv_cache",
)

# Where the measurement happens, not what is measured: never part of the key.
_PLACE_KNOBS = ("device", "device_memory_gb")

# GRPO has no critic: these fields cannot change a GRPO run's numbers.
_CRITIC_ONLY = ("optimizer.critic", "workload.critic_lr", "workload.value_clip", "workload.gamma", "workload.lam")

# The proxy that carries a big model's reward runs on a CPU: llama-tiny's width (128) and vocabulary
# (512) at the model's own depth, `llama-tiny-<N>`, so that a partition maps onto it layer for layer
# (llama-1b -> llama-tiny-16, the OPT presets -> llama-tiny-24). Measured on the shared 2-core CPU:
# a step of the default workload costs ~1.4 s on llama-tiny-16 (a 64-step, two-seed reward run ~3.5
# CPU-minutes), several times that on llama-small (its 32k vocabulary) and ~10 s on smollm2-135m.
# Every family gets the same Llama proxy: a random-init model learns the programmatic tasks the same
# way whatever its family (benchmarks/proxy_fidelity.py checks it against the pretrained smollm2-135m).
DEEP_TINY_PROXY = "llama-tiny-{layers}"
TEXT_PROXY = "smollm2-135m"   # the smallest model with a tokenizer, for tasks scored on decoded text
MAX_REWARD_SEEDS = 100   # training seeds one reward run may average (search and `autotune reward`)
DEFAULT_REWARD_SEEDS = 2   # a search's default: the least that gives a standard error over training seeds
# A search's reward runs start this long and double until the baseline learns (autotune.tuner.measure).
# The llama-tiny-16 proxy on the target-token task, AdamW, two seeds: 0.125 (chance) untrained, 0.21
# and 0.18 at 16 steps, 0.38 and 0.26 at 32 (the seeds are mid-way through learning it: 3 SE), 0.416
# and 0.413 at 64 (a gain of about 100 SE). So 32 steps would be spent only to be doubled.
DEFAULT_REWARD_STEPS = 64
MAX_REWARD_STEPS = 256
# Largest model whose reward runs on the CPU at full size: smollm2-135m and llama-small run themselves
# (a search on them trains them for real anyway); llama-1b and the OPT presets go to a proxy.
CPU_FULL_SIZE_MAX_PARAMS = 150_000_000
# Where a reward run scores its policy on the way, as shares of its steps (and at the end): a
# learning curve shows whether a config that keeps less of the gain is still catching up.
CURVE_FRACTIONS = (0.25, 0.5)
Status = Literal["ok", "oom", "error", "timeout"]


@dataclass(frozen=True, kw_only=True)
class RewardOutcome:
    """What one reward run measured, stored in the study under its key.

    Attributes:
        key: The reward key of the config that ran (`reward_key(reward_config(...))`).
        model: The actor that actually ran (the proxy, when there was one).
        proxy: Whether `model` stands in for a bigger model.
        steps: RLHF iterations of the run.
        seeds: Training seeds the run averaged (workload.seed, workload.seed + 1, ...).
        reward: The trained policy's score on the fixed evaluation prompts (the mean over seeds).
        reward_se: Its standard error: over prompts for one seed; over seeds for several (the
            seed-to-seed spread of an 8-step run is many times the prompts' standard error).
        initial_reward: The untrained policy's score on the same prompts.
        reward_curve: The mean task reward of each training iteration's samples.
        points: The evaluation score at step 0 (untrained), at `CURVE_FRACTIONS` of the run and at
            its end, one value per seed: what the kept reward gain is computed from.
        status: ok, oom, error or timeout; a failed run is stored too, so it is not retried forever.
        message: Why it failed; empty when ok.
        wall_time_s: Seconds the run took.
    """

    key: str
    model: str
    proxy: bool = False
    steps: int = 0
    seeds: int = 1
    reward: float | None = None
    reward_se: float | None = None
    initial_reward: float | None = None
    reward_curve: tuple[float, ...] = ()
    points: tuple[RewardPoint, ...] = ()
    status: Status = "ok"
    message: str = ""
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        """Where the reward came from, e.g. "llama-small proxy, 8 steps" or "llama-tiny, 4 steps, 3 seeds"."""
        seeds = f", {self.seeds} seeds" if self.seeds > 1 else ""
        return f"{Path(self.model).name}{' proxy' if self.proxy else ''}, {self.steps} steps{seeds}"

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RewardOutcome:
        return schema.from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        schema.dump_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> RewardOutcome:
        return schema.load_json(cls, path)


# -- the key -------------------------------------------------------------------------------------
def reward_key(cfg: TrialConfig, *, seeds: int = 1) -> str:
    """A short stable hash of the part of `cfg` that can change the reward, and of the seed count.

    Neutral knobs are reset to their defaults, the device is ignored, and fields that cannot act
    are dropped: the partition when no optimizer is FRUGAL, critic settings under GRPO, an
    `update_gap` longer than the run. One seed keeps the keys that single-seed runs always had.
    """
    data = _canonical(cfg.to_dict())
    for dotted in _PLACE_KNOBS:
        _pop(data, dotted)
    if seeds > 1:
        data["reward_seeds"] = seeds
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _canonical(data: dict) -> dict:
    defaults = TrialConfig().to_dict()
    for dotted in NEUTRAL_KNOBS:
        _put(data, dotted, _get(defaults, dotted))
    opt = data["optimizer"]
    critic_trains = data["algorithm"] == "ppo"
    if data["algorithm"] == "grpo":
        for dotted in _CRITIC_ONLY:
            _put(data, dotted, _get(defaults, dotted))
    if opt["name"] != "frugal" and not (critic_trains and opt["critic"] == "frugal"):
        opt["partition"] = defaults["optimizer"]["partition"]
        return data
    part = opt["partition"]
    if part["layers"] is not None or part["placement"] != "rotate":
        # A static partition is the set of layers it picks: density 0.25 and 0.3 of 4 layers are
        # the same run. The window schedule (order, update_gap) never runs.
        layers = _static_layers(part, data["model"]["actor"])
        if layers is not None:
            opt["partition"] = {**part, **{name: defaults["optimizer"]["partition"][name]
                                           for name in ("density", "placement", "order", "update_gap")},
                                "layers": layers}
    else:
        part["update_gap"] = min(part["update_gap"], _optimizer_steps(data["workload"], data["algorithm"]))
    return data


def _static_layers(part: dict, model: str) -> list[int] | None:
    """The layers a static partition picks on `model`; None when that cannot be known (an unknown
    model, a layer it lacks): the key keeps the spec as written, and the run reports the problem."""
    from autotune.optim.partition import choose_layers

    try:
        spec = schema.from_dict(PartitionSpec, part, source="optimizer.partition")
        return choose_layers(_n_layers(model), spec)
    except AutotuneError:
        return None


def _optimizer_steps(workload: dict, algorithm: str) -> int:
    """Optimizer steps of the run: a window that moves less often than this never moves at all."""
    sequences = workload["batch_size"] * (workload["group_size"] if algorithm == "grpo" else 1)
    return workload["steps"] * workload["ppo_epochs"] * math.ceil(sequences / workload["micro_batch"])


# -- the proxy -----------------------------------------------------------------------------------
def default_proxy(model: str, *, cuda: bool | None = None, task: str | None = None) -> str | None:
    """The proxy that carries `model`'s reward runs by default, or None to run the model itself.

    On a GPU every model runs at full size. On a CPU a model up to `CPU_FULL_SIZE_MAX_PARAMS`
    parameters runs itself; a bigger one runs on `llama-tiny-<its depth>`, or on `smollm2-135m` for a
    task on decoded text, which needs a tokenizer that the presets lack.

    Args:
        model: A preset, `smollm2-135m` or a local Hugging Face directory.
        cuda: Whether reward runs get a GPU; None asks torch.
        task: The workload's task (`cfg.workload.task`), if known.

    Raises:
        ModelNotFoundError: `model` is no preset and no local model folder.
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return None
    import torch
    import transformers

    from autotune.rlhf.models import model_config
    from autotune.rlhf.tasks import TEXT_TASKS

    config = model_config(model)
    with torch.device("meta"):   # shapes only: a 1B model costs no memory
        params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters())
    if params <= CPU_FULL_SIZE_MAX_PARAMS:
        return None
    if task in TEXT_TASKS:
        return TEXT_PROXY
    return DEEP_TINY_PROXY.format(layers=config.num_hidden_layers)


def reward_config(cfg: TrialConfig, *, proxy: str | None) -> TrialConfig:
    """The config a reward run executes for `cfg`.

    The actor is `proxy` when one is given, with the critic, reference and reward models following
    it (a reward model of another tokenizer could not read the proxy's tokens); the partition is
    mapped onto the proxy's layers by `map_partition`. Neutral knobs are at their defaults, and the
    device is "cuda" on a GPU, else "cpu", with no simulated capacity (memory is not measured here).
    """
    import torch

    data = cfg.to_dict()
    data["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    data["device_memory_gb"] = None
    if proxy is not None and proxy != cfg.model.actor:
        data["model"].update(actor=proxy, critic=None, reference=None, reward=None)
        spec = cfg.optimizer.partition
        if spec.layers is not None:
            mapped = map_partition(spec, n_from=_n_layers(cfg.model.actor), n_to=_n_layers(proxy))
            data["optimizer"]["partition"]["layers"] = list(mapped.layers)  # type: ignore[arg-type]  # a list maps to a list
    # canonical on the model that runs: a static density becomes the proxy's layers
    return TrialConfig.from_dict(_canonical(data), source="reward config")


def map_partition(spec: PartitionSpec, *, n_from: int, n_to: int) -> PartitionSpec:
    """`spec` on a model of `n_to` layers instead of `n_from`: density and placement carry over as
    they are; an explicit layer list maps proportionally (see `map_layers`)."""
    if spec.layers is None:
        return spec
    return dataclasses.replace(spec, layers=map_layers(spec.layers, n_from=n_from, n_to=n_to))


def map_layers(layers: tuple[int, ...] | list[int], *, n_from: int, n_to: int) -> tuple[int, ...]:
    """Layer i of n_from covers the layers [i * n_to / n_from, (i + 1) * n_to / n_from) of n_to.

    Each source layer keeps its share of depth: the chosen fraction and where it sits carry over
    (4 of 16 layers at the top become the top 7 or 8 of 30; every layer of 16 maps onto at least one).
    """
    chosen: set[int] = set()
    for i in layers:
        lo = (i * n_to) // n_from
        hi = max(lo + 1, ((i + 1) * n_to) // n_from)
        chosen.update(range(lo, min(hi, n_to)))
    return tuple(sorted(chosen))


def _n_layers(model: str) -> int:
    from autotune.rlhf.models import model_config

    return int(model_config(model).num_hidden_layers)


# -- running one -------------------------------------------------------------------------------
def run_reward(cfg: TrialConfig, *, proxy_for: str | None = None, seeds: int = 1, jobs: int = 1) -> RewardOutcome:
    """Run a reward run in this process; a failed run is an outcome, never an exception.

    Args:
        cfg: What to run, normally `reward_config(trial_cfg, proxy=...)`.
        proxy_for: The model the study is about, when `cfg.model.actor` is a proxy for it.
        seeds: Train this many times, at `workload.seed` and the seeds after it, and report the
            mean reward with its standard error over seeds. Configs are compared seed for seed
            (the same seeds for every key), so a difference between them is not one seed's luck.
        jobs: Train up to this many seeds at once, each in its own process (one thread each); the
            numbers are the same bits as one after another.

    Returns:
        The outcome, keyed by `reward_key(cfg, seeds=seeds)`.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    start = time.perf_counter()
    common: dict[str, Any] = {"key": reward_key(cfg, seeds=seeds), "model": cfg.model.actor,
                              "steps": cfg.workload.steps, "seeds": seeds,
                              "proxy": proxy_for is not None and proxy_for != cfg.model.actor}
    configs = [cfg.replace(**{"workload.seed": cfg.workload.seed + offset}) if offset else cfg
               for offset in range(seeds)]
    results = []
    for run_cfg, (status, message, result) in zip(configs, _seed_runs(configs, jobs)):
        if status != "ok":
            if seeds > 1:
                message = f"seed {run_cfg.workload.seed}: {message}"
            return RewardOutcome(**common, status=status, message=message, wall_time_s=time.perf_counter() - start)
        results.append(result)
    points = merge_points([r.reward_points for r in results])
    if seeds == 1:
        only = results[0]
        figures = {"reward": only.reward, "reward_se": only.reward_se, "initial_reward": only.initial_reward,
                   "reward_curve": only.reward_curve}
    else:
        rewards = [r.reward for r in results]
        curves = [r.reward_curve for r in results]
        figures = {"reward": statistics.fmean(rewards), "reward_se": statistics.stdev(rewards) / math.sqrt(seeds),
                   "initial_reward": statistics.fmean(r.initial_reward for r in results),
                   "reward_curve": tuple(statistics.fmean(step) for step in zip(*curves))}
    return RewardOutcome(**common, **figures, points=points, wall_time_s=time.perf_counter() - start)


def curve_steps(steps: int) -> tuple[int, ...]:
    """The midway steps a run of `steps` iterations is scored at (besides step 0 and the end)."""
    return tuple(sorted({s for f in CURVE_FRACTIONS if 0 < (s := round(steps * f)) < steps}))


def merge_points(per_seed: list[tuple[RewardPoint, ...]]) -> tuple[RewardPoint, ...]:
    """One curve from each seed's own: the same steps, one value per seed, the largest prompt SE."""
    if not per_seed or any(len(points) != len(per_seed[0]) for points in per_seed):
        return ()
    merged = []
    for same_step in zip(*per_seed):
        merged.append(RewardPoint(step=same_step[0].step,
                                  seed_rewards=tuple(v for p in same_step for v in p.seed_rewards),
                                  prompt_se=max(p.prompt_se for p in same_step)))
    return tuple(merged)


def _seed_runs(configs: list[TrialConfig], jobs: int) -> list[tuple[Status, str, Any]]:
    """`_one_seed` of each config, in order: here one after another, or in `jobs` fresh processes."""
    if jobs <= 1 or len(configs) <= 1:
        return [_one_seed(c) for c in configs]
    import concurrent.futures
    import multiprocessing

    # spawn: a fresh interpreter per seed, as `autotune reward` itself is (no forked torch state)
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(configs)),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_one_seed, configs))


def _one_seed(cfg: TrialConfig) -> tuple[Status, str, Any]:
    """One training run of `cfg` without memory measurement: (status, message, TrialResult)."""
    from autotune.rlhf.trial import run_trial

    try:
        # memory comes from the trial or the plan; the midway scores draw the learning curve
        result = run_trial(cfg, measure_memory=False, eval_steps=curve_steps(cfg.workload.steps))
    except Exception as exc:  # noqa: BLE001 - a reward run reports, it does not raise
        log.exception("reward run failed")
        return "error", f"{type(exc).__name__}: {exc}", None
    status = result.status if result.status in ("ok", "oom", "error", "timeout") else "error"
    if status == "ok" and result.reward is None:
        return "error", "the run produced no evaluation reward", result
    return status, result.message if status != "ok" else "", result


# -- dotted paths in plain dicts -------------------------------------------------------------------
def _get(data: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


def _put(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data[leaf] = value


def _pop(data: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data.pop(leaf, None)
