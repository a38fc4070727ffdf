"""The predicted step-time cost of a config's memory savers, against the baseline.

A planned trial has no step time of its own (fake tensors do no work), so the recommendation
states what its savers cost, in the two currencies they are paid in:

* compute: activation checkpointing recomputes each training forward once in backward. One RLHF
  iteration does, in forward-pass units over its tokens, 1 (generation) + 4 (experience: actor,
  reference, reward, critic) + 3 x ppo_epochs per trained model (forward 1 + backward 2);
  checkpointing adds 1 x ppo_epochs for that model.
* traffic: an offloaded reference or reward model is copied to the GPU for every experience phase
  (its weights do not change, so nothing comes back): its weight bytes per iteration, over PCIe.

FRUGAL's state-free update (signSGD) is cheaper than AdamW's, so it adds no cost here; ZeRO and
optimizer offload are not in the default space and are left out of the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from autotune.config import TrialConfig

PCIE_GB_PER_S = 25.0   # host-to-device copy bandwidth of PCIe 4.0 x16 with pinned memory, about
_GiB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True, kw_only=True)
class StepCost:
    """What a config's savers add to each RLHF iteration."""

    compute_share: float           # extra forward-pass units / the baseline's
    transfer_bytes: int            # host-to-GPU copies per iteration

    @property
    def transfer_s(self) -> float:
        return self.transfer_bytes / (PCIE_GB_PER_S * 1e9)

    def describe(self) -> str:
        parts = [f"+{self.compute_share:.0%} compute (activation recompute)" if self.compute_share else ""]
        if self.transfer_bytes:
            parts.append(f"+{self.transfer_bytes / _GiB:.1f} GiB host-to-GPU copies per iteration (offloaded "
                         f"models, ~{self.transfer_s:.2f} s at {PCIE_GB_PER_S:g} GB/s)")
        text = ", ".join(p for p in parts if p)
        return text or "no extra compute or copies"


def forward_units(cfg: TrialConfig) -> float:
    """One iteration's work in forward passes over its tokens (see the module docstring)."""
    epochs = cfg.workload.ppo_epochs
    trained = [cfg.memory.actor_gradient_checkpointing]
    if cfg.algorithm == "ppo":
        trained.append(cfg.memory.critic_gradient_checkpointing)
    experience = 4 if cfg.algorithm == "ppo" else 3
    return 1 + experience + sum(3 * epochs + (epochs if ckpt else 0) for ckpt in trained)


def step_cost(cfg: TrialConfig, baseline: TrialConfig, *, weight_bytes: dict[str, int]) -> StepCost:
    """The cost of `cfg` over `baseline`; `weight_bytes` maps a model name to its weights' size."""
    moved = 0
    if cfg.memory.offload_reference and not baseline.memory.offload_reference:
        moved += weight_bytes[cfg.model.reference_name]
    if cfg.memory.offload_reward and not baseline.memory.offload_reward:
        moved += weight_bytes[cfg.model.reward_name]
    base = forward_units(baseline)
    return StepCost(compute_share=(forward_units(cfg) - base) / base, transfer_bytes=moved)


def model_weight_bytes(name: str, dtype: str) -> int:
    """A model's weight bytes, counted on the meta device (no memory, about a second for 1B)."""
    import torch
    import transformers

    from autotune.rlhf.models import model_config

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(model_config(name))
    return sum(p.numel() for p in model.parameters()) * _DTYPE_BYTES[dtype]


def recommendation_cost(chosen: TrialConfig, baseline: TrialConfig) -> StepCost:
    """`step_cost` of the recommended config against the baseline, sizing the models it moves."""
    names = {n for n, on in ((chosen.model.reference_name, chosen.memory.offload_reference),
                             (chosen.model.reward_name, chosen.memory.offload_reward)) if on}
    sizes = {name: model_weight_bytes(name, chosen.model.dtype) for name in names}
    return step_cost(chosen, baseline, weight_bytes=sizes)
