"""How fast the caching-allocator simulator replays long traces (target: 1M events in < 10 s).

Run: `.venv/bin/python -m benchmarks.allocator [--events 1000000] [--seed 0] [--tracer]`

`--tracer` also times a tiny-Llama PPO-like iteration (16-token decode with a growing KV cache,
then forward, backward and AdamW step) plain and under the simulated probe, per aten op.

The synthetic trace mimics an RLHF iteration's mix: mostly small activations, some
multi-MiB tensors, a few big ones, with a live set of a few thousand blocks freed in random order.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autotune.config import AllocatorConfig
from autotune.memory.allocator import CachingAllocatorSim

CONFIGS = {
    "default": "",
    "max_split_size_mb:128": "max_split_size_mb:128",
    "expandable_segments:True": "expandable_segments:True",
}


def synthetic_trace(n_events: int, seed: int = 0, live_target: int = 2000) -> list[tuple[bool, int]]:
    """(is_malloc, size or index-into-live) pairs; a free names which live block to drop."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(512), np.log(64 << 20), n_events)).astype(np.int64)
    picks = rng.random(n_events)
    events: list[tuple[bool, int]] = []
    live = 0
    for i in range(n_events):
        # Grow towards the live target, then hover around it: half mallocs, half frees.
        if live == 0 or (live < live_target and picks[i] < 0.6) or (live >= live_target and picks[i] < 0.5):
            events.append((True, int(sizes[i])))
            live += 1
        else:
            events.append((False, int(sizes[i] % live)))
            live -= 1
    return events


def replay(events: list[tuple[bool, int]], config: AllocatorConfig) -> tuple[float, dict[str, int]]:
    sim = CachingAllocatorSim(config)
    live: list[int] = []
    start = time.process_time()     # CPU seconds: the shared box's wall clock is noisy
    for is_malloc, value in events:
        if is_malloc:
            live.append(sim.malloc(value))
        else:
            # Swap-remove: O(1) random free.
            live[value], live[-1] = live[-1], live[value]
            sim.free(live.pop())
    return time.process_time() - start, sim.stats()


def _tiny_llama_iteration():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    prompts = torch.randint(0, cfg.vocab_size, (8, 8))

    def iteration() -> None:
        with torch.no_grad():
            out = model(input_ids=prompts, use_cache=True)
            tokens = [prompts]
            for _ in range(16):
                probs = torch.softmax(out.logits[:, -1], dim=-1)
                tokens.append(torch.multinomial(probs, 1))
                out = model(input_ids=tokens[-1], past_key_values=out.past_key_values, use_cache=True)
        seqs = torch.cat(tokens, dim=1)
        model(input_ids=seqs, labels=seqs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, iteration


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def tracer_overhead(repeats: int = 3) -> None:
    """Print the per-op cost of tracing plus live simulation on a tiny-Llama iteration."""
    from autotune.memory.probes import make_probe

    # One intra-op thread: on a shared 2-core box, idle OpenMP workers spinning between ops
    # otherwise swamp what is being measured.
    torch.set_num_threads(1)
    model, iteration = _tiny_llama_iteration()
    iteration()                                  # warm up: optimizer state, kernels
    counter = _CountOps()
    with counter:
        iteration()

    def timed(wrap) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            wrap()
            best = min(best, time.perf_counter() - start)
        return best

    def probed() -> None:
        probe = make_probe("cpu", AllocatorConfig())
        with probe:
            probe.track(model)
            with probe.phase("iteration"):
                iteration()

    def empty_mode() -> None:
        with _CountOps():
            iteration()

    plain, dispatch, traced = timed(iteration), timed(empty_mode), timed(probed)
    per_op = (traced - plain) / counter.ops * 1e6
    print(f"tiny-Llama iteration, {counter.ops} aten ops: plain {plain * 1e3:.0f} ms, any Python dispatch mode "
          f"{dispatch * 1e3:.0f} ms, traced + simulated {traced * 1e3:.0f} ms ({per_op:.0f} us per op overhead)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracer", action="store_true", help="also time the tracer on a tiny Llama")
    args = parser.parse_args()
    events = synthetic_trace(args.events, args.seed)
    for name, text in CONFIGS.items():
        seconds, stats = replay(events, AllocatorConfig.from_env_string(text))
        print(f"{name:28s} {len(events):>9,d} events in {seconds:6.2f} CPU s "
              f"({len(events) / seconds / 1e3:7.0f} k events/s)  peak reserved "
              f"{stats['peak_reserved_bytes'] / 2**30:6.2f} GiB, segments {stats['segments']}")
    if args.tracer:
        tracer_overhead()


if __name__ == "__main__":
    main()
