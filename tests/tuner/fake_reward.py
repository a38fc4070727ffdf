"""A stand-in for `autotune reward`: same arguments, a RewardOutcome JSON computed from the config.

The reward is the fake trial's (tests/tuner/fake_trial.py), with a standard error of 0.01. Each run
appends its reward key to $FAKE_REWARD_LOG (if set), so tests can count reward runs.
FAKE_REWARD_FAIL=1 makes every run report an error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # run as a script: make `tests` importable

from autotune.config import TrialConfig
from autotune.rlhf.reward_run import RewardOutcome, reward_key
from tests.tuner.fake_trial import figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--proxy-for", default=None)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    cfg = TrialConfig.load(args.config)
    key = reward_key(cfg, seeds=args.seeds)
    if os.environ.get("FAKE_REWARD_LOG"):
        with open(os.environ["FAKE_REWARD_LOG"], "a") as log:
            log.write(key + "\n")
    _, reward = figures(cfg)
    failed = os.environ.get("FAKE_REWARD_FAIL") == "1"
    outcome = RewardOutcome(key=key, model=cfg.model.actor, proxy=args.proxy_for not in (None, cfg.model.actor), steps=cfg.workload.steps,
                            seeds=args.seeds, reward=None if failed else reward, reward_se=0.01, initial_reward=0.4,
                            reward_curve=() if failed else (0.4, reward), status="error" if failed else "ok",
                            message="failed on purpose" if failed else "", wall_time_s=0.01)
    Path(args.out).write_text(json.dumps(outcome.to_dict()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
