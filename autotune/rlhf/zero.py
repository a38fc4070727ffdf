"""How a trained model takes a step: plain PyTorch, or DeepSpeed ZeRO (with optimizer offload).

Stage 0 on one rank without offload never imports DeepSpeed. Several ranks (`world_size` > 1, each
process started by torchrun) always go through DeepSpeed, which keeps them in step.

The `fake` backend plans rank 0 through DeepSpeed's own code: the engine is built under
FakeTensorMode on a fake process group of `world_size` ranks (`torch.distributed`'s "fake" backend,
whose collectives complete at once and move no data). So the shards rank 0 holds, its flat fp32
partitions, the reduce buckets of `reduce_bucket_size`, and ZeRO-3's all-gathered parameters (within
`stage3_prefetch_bucket_size` and `stage3_max_live_parameters`) are the tensors DeepSpeed itself
allocates, traced like any other; no formula stands in for them. What the plan still does not see
is named by `plan_notes`.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from autotune.config import TrialConfig
from autotune.errors import ConfigError

if TYPE_CHECKING:
    from autotune.memory.probe import MemoryProbe

log = logging.getLogger(__name__)

# DeepSpeed checks that every rank agrees on these lists with an all-gather; a fake process group
# gathers nothing, so under the plan each check would compare real values with zeros.
_RANK_AGREEMENT_CHECKS = (
    "deepspeed.runtime.zero.partition_parameters", "deepspeed.runtime.zero.partitioned_param_coordinator",
    "deepspeed.runtime.zero.stage3",
)


def plan_notes(cfg: TrialConfig) -> str:
    """What a `fake` plan of `cfg` measured through DeepSpeed, and what it cannot see; empty without it."""
    if not cfg.uses_deepspeed:
        return ""
    return (f"rank 0 of {cfg.world_size} planned through DeepSpeed's own ZeRO-{cfg.memory.zero_stage} code on a "
            "fake process group; not seen: the hybrid engine's inference copy (not configured), "
            "NCCL/gloo internal buffers; other ranks differ only by partition padding")


# DeepSpeed ZeRO optimizer attributes that hold host memory under optimizer offload (stages 1-3).
_ZERO_HOST_BUFFERS = (
    "single_partition_of_fp32_groups", "param_buffer_of_bit16_for_cpu_offload_groups",
    "accumulated_grads_in_cpu", "temp_grad_buffer_for_cpu_offload", "fp32_partitioned_groups_flat",
)


class Updater(Protocol):
    """One trained model and the way its loss becomes a parameter update."""

    @property
    def module(self) -> torch.nn.Module: ...

    def step(self, loss: torch.Tensor) -> None: ...


@dataclass(kw_only=True)
class PlainUpdater:
    """loss.backward(), optimizer.step(), gradients freed; optionally the state leaves the device."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    probe: MemoryProbe
    offload_state: bool = False

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.offload_state:
            # ZeRO-Offload keeps optimizer state in host memory; the simulator is told after each
            # step, when any newly created state exists.
            self.probe.to_host(self.optimizer)


@dataclass(kw_only=True)
class DeepSpeedUpdater:
    """A DeepSpeed engine: engine.backward(loss), engine.step()."""

    engine: Any
    probe: MemoryProbe
    offload_state: bool = False

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()
        if self.offload_state:
            self.release_host_buffers()

    def release_host_buffers(self) -> None:
        """Tell the simulator which storages ZeRO-Offload keeps in host memory.

        On the cpu backend host and device are the same memory, so the tracer counts DeepSpeed's
        host-side buffers as device memory unless told: the optimizer state, the fp32 master
        partition and its gradient, and the host staging buffers. On cuda they already are on the host.
        """
        zero = self.engine.optimizer
        inner = zero.optimizer
        masters = [p for group in inner.param_groups for p in group["params"]]
        self.probe.to_host(inner, masters, *(getattr(zero, name, None) for name in _ZERO_HOST_BUFFERS))


def make_updater(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrialConfig, *,
                 probe: MemoryProbe, micro_batch: int) -> Updater:
    """The updater `cfg.memory` asks for: plain, DeepSpeed ZeRO, or its fake-backend model."""
    mem = cfg.memory
    if not cfg.uses_deepspeed:
        return PlainUpdater(module=model, optimizer=optimizer, probe=probe)
    ds_config = deepspeed_config(cfg, micro_batch=micro_batch, hidden_size=model.config.hidden_size)
    engine = _deepspeed_engine(model, optimizer, ds_config, cfg)
    # on cpu and fake "host" and "device" are one memory, so the simulator is told what left
    updater = DeepSpeedUpdater(engine=engine, probe=probe, offload_state=mem.offload_optimizer and cfg.device != "cuda")
    if updater.offload_state:
        updater.release_host_buffers()
    return updater


def deepspeed_config(cfg: TrialConfig, *, micro_batch: int, hidden_size: int) -> dict:
    """The DeepSpeed JSON config for `cfg.memory` (per rank: DeepSpeed reads the world size from the process group).

    Bucket sizes follow the Hugging Face Trainer's "auto" values (hidden_size squared): DeepSpeed's
    own default preallocates a 5e8-element gradient bucket, 2 GB in fp32, whatever the model size.
    """
    bucket = hidden_size * hidden_size
    zero: dict[str, Any] = {
        "stage": cfg.memory.zero_stage,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
        "stage3_prefetch_bucket_size": int(0.9 * bucket),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    if cfg.memory.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.device == "cuda"}
    dtype = cfg.model.dtype
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        # Our client optimizer (AdamW or FRUGAL) runs on the host under offload; DeepSpeed would
        # otherwise insist on its own cpu_adam, a ~50 s JIT build and a different optimizer.
        "zero_force_ds_cpu_optimizer": False,
        # FRUGAL is a client optimizer DeepSpeed does not know; its static groups survive flattening
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _deepspeed_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict,
                      cfg: TrialConfig) -> Any:
    _rank_env(cfg.device)
    launched = int(os.environ["WORLD_SIZE"])
    if cfg.device != "fake" and launched != cfg.world_size:
        raise ConfigError(f"world_size is {cfg.world_size} but this job has {launched} process(es): start one per rank "
                          f"with `torchrun --nproc-per-node {cfg.world_size} -m autotune trial ...` (search does this)")
    import deepspeed  # only trials that ask for ZeRO, offload or several ranks pay for this import

    if not torch.distributed.is_initialized():
        if cfg.device == "fake":
            _init_fake_process_group(cfg.world_size)
        else:
            deepspeed.init_distributed(dist_backend="gloo" if cfg.device == "cpu" else "nccl", verbose=False)
    if cfg.device == "fake":
        _prepare_fake_deepspeed(model)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def _init_fake_process_group(world_size: int) -> None:
    """Rank 0 of `world_size` on torch.distributed's "fake" backend: no peers, no data moved."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    torch.distributed.init_process_group(backend="fake", store=FakeStore(), rank=0, world_size=world_size)


def _prepare_fake_deepspeed(model: torch.nn.Module) -> None:
    """What DeepSpeed needs to run from fake tensors, for the rest of this (planning) process.

    `module.to(device)` would swap every fake parameter for a copy, which PyTorch refuses while the
    tracer holds weak references to them; under the plan they already sit on the (fake) CPU device.
    Rank-agreement checks (at set-up, and in ZeRO-3's parameter coordinator during the run) gather
    nothing on a fake process group, so they are skipped. DeepSpeed's CPU accelerator refuses fp16;
    the plan predicts a GPU, which has it.
    """
    import importlib

    from deepspeed.accelerator import get_accelerator

    object.__setattr__(model, "to", lambda *args, **kwargs: model)
    accelerator = get_accelerator()
    for check in ("is_fp16_supported", "is_bf16_supported"):
        setattr(accelerator, check, lambda: True)
    for name in _RANK_AGREEMENT_CHECKS:
        module = importlib.import_module(name)
        if hasattr(module, "assert_ints_same_as_other_ranks"):
            setattr(module, "assert_ints_same_as_other_ranks", lambda ints: None)  # noqa: B010


def _rank_env(device: str) -> None:
    """The environment of a one-rank job, as a launcher would set it; torchrun's values win."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    if device != "cuda":
        defaults["DS_ACCELERATOR"] = "cpu"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
