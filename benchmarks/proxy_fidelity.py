"""Does the reward proxy judge configs as a real pretrained model does?

A llama-1b search on a CPU box takes its rewards from reward runs on `llama-tiny-16` (random init,
llama-1b's depth). This trains the same reward keys of the default space on that proxy and on the
real pretrained `smollm2-135m` at full size, same task, each long enough to learn, at two or more
seeds, and prints side by side: the gain each key keeps of the AdamW baseline's, Kendall's tau
between the two rankings, and the min-memory pick each would make (memory from llama-1b's
full-size plans, the same for both).

    python -m benchmarks.proxy_fidelity            # 5 keys x 2 seeds: ~90 CPU-minutes, 2 runs at a time
    python -m benchmarks.proxy_fidelity --keys 4 --reuse-study llama-1b --real-steps 128 --real-lr 3e-4

Each real-model key costs about 14 CPU-minutes (smollm2-135m PPO, 2 seeds x 16 steps) on a 2-core
box, and at 16 steps the real model does not learn the task (docs/RESULTS.md, section 3a): the longer
form is for a GPU, where the reward runs train there. A proxy key costs about 3.5 CPU-minutes.
`--real-lr` sets the pretrained model's learning rate (the proxy's 1e-3 is a from-scratch rate: at
it, the real model's two seeds diverge, one falling to a reward of 0 by step 8).

Raw outcomes go to runs/bench/proxy_fidelity/; a rerun reuses the outcomes already there.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autotune.config import TrialConfig
from autotune.memory.report import GiB, MemoryReport, PhaseMemory
from autotune.result import TrialRecord, TrialResult
from autotune.rlhf.reward_run import RewardOutcome, reward_config
from autotune.tuner import gain
from autotune.tuner.recommend import DEFAULT_MIN_KEPT, recommend
from benchmarks.common import RAW_DIR, REPO_ROOT

logger = logging.getLogger(__name__)

MODEL = "llama-1b"
PROXY = "llama-tiny-16"
REAL = "smollm2-135m"
# The reward keys of search_spaces/default.yaml: the baseline and the low-memory corner first, then the
# ones the headline study ran (so that --reuse-study llama-1b finds them).
KEYS: dict[str, dict[str, object]] = {
    "adamw": {},
    "frugal0-both": {"optimizer.name": "frugal", "optimizer.critic": "frugal", "optimizer.partition.density": 0.0},
    "frugal0-actor": {"optimizer.name": "frugal", "optimizer.partition.density": 0.0},
    "frugal0.25-actor": {"optimizer.name": "frugal", "optimizer.partition.density": 0.25},
    "frugal0.25-critic": {"optimizer.critic": "frugal", "optimizer.partition.density": 0.25},
    "frugal0.25-both": {"optimizer.name": "frugal", "optimizer.critic": "frugal", "optimizer.partition.density": 0.25},
    "frugal0-critic": {"optimizer.critic": "frugal", "optimizer.partition.density": 0.0},
}
OUT = RAW_DIR / "proxy_fidelity"


@dataclass(frozen=True, kw_only=True)
class Job:
    key: str
    model: str          # "proxy" or "real"
    config: TrialConfig
    seeds: int

    @property
    def out(self) -> Path:
        workload = self.config.workload
        return OUT / f"{self.model}-{self.key}-{workload.steps}steps-lr{workload.actor_lr:g}-{self.seeds}seeds.json"


def jobs(keys: list[str], *, proxy_steps: int, real_steps: int, real_lr: float | None, seeds: int) -> list[Job]:
    found = []
    for key in keys:
        big = TrialConfig().replace(**{"model.actor": MODEL, **KEYS[key]})
        proxy = reward_config(big.replace(**{"workload.steps": proxy_steps}), proxy=PROXY)
        real = reward_config(big.replace(**{"workload.steps": real_steps}), proxy=REAL)
        if real_lr is not None:
            real = real.replace(**{"workload.actor_lr": real_lr, "workload.critic_lr": real_lr})
        found += [Job(key=key, model="proxy", config=proxy, seeds=seeds),
                  Job(key=key, model="real", config=real, seeds=seeds)]
    return found


def reuse(job: Job, study: str) -> None:
    """Take the job's outcome from a study's own reward run of the same key, where it has one (the
    headline study trains exactly these proxy configs)."""
    from autotune.rlhf.reward_run import reward_key

    if job.out.is_file():
        return
    key = reward_key(job.config, seeds=job.seeds)
    for found in sorted((REPO_ROOT / "runs" / study / "rewards" / key).glob("*/reward.json")):
        outcome = RewardOutcome.load(found)
        if outcome.ok and outcome.points:
            job.out.parent.mkdir(parents=True, exist_ok=True)
            outcome.save(job.out)
            logger.info("%s %s: reused %s", job.model, job.key, found)
            return


def run(job: Job) -> RewardOutcome:
    """One `autotune reward` subprocess (one thread), or the outcome a previous run left."""
    if job.out.is_file():
        return RewardOutcome.load(job.out)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    config_path = job.out.with_suffix(".yaml")
    config_path.write_text(job.config.dump())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autotune", "reward", "--config", str(config_path), "--out", str(job.out),
                    "--seeds", str(job.seeds)], env=env, check=True, capture_output=True, text=True)
    logger.info("%s %s: %.0f s", job.model, job.key, time.perf_counter() - start)
    return RewardOutcome.load(job.out)


def planned_peaks(keys: list[str]) -> dict[str, float]:
    """llama-1b's full-size planned peak (GiB) for each key, no interventions: the memory both picks use."""
    peaks = {}
    for key in keys:
        cfg = TrialConfig().replace(**{"model.actor": MODEL, "device": "fake", **KEYS[key]})
        path = OUT / f"plan-{key}.json"
        if not path.is_file():
            config_path = path.with_suffix(".yaml")
            path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(cfg.dump())
            subprocess.run([sys.executable, "-m", "autotune", "plan", "--config", str(config_path), "--out", str(path)],
                           check=True, capture_output=True, text=True)
        memory = TrialResult.load(path).memory
        assert memory is not None, f"plan of {key} has no memory report"
        peaks[key] = memory.peak_reserved_gb
    return peaks


def _record(number: int, key: str, outcome: RewardOutcome, peak_gb: float) -> TrialRecord:
    reserved = int(peak_gb * GiB)
    phase = PhaseMemory(name="plan", peak_allocated_bytes=reserved, peak_reserved_bytes=reserved,
                        end_allocated_bytes=0, end_reserved_bytes=0, wall_time_s=0.0)
    memory = MemoryReport(backend="fake", phases=(phase,), peak_allocated_bytes=reserved, peak_reserved_bytes=reserved)
    result = TrialResult(config_hash=key, status="ok", backend="fake", memory=memory, reward=outcome.reward,
                         reward_se=outcome.reward_se, initial_reward=outcome.initial_reward,
                         reward_points=outcome.points)
    return TrialRecord(number=number, config=TrialConfig(), result=result, feasible=True,
                       advisor_reason="baseline" if key == "adamw" else None,
                       objectives={"reward": outcome.reward or 0.0, "peak_reserved_gb": peak_gb})


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two rankings of the same items."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    score = sum((1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
                for i, j in pairs)
    return score / len(pairs) if pairs else float("nan")


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=5,
                        help=f"how many keys, from the top of the list (max {len(KEYS)})")
    parser.add_argument("--proxy-steps", type=int, default=64)
    parser.add_argument("--real-steps", type=int, default=16)
    parser.add_argument("--real-lr", type=float, default=None,
                        help="the real model's learning rate (default: the headline's, as the proxy's); the "
                             "pretrained model may need a smaller one to learn steadily")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="reward runs at a time (one thread each)")
    parser.add_argument("--reuse-study", default=None, metavar="NAME",
                        help="take proxy outcomes from this study's reward runs where it has the same key")
    args = parser.parse_args(argv)
    keys = list(KEYS)[:args.keys]
    start = time.perf_counter()
    todo = jobs(keys, proxy_steps=args.proxy_steps, real_steps=args.real_steps, real_lr=args.real_lr,
                seeds=args.seeds)
    if args.reuse_study:
        for job in todo:
            if job.model == "proxy":
                reuse(job, args.reuse_study)
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        outcomes = dict(zip(((j.model, j.key) for j in todo), pool.map(run, todo)))
    peaks = planned_peaks(keys)
    report: dict[str, object] = {"keys": keys, "seeds": args.seeds, "proxy_steps": args.proxy_steps,
                                 "real_steps": args.real_steps, "real_lr": todo[1].config.workload.actor_lr,
                                 "wall_s": time.perf_counter() - start}
    kept: dict[str, list[float]] = {}
    for model in ("proxy", "real"):
        records = [_record(i, key, outcomes[(model, key)], peaks[key]) for i, key in enumerate(keys)]
        chosen = recommend(records, policy="min-memory", min_reward_ratio=DEFAULT_MIN_KEPT)
        learning = gain.learning(records[0].result)
        kept[model] = []
        rows = {}
        for record, key in zip(records, keys):
            found = gain.kept(record.result, records[0].result)
            kept[model].append(found.value if found else float("nan"))
            rows[key] = {"reward": record.result.reward, "initial": record.result.initial_reward,
                         "kept": None if found is None else found.value, "kept_se": None if found is None else found.se}
        report[model] = {"rows": rows, "pick": keys[chosen.record.number], "reason": chosen.reason,
                         "learning": None if learning is None else learning.describe(),
                         "cpu_s": sum(outcomes[(model, k)].wall_time_s for k in keys)}
    report["kendall_tau"] = kendall_tau(kept["proxy"], kept["real"])
    report["same_pick"] = report["proxy"]["pick"] == report["real"]["pick"]   # type: ignore[index]
    report["peaks_gb"] = peaks
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print(report, keys)
    return report


def _print(report: dict, keys: list[str]) -> None:
    print(f"{'key':18} {'peak GiB':>9} {'proxy kept':>14} {'real kept':>14}")
    for key in keys:
        p, r = report["proxy"]["rows"][key], report["real"]["rows"][key]
        cell = lambda row: "-" if row["kept"] is None else f"{row['kept']:.2f} ± {row['kept_se']:.2f}"  # noqa: E731
        print(f"{key:18} {report['peaks_gb'][key]:9.2f} {cell(p):>14} {cell(r):>14}")
    print(f"proxy ({PROXY}, {report['proxy_steps']} steps): {report['proxy']['learning']}")
    print(f"real ({REAL}, {report['real_steps']} steps): {report['real']['learning']}")
    print(f"Kendall tau {report['kendall_tau']:.2f}; min-memory pick: proxy {report['proxy']['pick']}, "
          f"real {report['real']['pick']} ({'same' if report['same_pick'] else 'different'}); "
          f"reward-run CPU time: proxy {report['proxy']['cpu_s'] / 60:.1f} min, "
          f"real {report['real']['cpu_s'] / 60:.1f} min")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
