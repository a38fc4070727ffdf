"""FRUGAL: full AdamW state for a chosen share of the parameters, a state-free rule for the rest.

`partition` turns a `PartitionSpec` into parameter groups, `FRUGAL` optimises them, `build_optimizer`
is the one entry point the workload uses, and `optimizer_state_bytes` measures what either optimizer
holds.
"""
from __future__ import annotations

from autotune.optim.blocks import find_blocks
from autotune.optim.build import build_optimizer
from autotune.optim.frugal import FRUGAL
from autotune.optim.partition import choose_layers, partition, rotates
from autotune.optim.state import optimizer_state_bytes

__all__ = ["FRUGAL", "build_optimizer", "choose_layers", "find_blocks", "optimizer_state_bytes", "partition", "rotates"]
