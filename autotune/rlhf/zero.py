"""How a trained model takes a step: plain PyTorch, or DeepSpeed ZeRO (with optimizer offload).

Stage 0 without offload never imports DeepSpeed. Under the `fake` backend DeepSpeed cannot run, so
ZeRO is modelled at world size 1: sharding over one rank saves nothing, and ZeRO-Offload is the
optimizer state leaving the simulated device after each step.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from autotune.config import TrialConfig

if TYPE_CHECKING:
    from autotune.memory.probe import MemoryProbe

log = logging.getLogger(__name__)

FAKE_ZERO_NOTE = "ZeRO under the fake backend is modelled at world size 1: sharding saves no memory"


# DeepSpeed ZeRO optimizer attributes that hold host memory under optimizer offload (stages 1-3).
_ZERO_HOST_BUFFERS = (
    "single_partition_of_fp32_groups", "param_buffer_of_bit16_for_cpu_offload_groups",
    "accumulated_grads_in_cpu", "temp_grad_buffer_for_cpu_offload", "fp32_partitioned_groups_flat",
)


class Updater(Protocol):
    """One trained model and the way its loss becomes a parameter update."""

    module: torch.nn.Module

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
    if not mem.needs_deepspeed:
        return PlainUpdater(module=model, optimizer=optimizer, probe=probe)
    if cfg.device == "fake":
        if mem.zero_stage > 0:
            log.warning(FAKE_ZERO_NOTE)
        return PlainUpdater(module=model, optimizer=optimizer, probe=probe, offload_state=mem.offload_optimizer)
    ds_config = deepspeed_config(cfg, micro_batch=micro_batch, hidden_size=model.config.hidden_size)
    engine = _deepspeed_engine(model, optimizer, ds_config, cfg.device)
    updater = DeepSpeedUpdater(engine=engine, probe=probe, offload_state=mem.offload_optimizer and cfg.device == "cpu")
    if updater.offload_state:
        updater.release_host_buffers()
    return updater


def deepspeed_config(cfg: TrialConfig, *, micro_batch: int, hidden_size: int) -> dict:
    """The DeepSpeed JSON config for `cfg.memory` (one process, one rank).

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
                      device: str) -> Any:
    _single_process_env(device)
    import deepspeed  # only trials that ask for ZeRO or offload pay for this import

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl", verbose=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def _single_process_env(device: str) -> None:
    """The environment of a one-rank job, as a launcher would set it; existing values win."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    if device == "cpu":
        defaults["DS_ACCELERATOR"] = "cpu"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
