"""A stand-in for `autotune trial`: same arguments, same result file, figures computed from the config.

Memory model (MiB): four 4 MiB models; generation holds 12 MiB of KV cache and its model, experience holds every model
not offloaded, actor training holds weights, grads, optimizer state (8 MiB for AdamW, 8 x density
for FRUGAL) and activations (6 MiB, 2 with checkpointing). Reward rises with the state-full share.
A config over `device_memory_gb` ends as an OOM (exit 3), like the real trial.

FAKE_TRIAL_SCRIPT="1:raise,2:sleep,3:oom" makes trial folder 1 raise, 2 hang and 3 report an OOM;
"baseline-plan:raise" crashes the baseline's plan (its folder is baseline-plan/<worker>).
FAKE_TRIAL_SLEEP_S adds a delay to every trial (to kill a controller mid-trial).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport, PhaseMemory
from autotune.result import TrialResult
from autotune.tuner.launcher import watch_controller

MiB = 1 << 20


def _phase(name: str, allocated_mib: float, fragmentation: float) -> PhaseMemory:
    allocated = int(allocated_mib * MiB)
    reserved = int(allocated / (1 - fragmentation))
    return PhaseMemory(name=name, peak_allocated_bytes=allocated, peak_reserved_bytes=reserved,
                       end_allocated_bytes=allocated // 2, end_reserved_bytes=reserved, wall_time_s=0.01)


def figures(cfg: TrialConfig) -> tuple[MemoryReport, float]:
    mem, opt = cfg.memory, cfg.optimizer
    share = 1.0 if opt.name == "adamw" else opt.partition.density
    gen_frag = 0.05 if mem.allocator.expandable_segments else 0.3
    later_frag = 0.05 if "generation" in mem.empty_cache_after else 0.2
    phases = (
        _phase("generation", 12 + 4, gen_frag),
        _phase("experience", 8 + 4 * (not mem.offload_reference) + 4 * (not mem.offload_reward), later_frag),
        _phase("actor_train", 8 + 8 * share + (2 if mem.actor_gradient_checkpointing else 6), later_frag),
        _phase("critic_train", 8 + 4 + 4, later_frag),
    )
    top = max(phases, key=lambda p: p.peak_reserved_bytes)
    report = MemoryReport(backend="cpu", phases=phases,
                          peak_allocated_bytes=max(p.peak_allocated_bytes for p in phases),
                          peak_reserved_bytes=top.peak_reserved_bytes)
    reward = 0.4 + 0.4 * share ** 0.5 - 0.02 * mem.actor_gradient_checkpointing + 0.01 * cfg.workload.seed
    return report, reward


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeline")
    args = parser.parse_args()
    watch_controller()   # like `autotune trial`: end with the controller that started it
    cfg = TrialConfig.load(args.config)
    folder = Path(args.config).parent
    script = dict(item.split(":") for item in filter(None, os.environ.get("FAKE_TRIAL_SCRIPT", "").split(",")))
    time.sleep(float(os.environ.get("FAKE_TRIAL_SLEEP_S", "0")))
    number = folder.name
    action = script.get(number, script.get(folder.parent.name))
    if action == "raise":
        raise RuntimeError(f"fake trial {number} crashed on purpose")
    if action == "sleep":
        time.sleep(3600)
    report, reward = figures(cfg)
    oom = action == "oom" or (cfg.device_memory_gb is not None and report.peak_reserved_gb > cfg.device_memory_gb)
    result = TrialResult(
        config_hash=cfg.config_hash(), status="oom" if oom else "ok", backend="cpu", memory=report,
        failed_phase=report.peak_phase if oom else None, message="simulated OOM" if oom else "",
        reward=None if oom else reward, initial_reward=0.4, reward_curve=() if oom else (0.4, reward),
        step_time_s=0.01, wall_time_s=0.05)
    tmp = Path(args.out + ".tmp")
    result.save(tmp)
    tmp.replace(args.out)
    return 3 if oom else 0


if __name__ == "__main__":
    sys.exit(main())
