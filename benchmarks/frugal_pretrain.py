"""FRUGAL (Zmushko et al., 2024) pretraining comparison on a real corpus: does the paper's ordering hold?

Pretrains a small Llama on the Python standard library's own sources (byte-level tokens, vocab 256)
with a fixed token budget, once per optimizer and seed:

- AdamW (torch, foreach);
- FRUGAL ρ = 0.25 and ρ = 0: signSGD state-free, blocks visited in descending order, a move every
  `update_gap` steps (the paper's block variant);
- BAdam-like: FRUGAL ρ = 0.25 with state-free rule `none` (inactive blocks are frozen);
- GaLore (`galore_torch.GaLoreAdamW`) at rank ρ·d on the same Linear weights.

Embeddings, LM head and norms stay on AdamW in every method, as in the paper. It reports validation
loss (nats per byte) and perplexity, optimizer-state bytes (GaLore's projection matrices included)
and the step time, each also as a ratio to AdamW measured in the same run. The paper's ordering is
AdamW ≳ FRUGAL(0.25) > FRUGAL(0) > GaLore ≈ BAdam.

Run `python -m benchmarks.frugal_pretrain` (reduced: 0.86M parameters, 400 steps, 1 seed, T scaled
down with the step count to 40) or `--full` (the paper-shaped 19M-parameter run, 3 seeds, T = 200).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    TAG_HELP,
    THREADS_HELP,
    Column,
    OutputDirs,
    mib,
    num,
    output_name,
    print_table,
    pyplot,
    write_results,
)
from benchmarks.corpus import batches, stdlib_corpus

logger = logging.getLogger(__name__)

NAME = "frugal_pretrain"


@dataclass(frozen=True, kw_only=True)
class PretrainSettings:
    """Model shape, token budget and optimizer schedule of one comparison."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    seq_len: int
    batch: int
    steps: int
    update_gap: int            # FRUGAL's T and GaLore's projection refresh, in steps
    lr: float
    seeds: tuple[int, ...]
    density: float = 0.25      # ρ for FRUGAL, BAdam, and GaLore's rank ρ·hidden
    corpus_bytes: int = 8 << 20
    val_share: float = 0.05    # the corpus tail held out for validation
    val_batches: int = 8
    evals: int = 6             # validation points along the run, for the curves
    warmup_share: float = 0.1
    clip_norm: float = 1.0

    @property
    def tokens(self) -> int:
        return self.steps * self.batch * self.seq_len


# --full moves FRUGAL's window every 200 steps as the paper does, 10 times in its 2000 steps; the
# reduced run keeps the 10 moves by scaling T with the step count.
FULL = PretrainSettings(hidden=512, layers=6, intermediate=1376, heads=8, seq_len=256, batch=32,
                        steps=2000, update_gap=200, lr=1e-3, seeds=(0, 1, 2))
REDUCED = PretrainSettings(hidden=128, layers=4, intermediate=344, heads=4, seq_len=64, batch=16,
                           steps=400, update_gap=40, lr=1e-3, seeds=(0,), corpus_bytes=4 << 20)


@dataclass(frozen=True, kw_only=True)
class Method:
    """One optimizer under test."""

    name: str
    kind: str                  # "adamw", "frugal" or "galore"
    density: float = 0.25
    state_free_rule: str = "signsgd"


METHODS: tuple[Method, ...] = (
    Method(name="adamw", kind="adamw", density=1.0),
    Method(name="frugal-0.25", kind="frugal", density=0.25),
    Method(name="frugal-0", kind="frugal", density=0.0),
    Method(name="badam", kind="frugal", density=0.25, state_free_rule="none"),
    Method(name="galore", kind="galore", density=0.25),
)


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One (method, seed) pretraining run."""

    method: str
    seed: int
    params: int
    tokens: int
    val_loss: float            # mean cross-entropy on the held-out tail, nats per byte
    val_ppl: float
    state_bytes: int           # optimizer state held at the end of the run
    step_time_s: float         # median forward + backward + optimizer step
    opt_step_time_s: float     # median optimizer step alone
    eval_steps: tuple[int, ...]
    eval_losses: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    """One method over all seeds, with ratios to AdamW from the same run."""

    method: str
    seeds: int
    val_loss: float
    val_loss_std: float
    val_ppl: float
    state_bytes: int
    state_ratio: float
    step_time_ratio: float
    opt_step_time_ratio: float


def build_model(settings: PretrainSettings, seed: int) -> nn.Module:
    """A randomly initialised LlamaForCausalLM over bytes (vocab 256); same weights for a seed."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=settings.hidden, num_hidden_layers=settings.layers,
        intermediate_size=settings.intermediate, num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads, max_position_embeddings=settings.seq_len,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def make_optimizer(method: Method, model: nn.Module, settings: PretrainSettings) -> torch.optim.Optimizer:
    """The method's optimizer over `model`, built through autotune.optim where it is ours."""
    from autotune.config import OptimizerConfig, PartitionSpec
    from autotune.optim import build_optimizer

    if method.kind == "galore":
        return _galore(model, settings, rank=max(1, round(method.density * settings.hidden)))
    spec = PartitionSpec(placement="rotate", density=method.density, order="descending",
                         update_gap=settings.update_gap, state_free_rule=method.state_free_rule)
    return build_optimizer(model, OptimizerConfig(partition=spec), lr=settings.lr, frugal=method.kind == "frugal")


def _galore(model: nn.Module, settings: PretrainSettings, *, rank: int) -> torch.optim.Optimizer:
    # GaLore projects the same Linear weights FRUGAL splits; the rest stays on AdamW as in both papers.
    # scale 1.0 keeps GaLore's effective step equal to AdamW's (its paper pairs lr 1e-2 with scale 0.25).
    from galore_torch import GaLoreAdamW

    from autotune.optim import find_blocks
    from autotune.optim.blocks import linear_weights

    projected = {id(p) for p in linear_weights(find_blocks(model))}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in projected]},
        {"params": [p for p in model.parameters() if id(p) in projected], "rank": rank,
         "update_proj_gap": settings.update_gap, "scale": 1.0, "proj_type": "std"},
    ]
    return GaLoreAdamW(groups, lr=settings.lr, eps=1e-8, weight_decay=0.0, no_deprecation_warning=True)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Optimizer-state bytes, counting GaLore's projection matrices, which live in a projector object."""
    from autotune.optim import optimizer_state_bytes

    projectors = [s["projector"] for s in optimizer.state.values() if "projector" in s]
    matrices = [p.ortho_matrix for p in projectors if isinstance(p.ortho_matrix, torch.Tensor)]
    return optimizer_state_bytes(optimizer) + sum(m.numel() * m.element_size() for m in matrices)


def lr_lambda(settings: PretrainSettings) -> Callable[[int], float]:
    """Linear warm-up over `warmup_share` of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, round(settings.warmup_share * settings.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, val: Sequence[torch.Tensor]) -> float:
    """Mean next-byte cross-entropy (nats) over fixed validation batches."""
    model.eval()
    losses = [model(input_ids=x, labels=x).loss.item() for x in val]
    model.train()
    return statistics.fmean(losses)


def split_corpus(settings: PretrainSettings) -> tuple[bytes, list[torch.Tensor]]:
    """Training bytes, and fixed validation batches from the held-out tail (same for every run)."""
    data = stdlib_corpus(settings.corpus_bytes)
    cut = int(len(data) * (1 - settings.val_share))
    stream = batches(data[cut:], settings.batch, settings.seq_len, torch.Generator().manual_seed(12345))
    return data[:cut], [next(stream) for _ in range(settings.val_batches)]


def train_one(method: Method, seed: int, settings: PretrainSettings, train: bytes,
              val: Sequence[torch.Tensor]) -> RunRow:
    """Pretrain one model with one optimizer for `settings.steps` steps and measure it."""
    model = build_model(settings, seed)
    optimizer = make_optimizer(method, model, settings)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings))
    stream = batches(train, settings.batch, settings.seq_len, torch.Generator().manual_seed(seed))
    eval_at = {round(settings.steps * (i + 1) / settings.evals) for i in range(settings.evals)}
    step_times, opt_times, curve = [], [], []
    for step in range(1, settings.steps + 1):
        x = next(stream)
        start = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        opt_start = time.perf_counter()
        optimizer.step()
        opt_times.append(time.perf_counter() - opt_start)
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step_times.append(time.perf_counter() - start)
        if step in eval_at:
            curve.append((step, evaluate(model, val)))
            logger.info("%s seed %d step %d: val loss %.4f", method.name, seed, step, curve[-1][1])
    val_loss = curve[-1][1]
    skip = min(5, len(step_times) - 1)  # the first steps allocate state and warm caches
    return RunRow(
        method=method.name, seed=seed, params=sum(p.numel() for p in model.parameters()),
        tokens=settings.tokens, val_loss=val_loss, val_ppl=math.exp(val_loss),
        state_bytes=state_bytes(optimizer), step_time_s=statistics.median(step_times[skip:]),
        opt_step_time_s=statistics.median(opt_times[skip:]),
        eval_steps=tuple(s for s, _ in curve), eval_losses=tuple(v for _, v in curve),
    )


def run(settings: PretrainSettings, methods: Sequence[Method] = METHODS) -> list[RunRow]:
    """Every method on every seed, interleaved by seed so that machine load hits all methods alike."""
    train, val = split_corpus(settings)
    return [train_one(m, seed, settings, train, val) for seed in settings.seeds for m in methods]


def summarize(rows: Sequence[RunRow]) -> list[SummaryRow]:
    """Mean over seeds per method, and ratios to AdamW (the first method when AdamW did not run)."""
    names = list(dict.fromkeys(r.method for r in rows))
    by_name = {n: [r for r in rows if r.method == n] for n in names}
    ref = by_name.get("adamw", by_name[names[0]])

    def mean(group: list[RunRow], key: str) -> float:
        return statistics.fmean(getattr(r, key) for r in group)

    out = []
    for name, group in by_name.items():
        losses = [r.val_loss for r in group]
        out.append(SummaryRow(
            method=name, seeds=len(group), val_loss=statistics.fmean(losses),
            val_loss_std=statistics.stdev(losses) if len(losses) > 1 else 0.0,
            val_ppl=math.exp(statistics.fmean(losses)), state_bytes=round(mean(group, "state_bytes")),
            state_ratio=mean(group, "state_bytes") / mean(ref, "state_bytes"),
            step_time_ratio=mean(group, "step_time_s") / mean(ref, "step_time_s"),
            opt_step_time_ratio=mean(group, "opt_step_time_s") / mean(ref, "opt_step_time_s"),
        ))
    return out


def ordering_checks(summary: Sequence[SummaryRow], *, tolerance: float = 0.01) -> dict[str, bool]:
    """The paper's claims as pairwise comparisons of mean validation loss (lower is better).

    "≳" and "≈" allow `tolerance` nats; ">" is strict. Claims about a method that did not run are left out.
    """
    loss = {row.method: row.val_loss for row in summary}
    claims = {
        "adamw ≳ frugal-0.25": ("adamw", "frugal-0.25", lambda a, b: a <= b + tolerance),
        "frugal-0.25 > frugal-0": ("frugal-0.25", "frugal-0", lambda a, b: a < b),
        "frugal-0 > galore": ("frugal-0", "galore", lambda a, b: a < b),
        "frugal-0 > badam": ("frugal-0", "badam", lambda a, b: a < b),
        "galore ≈ badam": ("galore", "badam", lambda a, b: abs(a - b) <= tolerance),
    }
    return {text: ok(loss[a], loss[b]) for text, (a, b, ok) in claims.items() if a in loss and b in loss}


def plot(rows: Sequence[RunRow], summary: Sequence[SummaryRow], path: Any) -> None:
    """Validation loss along the run (mean over seeds) and optimizer-state size, side by side."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in summary:
        group = [r for r in rows if r.method == row.method]
        losses = [statistics.fmean(vals) for vals in zip(*(r.eval_losses for r in group))]
        left.plot(group[0].eval_steps, losses, marker="o", label=row.method)
    left.set(xlabel="step", ylabel="validation loss (nats/byte)", title="Pretraining on stdlib sources")
    left.legend()
    right.bar([r.method for r in summary], [r.state_bytes / (1 << 20) for r in summary], color="tab:gray")
    right.set(ylabel="optimizer state (MiB)", title="Optimizer state at the end")
    right.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = (
    Column(key="method", header="method"),
    Column(key="seeds", header="seeds"),
    Column(key="val_loss", header="val loss", fmt=num),
    Column(key="val_loss_std", header="± std", fmt=num),
    Column(key="val_ppl", header="val ppl", fmt=num),
    Column(key="state_bytes", header="state MiB", fmt=mib),
    Column(key="state_ratio", header="state / AdamW", fmt=lambda v: f"{v:.2f}"),
    Column(key="step_time_ratio", header="step time / AdamW", fmt=lambda v: f"{v:.2f}"),
    Column(key="opt_step_time_ratio", header="opt step / AdamW", fmt=lambda v: f"{v:.2f}"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frugal_pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the paper-shaped run (~20M parameters, 3 seeds)")
    parser.add_argument("--steps", type=int, help="override the step count (update_gap scales with it)")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--hidden", type=int, help="override the model width (MLP and heads scale with it)")
    parser.add_argument("--lr", type=float, help="override the peak learning rate (every method)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tag", help=TAG_HELP)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> PretrainSettings:
    """FULL or REDUCED with the command line's overrides; T keeps its share of the run."""
    settings = FULL if args.full else REDUCED
    if args.steps:
        gap = max(1, round(settings.update_gap * args.steps / settings.steps))
        settings = dataclasses.replace(settings, steps=args.steps, update_gap=gap)
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(range(args.seeds)))
    if args.hidden:
        # keep the full model's MLP ratio (1376/512) and heads at most 64 wide
        settings = dataclasses.replace(settings, hidden=args.hidden, intermediate=round(args.hidden * 2.6875),
                                       heads=max(4, args.hidden // 64))
    if args.lr:
        settings = dataclasses.replace(settings, lr=args.lr)
    return settings


def main(argv: Sequence[str] | None = None, *, dirs: OutputDirs | None = None,
         settings: PretrainSettings | None = None) -> list[SummaryRow]:
    """Run the comparison, print it, write runs/bench/frugal_pretrain[_full][_TAG].{json,csv} and the PNG.

    Args:
        argv: command-line arguments (`--full`, `--steps N`, `--seeds N`, `--hidden N`, `--lr X`, `--threads N`,
            `--tag TEXT`).
        dirs: where to write (tests pass a temporary folder).
        settings: replaces the settings the arguments would choose (tests pass a tiny model).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = settings or settings_from(args)
    dirs = (dirs or OutputDirs()).ensure()
    name = output_name(NAME, full=args.full, tag=args.tag)
    rows = run(settings)
    summary = summarize(rows)
    checks = ordering_checks(summary)
    print_table(f"FRUGAL pretraining: {rows[0].params / 1e6:.2f}M params, {settings.tokens:,} tokens, "
                f"{len(settings.seeds)} seed(s), T={settings.update_gap}", summary, COLUMNS)
    for claim, holds in checks.items():
        print(f"  {claim}: {'holds' if holds else 'does not hold'}")
    write_results(name, rows, dirs, extra={"settings": dataclasses.asdict(settings),
                                           "summary": [dataclasses.asdict(s) for s in summary],
                                           "ordering": checks})
    plot(rows, summary, dirs.img / f"{name}.png")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
