"""A predicted step time: the seconds of one RLHF iteration of a config on a named device class.

A planned trial has no step time of its own (fake tensors do no work), so autotune predicts one
from what the plan knows: the config and its models' shapes. The model is a roofline sum over the
phases of one iteration; every constant it uses is named below and every device figure is sourced.

* Compute-bound phases, at the device's peak dense FLOP/s (bf16 tensor cores for a 16-bit model,
  plain fp32 for a float32 one) times ``COMPUTE_EFFICIENCY``; a forward over n tokens of a model of
  N parameters costs 2·N·n FLOPs plus attention's 4·layers·hidden·context per token:
    - prefill: the actor's forward over the prompts;
    - experience: forwards of the actor (log-probs), reference, reward and critic (PPO) over the
      prompt plus the generated tokens;
    - training: per trained model (actor; critic for PPO), ppo_epochs x (forward 1 + backward 2);
      activation checkpointing recomputes the forward once in backward, ``RECOMPUTE_SHARE`` = 1/3
      of that model's training compute.
* Decoding is memory-bound: each of gen_len tokens reads the actor's weights and the KV cache so
  far from HBM, at the device's bandwidth times ``BANDWIDTH_EFFICIENCY`` (or its compute time,
  where that is longer).
* The optimizer update, one per micro-batch and epoch, as bytes moved through HBM: AdamW reads the
  weight, gradient and two moments and writes weight and moments; FRUGAL's state-free share
  (signSGD) reads weight and gradient and writes the weight. With optimizer offload the gradients
  go to the host and the weights come back over PCIe, and the update runs at ``HOST_UPDATE_GB_S``.
* Offloaded reference and reward models are copied to the GPU once per iteration over PCIe.
* ZeRO at world size W (ring collectives over the device's interconnect, 2(W-1)/W of the bytes per
  all-reduce-equivalent): stages 1-2 reduce-scatter gradients and all-gather weights per optimizer
  step; stage 3 also all-gathers the weights for every forward, every backward and every decoded token.
* ``empty_cache``: the cudaFree / cudaMalloc calls it causes, times ``DEVICE_CALL_S``. The memory
  report does not carry the simulator's call counts, so each empty_cache point is counted as
  ``CALLS_PER_EMPTY_CACHE`` calls (the segments it frees, then mallocs again in the next phase).

What it leaves out: kernel-launch overhead at small shapes, Python, host-side sampling, and
overlap between phases (it sums them). It is meant for *ratios* between configs of one model and a
rough absolute figure; benchmarks/step_time.py checks both (docs/RESULTS.md, "Step time").

Device classes: `DEVICES` below. A user adds one with `add_device`, or by pointing
``AUTOTUNE_DEVICE_CLASSES`` at a YAML file of ``name: {bf16_tflops: ..., fp32_tflops: ...,
hbm_gb_s: ..., pcie_gb_s: ..., memory_gib: ..., interconnect_gb_s: ...}`` entries.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from autotune.config import TrialConfig
from autotune.errors import ConfigError

COMPUTE_EFFICIENCY = 0.4       # share of peak FLOP/s a Hugging Face forward/backward reaches (MFU ~30-50%)
BANDWIDTH_EFFICIENCY = 0.7     # share of peak HBM bandwidth a decode step or an optimizer update reaches
RECOMPUTE_SHARE = 1 / 3        # checkpointing: one more forward over forward (1) + backward (2)
HOST_UPDATE_GB_S = 50.0        # CPU optimizer (DeepSpeed CPUAdam) bytes/s on a server socket, about
DEVICE_CALL_S = 1e-3           # one cudaFree or cudaMalloc of a large segment, device sync included, about
CALLS_PER_EMPTY_CACHE = 8      # calls per empty_cache point: a few segments freed, then malloc'ed again
ENV_DEVICES = "AUTOTUNE_DEVICE_CLASSES"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_STATE_BYTES = 4               # AdamW moments are kept in fp32 (PyTorch keeps them in the param dtype for
                               # bf16 params; 4 bytes is the mixed-precision and float32 case)


@dataclass(frozen=True, kw_only=True)
class Device:
    """A device class: peak rates (dense, no sparsity) and memory size."""

    name: str
    bf16_tflops: float            # dense bf16/fp16 tensor-core peak with fp32 accumulate
    fp32_tflops: float            # plain fp32 (no TF32): what a float32 model runs at by default
    hbm_gb_s: float               # device memory bandwidth
    pcie_gb_s: float              # host <-> device, one direction, achievable with pinned memory
    memory_gib: float
    interconnect_gb_s: float      # per-direction bandwidth between devices (NVLink, else PCIe)

    def flops(self, dtype: str) -> float:
        """Effective FLOP/s for a model in `dtype`."""
        peak = self.fp32_tflops if dtype == "float32" else self.bf16_tflops
        return peak * 1e12 * COMPUTE_EFFICIENCY


# Sources: NVIDIA datasheets and whitepapers (dense figures, i.e. half the "with sparsity" ones).
DEVICES: dict[str, Device] = {d.name: d for d in (
    # GA102 whitepaper (Ampere GA102 GPU Architecture, 2020), table 9: 71 TFLOPS FP16/BF16 tensor with FP32
    # accumulate, 35.6 TFLOPS FP32, 936 GB/s GDDR6X; PCIe 4.0 x16 (~25 GB/s achievable of 32); no NVLink switch.
    Device(name="RTX-3090", bf16_tflops=71.0, fp32_tflops=35.6, hbm_gb_s=936.0, pcie_gb_s=25.0, memory_gib=24.0,
           interconnect_gb_s=25.0),
    # NVIDIA A100 datasheet (2021): 312 TFLOPS BF16, 19.5 TFLOPS FP32, 1,555 GB/s (40GB) / 2,039 GB/s (80GB SXM),
    # NVLink 600 GB/s bidirectional (300 per direction), PCIe 4.0.
    Device(name="A100-40", bf16_tflops=312.0, fp32_tflops=19.5, hbm_gb_s=1555.0, pcie_gb_s=25.0, memory_gib=40.0,
           interconnect_gb_s=300.0),
    # NVIDIA L40S datasheet (2023): 362 TFLOPS BF16 dense (733 sparse), 91.6 TFLOPS FP32, 864 GB/s, PCIe 4.0, 48 GB.
    Device(name="L40S", bf16_tflops=362.0, fp32_tflops=91.6, hbm_gb_s=864.0, pcie_gb_s=25.0, memory_gib=48.0,
           interconnect_gb_s=25.0),
    Device(name="A100-80", bf16_tflops=312.0, fp32_tflops=19.5, hbm_gb_s=2039.0, pcie_gb_s=25.0, memory_gib=80.0,
           interconnect_gb_s=300.0),
    # NVIDIA H100 datasheet (SXM5): 989 TFLOPS BF16 dense (1,979 sparse), 67 TFLOPS FP32, 3.35 TB/s HBM3,
    # NVLink 900 GB/s bidirectional, PCIe 5.0 x16 (~50 GB/s achievable of 64).
    Device(name="H100-80", bf16_tflops=989.0, fp32_tflops=67.0, hbm_gb_s=3350.0, pcie_gb_s=50.0, memory_gib=80.0,
           interconnect_gb_s=450.0),
    # NVIDIA H200 datasheet (SXM): H100's compute, 141 GB HBM3e (140 GiB usable) at 4.8 TB/s.
    Device(name="H200", bf16_tflops=989.0, fp32_tflops=67.0, hbm_gb_s=4800.0, pcie_gb_s=50.0, memory_gib=140.0,
           interconnect_gb_s=450.0),
)}


def add_device(device: Device) -> None:
    """Add (or replace) a device class for this process."""
    DEVICES[device.name] = device


def load_devices(path: str | Path) -> list[Device]:
    """Add the device classes of a YAML file (`name: {field: value, ...}`); returns them.

    Raises:
        ConfigError: for an unreadable file, an unknown or missing field, or a non-positive figure.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read device classes from {path}: {exc}") from exc
    wanted = {f.name for f in fields(Device)} - {"name"}
    added = []
    for name, figures in (data.items() if isinstance(data, dict) else ()):
        if not isinstance(figures, dict) or set(figures) != wanted:
            raise ConfigError(f"{path}: device class {name!r} needs exactly {', '.join(sorted(wanted))}")
        bad = [k for k, v in figures.items() if not isinstance(v, (int, float)) or not 0 < v < math.inf]
        if bad:
            raise ConfigError(f"{path}: device class {name!r}: {', '.join(bad)} must be positive numbers")
        device = Device(name=str(name), **{k: float(v) for k, v in figures.items()})
        add_device(device)
        added.append(device)
    return added


def device(name: str) -> Device:
    """The device class `name` (the file in $AUTOTUNE_DEVICE_CLASSES is read first, if set).

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if os.environ.get(ENV_DEVICES):
        load_devices(os.environ[ENV_DEVICES])
    if name not in DEVICES:
        raise ConfigError(f"unknown device class {name!r} (known: {', '.join(DEVICES)}; add one in a YAML file "
                          f"named by ${ENV_DEVICES})")
    return DEVICES[name]


def device_for_budget(budget_gb: float) -> Device:
    """The first device class in the table with at least `budget_gb` of memory (the largest one above all)."""
    fitting = [d for d in DEVICES.values() if d.memory_gib >= budget_gb - 1e-9 and d.name != "cpu"]
    return fitting[0] if fitting else max(DEVICES.values(), key=lambda d: d.memory_gib)


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the step-time model needs of one network."""

    params: int
    layers: int
    hidden: int
    vocab: int
    kv_dim: int            # key/value width per layer: kv heads x head dim


@functools.lru_cache(maxsize=32)
def model_shape(name: str) -> ModelShape:
    """A model's shape, its parameters counted on the meta device (no memory; about a second for 1B)."""
    import torch
    import transformers

    from autotune.rlhf.models import model_config

    config = model_config(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    hidden = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 1))
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return ModelShape(params=sum(p.numel() for p in model.parameters()), layers=int(config.num_hidden_layers),
                      hidden=hidden, vocab=int(config.vocab_size), kv_dim=kv_heads * head_dim)


@dataclass(frozen=True, kw_only=True)
class StepTimePrediction:
    """Predicted seconds of one RLHF iteration, per phase, on `device`."""

    device: str
    prefill_s: float
    decode_s: float
    experience_s: float
    train_s: float              # forward + backward of the trained models, recompute excluded
    recompute_s: float          # activation checkpointing's extra forwards
    optimizer_s: float          # the updates, on the device or (offloaded) on the host
    transfer_s: float           # PCIe copies: offloaded models, offloaded optimizer's gradients and weights
    collective_s: float         # ZeRO's collectives
    empty_cache_s: float

    @property
    def generation_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def total_s(self) -> float:
        return (self.prefill_s + self.decode_s + self.experience_s + self.train_s + self.recompute_s
                + self.optimizer_s + self.transfer_s + self.collective_s + self.empty_cache_s)

    @property
    def label(self) -> str:
        return f"predicted ({self.device})"

    def describe(self) -> str:
        """'1.23 s = generation 0.4 + experience 0.1 + ...', the phases over 1% of the total."""
        parts = [("generation", self.generation_s), ("experience", self.experience_s), ("training", self.train_s),
                 ("recompute", self.recompute_s), ("optimizer", self.optimizer_s), ("PCIe copies", self.transfer_s),
                 ("ZeRO collectives", self.collective_s), ("empty_cache", self.empty_cache_s)]
        shown = [f"{name} {s:.3g}" for name, s in parts if s > 0.01 * self.total_s]
        return f"{self.total_s:.3g} s = " + " + ".join(shown)


def _forward_flops(shape: ModelShape, sequences: int, tokens: int) -> float:
    """FLOPs of one forward over `sequences` x `tokens` (causal attention over half the context on average)."""
    return 2.0 * shape.params * sequences * tokens + 2.0 * shape.layers * shape.hidden * sequences * tokens * tokens


def generation_seconds(shape: ModelShape, dev: Device, *, dtype: str, sequences: int, prompt_len: int,
                       gen_len: int, gather_s_per_token: float = 0.0) -> tuple[float, float]:
    """(prefill, decode) seconds: a compute-bound prefill, then gen_len memory-bound decode steps."""
    width = _DTYPE_BYTES[dtype]
    prefill = _forward_flops(shape, sequences, prompt_len) / dev.flops(dtype)
    bandwidth = dev.hbm_gb_s * 1e9 * BANDWIDTH_EFFICIENCY
    decode = 0.0
    for t in range(gen_len):
        context = prompt_len + t
        kv_bytes = 2 * shape.layers * shape.kv_dim * width * sequences * context
        read_s = (shape.params * width + kv_bytes) / bandwidth
        flop_s = (2.0 * shape.params * sequences + 4.0 * shape.layers * shape.hidden * sequences * context) \
            / dev.flops(dtype)
        decode += max(read_s, flop_s) + gather_s_per_token
    return prefill, decode


def predict(cfg: TrialConfig, dev: Device | str, *, shapes: dict[str, ModelShape] | None = None,
            device_calls: int | None = None) -> StepTimePrediction:
    """Predict one RLHF iteration of `cfg` on `dev`.

    Args:
        cfg: the trial's config.
        dev: a device class or its name in `DEVICES`.
        shapes: model name -> shape; looked up with `model_shape` where missing.
        device_calls: the cudaFree/cudaMalloc calls empty_cache causes per iteration, where a plan
            counted them; default: ``CALLS_PER_EMPTY_CACHE`` per empty_cache point.

    Raises:
        ConfigError: for an unknown device class.
    """
    dev = device(dev) if isinstance(dev, str) else dev
    shapes = dict(shapes or {})
    names = {cfg.model.actor, cfg.model.critic_name, cfg.model.reference_name, cfg.model.reward_name}
    for name in names - set(shapes):
        shapes[name] = model_shape(name)
    actor, critic = shapes[cfg.model.actor], shapes[cfg.model.critic_name]
    reference, reward = shapes[cfg.model.reference_name], shapes[cfg.model.reward_name]
    w, dtype, mem = cfg.workload, cfg.model.dtype, cfg.memory
    width = _DTYPE_BYTES[dtype]
    ppo = cfg.algorithm == "ppo"
    sequences = w.batch_size * (1 if ppo else w.group_size)
    tokens = w.prompt_len + w.gen_len
    flops = dev.flops(dtype)
    ranks = cfg.world_size
    ring = 2.0 * (ranks - 1) / ranks if ranks > 1 else 0.0       # bytes on the wire per byte all-reduced
    link = dev.interconnect_gb_s * 1e9
    zero3 = mem.zero_stage >= 3 and ranks > 1

    # generation: under ZeRO-3 every decoded token all-gathers the actor's weights first
    gather_token = (ring / 2) * actor.params * width / link if zero3 else 0.0
    prefill, decode = generation_seconds(actor, dev, dtype=dtype, sequences=sequences, prompt_len=w.prompt_len,
                                         gen_len=w.gen_len, gather_s_per_token=gather_token)

    experience_models = [actor, reference, reward] + ([critic] if ppo else [])
    experience = sum(_forward_flops(m, sequences, tokens) for m in experience_models) / flops

    trained = [(actor, mem.actor_gradient_checkpointing, cfg.optimizer.name)]
    if ppo:
        trained.append((critic, mem.critic_gradient_checkpointing, cfg.optimizer.critic))
    steps = w.ppo_epochs * math.ceil(sequences / w.micro_batch)     # optimizer steps per model per iteration
    train = recompute = optimizer = transfer = collective = 0.0
    for shape, checkpointed, opt in trained:
        forward = w.ppo_epochs * _forward_flops(shape, sequences, tokens) / flops
        train += 3 * forward
        recompute += forward if checkpointed else 0.0
        opt_s, copy_s = _update_seconds(shape, dev, cfg, opt, width)
        optimizer += steps * opt_s
        transfer += steps * copy_s
        if ranks > 1 and mem.zero_stage >= 1:
            collective += steps * ring * shape.params * width / link   # reduce-scatter grads + all-gather weights
        if zero3:   # weights all-gathered for each micro-batch's forward and backward (and the recompute)
            passes = 2 + (1 if checkpointed else 0)
            collective += steps * passes * (ring / 2) * shape.params * width / link
    if zero3:
        collective += len(experience_models) * (ring / 2) * actor.params * width / link

    pcie = dev.pcie_gb_s * 1e9
    if mem.offload_reference:
        transfer += reference.params * width / pcie
    if mem.offload_reward:
        transfer += reward.params * width / pcie
    calls = device_calls if device_calls is not None else CALLS_PER_EMPTY_CACHE * len(mem.empty_cache_after)
    return StepTimePrediction(device=dev.name, prefill_s=prefill, decode_s=decode, experience_s=experience,
                              train_s=train, recompute_s=recompute, optimizer_s=optimizer, transfer_s=transfer,
                              collective_s=collective, empty_cache_s=calls * DEVICE_CALL_S)


def _update_seconds(shape: ModelShape, dev: Device, cfg: TrialConfig, opt: str, width: int) -> tuple[float, float]:
    """(update, PCIe copy) seconds of one optimizer step of one model.

    AdamW per parameter: read weight, gradient and 2 moments, write weight and 2 moments. FRUGAL: its
    state-full share (`density`, plus embeddings, head and norms where they keep state) as AdamW, the
    rest as signSGD (read weight and gradient, write the weight). Under ZeRO each rank updates 1/W.
    """
    adamw = 3 * width + 4 * _STATE_BYTES                 # weight r/w + gradient r; 2 moments r/w
    state_free = 3 * width
    if opt == "frugal":
        share = _statefull_share(shape, cfg)
        per_param = share * adamw + (1 - share) * state_free
    else:
        per_param = adamw
    ranks = cfg.world_size if cfg.memory.zero_stage >= 1 else 1
    moved = shape.params * per_param / ranks
    if cfg.memory.offload_optimizer:
        # gradients down, weights back up over PCIe; the update itself on the host
        return moved / (HOST_UPDATE_GB_S * 1e9), 2 * shape.params * width / ranks / (dev.pcie_gb_s * 1e9)
    return moved / (dev.hbm_gb_s * 1e9 * BANDWIDTH_EFFICIENCY), 0.0


def _statefull_share(shape: ModelShape, cfg: TrialConfig) -> float:
    """The share of a model's parameters FRUGAL keeps AdamW state for: the blocks' density, plus the
    embedding (and, untied, the head) where the partition keeps them state-full (norms are negligible)."""
    part = cfg.optimizer.partition
    embed = shape.vocab * shape.hidden
    blocks = max(shape.params - embed, 0)
    kept = part.density * blocks + (embed if part.embeddings_statefull else 0)
    return min(1.0, kept / shape.params) if shape.params else 1.0
