"""`make bench`: the reduced form of the three paper-reproduction benchmarks, one after another.

Each writes its raw results under runs/bench/ and its figure under docs/img/; `--full` passes on
to every benchmark (paper-sized runs: hours on a 2-core CPU). Run one benchmark alone with
`python -m benchmarks.<name>`.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence

from benchmarks import frugal_pretrain, rlhf_fragmentation, search_quality

logger = logging.getLogger(__name__)

BENCHMARKS: dict[str, Callable[[Sequence[str]], object]] = {
    "rlhf_fragmentation": rlhf_fragmentation.main,
    "frugal_pretrain": frugal_pretrain.main,
    "search_quality": search_quality.main,
}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the chosen benchmarks; returns each one's wall seconds."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the paper-sized runs")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run only these (repeatable)")
    args = parser.parse_args(argv)
    passed = ["--full"] if args.full else []
    seconds = {}
    for name, run in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        run(passed)
        seconds[name] = time.perf_counter() - start
        logger.info("%s took %.0f s", name, seconds[name])
    logger.info("all benchmarks: %.0f s (%s)", sum(seconds.values()),
                ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    return seconds


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
