"""A stand-in for `autotune reward`: same arguments, a RewardOutcome JSON computed from the config.

The reward is the fake trial's (tests/tuner/fake_trial.py), with a standard error of 0.01, from an
untrained 0.4. Each run appends its reward key and steps to $FAKE_REWARD_LOG (if set), so tests can
count reward runs. FAKE_REWARD_FAIL=1 makes every run report an error; FAKE_REWARD_LEARNS_AT=N makes
a run of fewer than N steps learn nothing (its reward stays at the untrained 0.4).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # run as a script: make `tests` importable

from autotune.config import TrialConfig
from autotune.result import RewardPoint
from autotune.rlhf.reward_run import RewardOutcome, reward_key
from tests.tuner.fake_trial import figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--proxy-for", default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    cfg = TrialConfig.load(args.config)
    key = reward_key(cfg, seeds=args.seeds)
    steps = cfg.workload.steps
    if os.environ.get("FAKE_REWARD_LOG"):
        with open(os.environ["FAKE_REWARD_LOG"], "a") as log:
            log.write(f"{key} {steps}\n")
    _, reward = figures(cfg)
    if steps < int(os.environ.get("FAKE_REWARD_LEARNS_AT", "0")):
        reward = 0.4
    # the seeds scatter by 0.002 around the reward: a standard error over seeds, like a real run's
    seed_rewards = tuple(reward + 0.002 * (i - (args.seeds - 1) / 2) for i in range(args.seeds))
    points = (RewardPoint(step=0, seed_rewards=(0.4,) * args.seeds),
              RewardPoint(step=steps, seed_rewards=seed_rewards, prompt_se=0.01))
    failed = os.environ.get("FAKE_REWARD_FAIL") == "1"
    outcome = RewardOutcome(key=key, model=cfg.model.actor, proxy=args.proxy_for not in (None, cfg.model.actor),
                            steps=steps,
                            seeds=args.seeds, reward=None if failed else reward, reward_se=0.01, initial_reward=0.4,
                            reward_curve=() if failed else (0.4, reward), points=() if failed else points,
                            status="error" if failed else "ok", message="failed on purpose" if failed else "",
                            wall_time_s=0.01)
    Path(args.out).write_text(json.dumps(outcome.to_dict()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
