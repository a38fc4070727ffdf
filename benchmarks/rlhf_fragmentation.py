"""RLHF memory (Zhou et al., 2024): each memory intervention alone, then the best combination.

One PPO iteration with four models, planned with `autotune.rlhf.trial.plan_trial` (fake tensors on
the CPU, GPU memory predicted by the caching-allocator simulator), for the paper's pairing
(`opt-1.3b` actor with `opt-350m` critic, DeepSpeed-Chat's default) and for `llama-1b`. For each
intervention it reports peak reserved and allocated memory, fragmentation, and the phase that sets
the peak; then it combines the interventions that helped (the best of each kind) and plans that too.

By default ZeRO stages 1 to 3 are planned at world size 1, where sharding saves nothing.
`--paper-setting` plans the paper's own setting instead: the OPT pairing at world size 4 (rank 0 of
4, through DeepSpeed's own ZeRO code on a fake process group), DeepSpeed-Chat's lengths, ZeRO-2 as
the baseline, on 24 GiB devices (RTX 3090). The plan has no compute, so it cannot measure the time
cost of an intervention (the paper's ~2% for empty_cache).

Run `python -m benchmarks.rlhf_fragmentation` (reduced: short prompts and responses) or `--full`
(DeepSpeed-Chat's lengths: 256 prompt + 256 generated tokens, 16 sequences).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autotune.config import PHASES, TrialConfig
from benchmarks.common import (
    TAG_HELP,
    THREADS_HELP,
    Column,
    OutputDirs,
    gib,
    num,
    output_name,
    pct,
    print_table,
    pyplot,
    write_results,
)

logger = logging.getLogger(__name__)

NAME = "rlhf_fragmentation"


@dataclass(frozen=True, kw_only=True)
class Pairing:
    """The four PPO models: the actor (and reference) and the critic (and reward model)."""

    name: str
    actor: str
    critic: str | None = None   # None: the actor's architecture


PAIRINGS: tuple[Pairing, ...] = (
    Pairing(name="opt-1.3b+opt-350m", actor="opt-1.3b", critic="opt-350m"),
    Pairing(name="llama-1b", actor="llama-1b"),
)


@dataclass(frozen=True, kw_only=True)
class Intervention:
    """A memory policy as dotted TrialConfig overrides. `kind` groups rivals: a combination takes one per kind."""

    name: str
    kind: str
    overrides: tuple[tuple[str, Any], ...] = ()
    note: str = ""


ZERO_NOTE = "world size 1: no sharding"
INTERVENTIONS: tuple[Intervention, ...] = (
    Intervention(name="none", kind="none"),
    Intervention(name="empty_cache after generation", kind="empty_cache",
                 overrides=(("memory.empty_cache_after", ("generation",)),)),
    Intervention(name="empty_cache after every phase", kind="empty_cache",
                 overrides=(("memory.empty_cache_after", PHASES),)),
    Intervention(name="gradient checkpointing", kind="checkpointing",
                 overrides=(("memory.actor_gradient_checkpointing", True),
                            ("memory.critic_gradient_checkpointing", True))),
    *(Intervention(name=f"ZeRO stage {k}", kind="zero", overrides=(("memory.zero_stage", k),), note=ZERO_NOTE)
      for k in (1, 2, 3)),
    Intervention(name="expandable_segments", kind="allocator",
                 overrides=(("memory.allocator.expandable_segments", True),)),
    Intervention(name="max_split_size_mb 128", kind="allocator",
                 overrides=(("memory.allocator.max_split_size_mb", 128),)),
    Intervention(name="static KV cache", kind="kv_cache", overrides=(("memory.static_kv_cache", True),)),
)


@dataclass(frozen=True, kw_only=True)
class WorkloadShape:
    """The PPO iteration's size: sequences, lengths and precision."""

    batch_size: int
    prompt_len: int
    gen_len: int
    dtype: str = "float16"      # DeepSpeed-Chat trains in fp16
    world_size: int = 1         # ranks; the plan is rank 0's
    zero_stage: int = 0         # the baseline's ZeRO stage (an intervention may change it)

    def overrides(self) -> dict[str, Any]:
        return {"workload.batch_size": self.batch_size, "workload.micro_batch": self.batch_size,
                "workload.prompt_len": self.prompt_len, "workload.gen_len": self.gen_len,
                "model.dtype": self.dtype, "world_size": self.world_size, "memory.zero_stage": self.zero_stage}


FULL = WorkloadShape(batch_size=16, prompt_len=256, gen_len=256)
# Under fake tensors each generated token is one traced forward: short responses keep `make bench` quick.
REDUCED = WorkloadShape(batch_size=8, prompt_len=64, gen_len=8)
# The paper's setting: four 24 GB RTX 3090s, DeepSpeed-Chat's OPT pairing at its lengths (16 sequences
# of 256 + 256 tokens per GPU), ZeRO-2 for actor and critic as its single-node step-3 OPT scripts run.
PAPER = WorkloadShape(batch_size=16, prompt_len=256, gen_len=256, world_size=4, zero_stage=2)
PAPER_DEVICE_GB = 24.0
PAPER_INTERVENTIONS: tuple[Intervention, ...] = (
    Intervention(name="none", kind="none", note="ZeRO-2"),
    Intervention(name="empty_cache after generation", kind="empty_cache",
                 overrides=(("memory.empty_cache_after", ("generation",)),)),
    *(Intervention(name=f"ZeRO stage {k}", kind="zero", overrides=(("memory.zero_stage", k),)) for k in (0, 1, 3)),
    Intervention(name="ZeRO-2 + optimizer offload", kind="offload", overrides=(("memory.offload_optimizer", True),)),
    Intervention(name="ZeRO-3 + optimizer offload", kind="offload",
                 overrides=(("memory.zero_stage", 3), ("memory.offload_optimizer", True))),
    Intervention(name="gradient checkpointing", kind="checkpointing",
                 overrides=(("memory.actor_gradient_checkpointing", True),
                            ("memory.critic_gradient_checkpointing", True))),
)


@dataclass(frozen=True, kw_only=True)
class PlanRow:
    """One planned PPO iteration: a pairing under one intervention (or the combination)."""

    pairing: str
    intervention: str
    status: str
    peak_reserved_bytes: int | None
    peak_allocated_bytes: int | None
    fragmentation: float | None
    peak_phase: str | None
    reserved_vs_none: float | None       # peak reserved / the same pairing's "none" peak reserved
    phase_reserved_bytes: tuple[int, ...] = ()   # per phase, in PHASES order
    phase_fragmentation: tuple[float, ...] = ()
    wall_time_s: float = 0.0
    note: str = ""


def trial_config(pairing: Pairing, shape: WorkloadShape, intervention: Intervention) -> TrialConfig:
    """The PPO TrialConfig of one pairing and workload shape, under one intervention."""
    base = TrialConfig().replace(**{"model.actor": pairing.actor, "model.critic": pairing.critic,
                                    "algorithm": "ppo", **shape.overrides()})
    return base.replace(**dict(intervention.overrides))


def plan_one(pairing: Pairing, shape: WorkloadShape, intervention: Intervention, *, cpu_steps: int = 0) -> PlanRow:
    """Measure one config and turn its memory report into a row (reserved_vs_none filled in later).

    With `cpu_steps` = 0 it plans one iteration (fake tensors); otherwise it runs `cpu_steps` real
    iterations on the CPU backend, whose alloc/free trace goes through the same simulator, to show
    what happens across iterations, which a one-iteration plan cannot.
    """
    from autotune.rlhf.trial import plan_trial, run_trial

    start = time.perf_counter()
    cfg = trial_config(pairing, shape, intervention)
    if cpu_steps:
        result = run_trial(cfg.replace(device="cpu", **{"workload.steps": cpu_steps}))
    else:
        result = plan_trial(cfg)
    elapsed = time.perf_counter() - start
    report = result.memory
    note = "; ".join(filter(None, [intervention.note, "" if result.ok else result.message]))
    logger.info("%s / %s: %s in %.1f s; %s", pairing.name, intervention.name, result.status, elapsed,
                "" if report is None else " ".join(f"{p.name}={p.peak_reserved_bytes}/{p.peak_allocated_bytes}"
                                                   for p in report.phases))
    if report is None:
        return PlanRow(pairing=pairing.name, intervention=intervention.name, status=result.status,
                       peak_reserved_bytes=None, peak_allocated_bytes=None, fragmentation=None,
                       peak_phase=None, reserved_vs_none=None, wall_time_s=elapsed, note=note)
    phases = [report.phase(name) for name in PHASES]
    return PlanRow(
        pairing=pairing.name, intervention=intervention.name, status=result.status,
        peak_reserved_bytes=report.peak_reserved_bytes, peak_allocated_bytes=report.peak_allocated_bytes,
        fragmentation=report.fragmentation, peak_phase=report.peak_phase, reserved_vs_none=None,
        phase_reserved_bytes=tuple(p.peak_reserved_bytes if p else 0 for p in phases),
        phase_fragmentation=tuple(p.fragmentation if p else 0.0 for p in phases),
        wall_time_s=elapsed, note=note,
    )


def best_combination(rows: Sequence[PlanRow], interventions: Sequence[Intervention]) -> Intervention | None:
    """The best single intervention of each kind that lowered peak reserved, merged into one policy.

    Returns None when no intervention beat "none".
    """
    by_name = {i.name: i for i in interventions}
    none = next((r for r in rows if r.intervention == "none" and r.peak_reserved_bytes), None)
    if none is None:
        return None
    helpful = [r for r in rows if r.status == "ok" and r.intervention in by_name
               and r.peak_reserved_bytes is not None and r.peak_reserved_bytes < none.peak_reserved_bytes]
    chosen: dict[str, PlanRow] = {}
    for row in sorted(helpful, key=lambda r: r.peak_reserved_bytes):
        chosen.setdefault(by_name[row.intervention].kind, row)
    if not chosen:
        return None
    picks = [by_name[row.intervention] for row in chosen.values()]
    return Intervention(name="best combination: " + " + ".join(p.name for p in picks), kind="combination",
                        overrides=tuple(o for p in picks for o in p.overrides),
                        note="; ".join(dict.fromkeys(p.note for p in picks if p.note)))


def with_ratios(rows: Sequence[PlanRow]) -> list[PlanRow]:
    """Fill `reserved_vs_none` against each pairing's "none" row."""
    base = {r.pairing: r.peak_reserved_bytes for r in rows if r.intervention == "none"}
    return [dataclasses.replace(r, reserved_vs_none=r.peak_reserved_bytes / base[r.pairing])
            if r.peak_reserved_bytes and base.get(r.pairing) else r for r in rows]


def run(shape: WorkloadShape, pairings: Sequence[Pairing] = PAIRINGS,
        interventions: Sequence[Intervention] = INTERVENTIONS) -> list[PlanRow]:
    """Every pairing under every intervention, then under its best combination."""
    rows: list[PlanRow] = []
    for pairing in pairings:
        singles = [plan_one(pairing, shape, i) for i in interventions]
        combo = best_combination(singles, interventions)
        rows += singles + ([plan_one(pairing, shape, combo)] if combo else [])
    return with_ratios(rows)


# The cross-iteration check: real tensors on the CPU, so a model small enough to compute here.
CPU_PAIRING = Pairing(name="llama-small, cpu", actor="llama-small")
CPU_SHAPE = WorkloadShape(batch_size=8, prompt_len=64, gen_len=16, dtype="float32")
CPU_INTERVENTIONS = ("none", "empty_cache after generation", "empty_cache after every phase", "expandable_segments")


def cpu_check(steps: int, shape: WorkloadShape = CPU_SHAPE, pairing: Pairing = CPU_PAIRING) -> list[PlanRow]:
    """Several real PPO iterations on the CPU backend under the empty_cache and allocator interventions."""
    chosen = [i for i in INTERVENTIONS if i.name in CPU_INTERVENTIONS]
    named = dataclasses.replace(pairing, name=f"{pairing.name} x{steps} iterations")
    return with_ratios([plan_one(named, shape, i, cpu_steps=steps) for i in chosen])


def empty_cache_effect(rows: Sequence[PlanRow]) -> dict[str, float]:
    """Reduction of peak reserved from each empty_cache placement, per pairing (the paper: ~25% on average)."""
    return {f"{r.pairing}: {r.intervention}": 1.0 - r.reserved_vs_none for r in rows
            if r.intervention.startswith("empty_cache") and r.reserved_vs_none is not None}


def plot(rows: Sequence[PlanRow], path: Any) -> None:
    """Peak reserved (orange) over peak allocated (blue) per intervention, one panel per pairing.

    The axis starts near the smallest allocated peak: the interventions differ by a few percent of
    a footprint that model weights and optimizer state dominate, which a zero-based axis hides.
    """
    plt = pyplot()
    pairings = list(dict.fromkeys(r.pairing for r in rows))
    fig, axes = plt.subplots(1, len(pairings), figsize=(7 * len(pairings), 5.5), squeeze=False)
    for ax, pairing in zip(axes[0], pairings):
        group = [r for r in rows if r.pairing == pairing and r.peak_reserved_bytes]
        labels = [textwrap.fill(r.intervention.replace("best combination: ", "best: "), 34) for r in group]
        reserved = [r.peak_reserved_bytes / 2**30 for r in group]
        allocated = [r.peak_allocated_bytes / 2**30 for r in group]
        ax.barh(labels, reserved, color="tab:orange", label="peak reserved")
        ax.barh(labels, allocated, color="tab:blue", label="peak allocated")
        ax.set_xlim(0.97 * min(allocated), 1.01 * max(reserved))
        ax.invert_yaxis()
        ax.set(xlabel="GiB on the simulated GPU (axis does not start at 0)", title=f"PPO iteration, {pairing}")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = (
    Column(key="pairing", header="models"),
    Column(key="intervention", header="intervention"),
    Column(key="status", header="status"),
    Column(key="peak_reserved_bytes", header="peak reserved GiB", fmt=gib),
    Column(key="peak_allocated_bytes", header="peak allocated GiB", fmt=gib),
    Column(key="fragmentation", header="fragmentation", fmt=pct),
    Column(key="peak_phase", header="peak phase", fmt=lambda v: v or "-"),
    Column(key="reserved_vs_none", header="reserved / none", fmt=num),
    Column(key="note", header="note"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rlhf_fragmentation", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="DeepSpeed-Chat's lengths (256 + 256 tokens, 16 sequences)")
    parser.add_argument("--paper-setting", action="store_true",
                        help="the paper's setting: OPT pairing, rank 0 of 4, ZeRO-2 baseline, 256 + 256 tokens, "
                             "24 GiB devices")
    parser.add_argument("--pairing", action="append", choices=[p.name for p in PAIRINGS],
                        help="only these model pairings (repeatable); default: all")
    parser.add_argument("--intervention", action="append",
                        choices=list(dict.fromkeys(i.name for i in (*INTERVENTIONS, *PAPER_INTERVENTIONS))),
                        help="only these interventions (repeatable; 'none' is always planned); default: all")
    parser.add_argument("--gen-len", type=int, help="override the generated tokens per sequence")
    parser.add_argument("--cpu-steps", type=int, default=None,
                        help="iterations of the cross-iteration check on llama-small with real CPU tensors "
                             "(default 2, or 4 with --full; 0 skips it)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tag", help=TAG_HELP)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, dirs: OutputDirs | None = None,
         shape: WorkloadShape | None = None, pairings: Sequence[Pairing] | None = None,
         interventions: Sequence[Intervention] | None = None) -> list[PlanRow]:
    """Plan every intervention (and run the CPU cross-iteration check), print, write results and the figure.

    Args:
        argv: command-line arguments (`--full`, `--pairing NAME`, `--intervention NAME`, `--gen-len N`,
            `--cpu-steps N`, `--threads N`, `--tag TEXT`).
        dirs: where to write (tests pass a temporary folder).
        shape, pairings, interventions: replace what the arguments choose (tests pass tiny ones).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.paper_setting:
        return paper_setting(args, dirs=dirs, shape=shape)
    shape = shape or (FULL if args.full else REDUCED)
    if args.gen_len:
        shape = dataclasses.replace(shape, gen_len=args.gen_len)
    pairings = pairings or [p for p in PAIRINGS if not args.pairing or p.name in args.pairing]
    wanted = {"none", *(args.intervention or [i.name for i in INTERVENTIONS])}
    interventions = interventions or [i for i in INTERVENTIONS if i.name in wanted]
    dirs = (dirs or OutputDirs()).ensure()
    name = output_name(NAME, full=args.full, tag=args.tag)
    cpu_steps = args.cpu_steps if args.cpu_steps is not None else (4 if args.full else 2)
    rows = run(shape, pairings, interventions) + (cpu_check(cpu_steps) if cpu_steps else [])
    effect = empty_cache_effect(rows)
    print_table(f"PPO iteration, planned (fake tensors + allocator simulator): {shape}", rows, COLUMNS)
    for label, drop in effect.items():
        print(f"  {label}: peak reserved {100 * drop:.1f}% lower (the paper: about 25% lower on average)")
    write_results(name, rows, dirs, extra={"shape": dataclasses.asdict(shape), "phases": list(PHASES),
                                           "empty_cache_effect": effect})
    plot(rows, dirs.img / f"{name}.png")
    return rows


def paper_setting(args: argparse.Namespace, *, dirs: OutputDirs | None = None,
                  shape: WorkloadShape | None = None) -> list[PlanRow]:
    """The paper's own setting, planned for rank 0 of 4; rows over 24 GiB are marked."""
    shape = shape or PAPER
    if args.gen_len:
        shape = dataclasses.replace(shape, gen_len=args.gen_len)
    dirs = (dirs or OutputDirs()).ensure()
    pairing = dataclasses.replace(PAIRINGS[0], name=f"{PAIRINGS[0].name}, rank 0 of {shape.world_size}")
    wanted = set(args.intervention or [i.name for i in PAPER_INTERVENTIONS])   # ratios need "none" among them
    rows = with_ratios([plan_one(pairing, shape, i) for i in PAPER_INTERVENTIONS if i.name in wanted])
    rows = [dataclasses.replace(r, note="; ".join(filter(None, [r.note, "over 24 GiB"])))
            if r.peak_reserved_bytes and r.peak_reserved_bytes > PAPER_DEVICE_GB * 2**30 else r for r in rows]
    print_table(f"The paper's setting, planned for rank 0: {shape}", rows, COLUMNS)
    write_results(output_name(NAME, full=False, tag=args.tag or "paper"), rows, dirs,
                  extra={"shape": dataclasses.asdict(shape), "phases": list(PHASES), "device_gb": PAPER_DEVICE_GB})
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
