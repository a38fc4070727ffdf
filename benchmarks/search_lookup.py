"""The search-quality benchmark's stand-ins for `autotune plan` and `autotune reward`: table lookups.

The benchmark measures every config of the grid once (plans and reward runs, the real ones) and
stores them in a cache folder. Its tuner studies then run the real controller (sampler, advisor,
reward cache, recommendation) with these commands as the plan and reward programs, so that 3 seeds
x 30 trials cost seconds. A config outside the grid (an advisor proposal the space does not hold)
is measured for real and added to the cache.

    python -m benchmarks.search_lookup plan   --cache DIR --config plan.yaml --out plan.json
    python -m benchmarks.search_lookup reward --cache DIR --config reward.yaml --out reward.json --proxy-for M
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autotune.config import TrialConfig

logger = logging.getLogger(__name__)

PLANS, REWARDS = "plans.json", "rewards.json"


def plan_key(cfg: TrialConfig) -> str:
    """The plan of a config depends on everything but the device limit (plans run unlimited)."""
    return cfg.replace(device_memory_gb=None).config_hash()


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON table at `path`, read and written back under an exclusive lock (parallel writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = json.loads(path.read_text()) if path.is_file() else {}
        yield table
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        tmp.replace(path)


def read_table(cache: Path, name: str) -> dict[str, Any]:
    path = cache / name
    return json.loads(path.read_text()) if path.is_file() else {}


def cached(cache: Path, name: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The table entry for `key`, computed (outside the lock) and stored on a miss."""
    found = read_table(cache, name).get(key)
    if found is not None:
        return found
    value = compute()
    with _locked(cache / name) as table:
        table.setdefault(key, value)
        return table[key]


def plan_entry(cfg: TrialConfig) -> dict[str, Any]:
    from autotune.rlhf.trial import plan_trial

    return plan_trial(cfg.replace(device_memory_gb=None)).to_dict()


def reward_entry(cfg: TrialConfig, proxy_for: str) -> dict[str, Any]:
    from autotune.rlhf.reward_run import run_reward

    return run_reward(cfg, proxy_for=proxy_for).to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_lookup")
    parser.add_argument("kind", choices=("plan", "reward"))
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--proxy-for", default=None)
    args = parser.parse_args(argv)
    cfg = TrialConfig.load(args.config)
    if args.kind == "plan":
        entry = cached(args.cache, PLANS, plan_key(cfg), lambda: plan_entry(cfg))
    else:
        from autotune.rlhf.reward_run import reward_key

        entry = cached(args.cache, REWARDS, reward_key(cfg),
                       lambda: reward_entry(cfg, args.proxy_for or cfg.model.actor))
    args.out.write_text(json.dumps(entry))
    return 0 if entry.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
