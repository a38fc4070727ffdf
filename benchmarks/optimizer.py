"""FRUGAL against torch's foreach AdamW on a ~50M-parameter Llama on the CPU, measured side by side.

    .venv/bin/python -m benchmarks.optimizer            # hidden 512, 8 layers, vocab 16384: ~50M parameters
    .venv/bin/python -m benchmarks.optimizer --small    # a ~3M model, for a quick look

For each optimizer (AdamW, FRUGAL at density 0, 0.25 and 1) it prints:
- the median time of `optimizer.step()` alone (forward and backward excluded), after warm-up, with
  the optimizers taking turns in every repeat so that load from other processes hits them alike;
- optimizer-state bytes, in all and on the FRUGAL-eligible Linear weights, relative to AdamW;
- the peak of live tensor storage over one training step (forward, backward, step), from
  `autotune.memory.tracer.StorageTracer`, parameters and existing state included.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from autotune.config import PartitionSpec
from autotune.memory.tracer import StorageTracer
from autotune.optim import FRUGAL, find_blocks, optimizer_state_bytes, partition
from autotune.optim.blocks import linear_weights
from benchmarks.corpus import batches, stdlib_corpus

MiB = float(1 << 20)
DENSITIES = (0.0, 0.25, 1.0)


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    step_time_s: float
    state_bytes: int
    eligible_state_bytes: int
    peak_step_bytes: int


def build_model(small: bool) -> torch.nn.Module:
    """A random Llama: ~50M parameters (8 layers, so density 0.25 keeps exactly 2 layers' blocks), or ~3M."""
    from transformers import LlamaConfig, LlamaForCausalLM

    size = dict(hidden_size=128, intermediate_size=512, vocab_size=4096) if small else dict(
        hidden_size=512, intermediate_size=2048, vocab_size=16384
    )
    config = LlamaConfig(num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=256, **size)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def build_optimizers(model: torch.nn.Module, lr: float) -> dict[str, torch.optim.Optimizer]:
    """AdamW and FRUGAL at each density over the same parameters (values do not change step cost)."""
    optimizers: dict[str, torch.optim.Optimizer] = {
        "AdamW (foreach)": torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)}
    for density in DENSITIES:
        groups = partition(model, PartitionSpec(density=density))
        optimizers[f"FRUGAL rho={density:g}"] = FRUGAL(groups, lr=lr, density=density)
    return optimizers


def time_steps(optimizers: dict[str, torch.optim.Optimizer], *, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of `step()` per optimizer, taking turns within each repeat."""
    names = list(optimizers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + repeats):
        # rotate who goes first, so that no optimizer always runs right after the same neighbour
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            optimizers[name].step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_step_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> int:
    """Peak live storage bytes over forward, backward and step; parameters and optimizer state count."""
    model.zero_grad(set_to_none=True)
    with StorageTracer(record=False) as tracer:
        tracer.track(model, optimizer)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return tracer.peak_bytes


def measure(args: argparse.Namespace) -> tuple[list[Row], int]:
    """All rows, AdamW first, and the model's parameter count."""
    model = build_model(args.small)
    eligible = [w for block in find_blocks(model) for w in linear_weights(block)]
    optimizers = build_optimizers(model, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = next(batches(stdlib_corpus(1 << 20), args.batch, args.seq_len, generator))
    model(input_ids=ids, labels=ids).loss.backward()  # real gradients, reused by every timed step
    step_times = time_steps(optimizers, warmup=args.warmup, repeats=args.repeats)
    rows = []
    for name, optimizer in optimizers.items():
        state, eligible_state = optimizer_state_bytes(optimizer), optimizer_state_bytes(optimizer, eligible)
        rows.append(Row(name=name, step_time_s=step_times[name], state_bytes=state,
                        eligible_state_bytes=eligible_state, peak_step_bytes=peak_step_bytes(model, optimizer, ids)))
        model(input_ids=ids, labels=ids).loss.backward()  # gradients back for the next peak measurement
    return rows, sum(p.numel() for p in model.parameters())


def render(rows: list[Row], title: str) -> Table:
    base = rows[0]
    table = Table(title=title)
    for column in ("optimizer", "step ms", "step / AdamW", "state MiB", "state / AdamW",
                   "eligible state / AdamW", "peak step MiB", "peak / AdamW"):  # ratios: this row / AdamW row
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.step_time_s * 1e3:.1f}",
            f"{row.step_time_s / base.step_time_s:.3f}",
            f"{row.state_bytes / MiB:.1f}",
            f"{row.state_bytes / base.state_bytes:.3f}",
            f"{row.eligible_state_bytes / base.eligible_state_bytes:.3f}",
            f"{row.peak_step_bytes / MiB:.1f}",
            f"{row.peak_step_bytes / base.peak_step_bytes:.3f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a ~3M-parameter model for a quick run")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per optimizer (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 keeps timings steady on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=132)
    rows, n_params = measure(args)
    title = (f"FRUGAL vs AdamW: Llama {n_params / 1e6:.1f}M params, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}")
    console.print(render(rows, title))
    console.print("Targets: step/AdamW <= 1.0 at rho=0.25 and <= 1.1 at rho=1; "
                  "eligible state/AdamW <= 0.30 at rho=0.25.")


if __name__ == "__main__":
    main()
