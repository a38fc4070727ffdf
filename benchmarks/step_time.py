"""The step-time model (autotune.tuner.step_time) against real CPU runs, and one public GPU figure.

    python -m benchmarks.step_time [--model llama-small] [--steps 3] [--threads 1]

The CPU is compute-bound like a GPU's training phases, so the model's *ratios* can be checked
here: each pair of real runs (activation checkpointing on against off, 8 against 4 PPO epochs,
gen_len 64 against 16) gives a measured ratio of median iteration times, printed beside the
predicted one. The 'cpu' device class is calibrated in the same run: its FLOP/s from a matmul of the
model's width and its bandwidth from a large copy, each divided by the model's stated efficiency
so that the effective rates are the measured ones.

The absolute check: NVIDIA's NeMo performance page lists Llama-2-7B inference at batch 1, 128
input and 20 output tokens, 234.0 ms on one A100 80GB SXM4 and 153.8 ms on one H100 80GB HBM3
(https://docs.nvidia.com/nemo-framework/user-guide/latest/performance/llama.html, "Inference
Performance", TP 1); the model's generation time for that shape is printed beside them.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from autotune.config import TrialConfig
from autotune.tuner import step_time
from autotune.tuner.step_time import Device, ModelShape

# meta-llama/Llama-2-7b-hf config: 32 layers, hidden 4096, 32 heads (no GQA), vocab 32000, 6.74B parameters
LLAMA2_7B = ModelShape(params=6_738_415_616, layers=32, hidden=4096, vocab=32000, kv_dim=4096)
NEMO_MS = {"A100-80": 234.0, "H100-80": 153.8}   # batch 1, 128 in, 20 out, TP 1 (source in the docstring)


@dataclass(frozen=True, kw_only=True)
class Pair:
    """One comparison: a change to the base config and the ratio it makes, measured and predicted."""

    name: str
    changes: dict[str, object]


PAIRS = (
    Pair(name="checkpointing on / off", changes={"memory.actor_gradient_checkpointing": True,
                                                 "memory.critic_gradient_checkpointing": True}),
    Pair(name="ppo_epochs 8 / 4", changes={"workload.ppo_epochs": 8}),
    Pair(name="gen_len 64 / 16", changes={"workload.gen_len": 64}),
)


def calibrate_cpu(hidden: int) -> Device:
    """A 'cpu' device class from a matmul at the model's width and a 256 MiB copy, in this process."""
    import torch

    a, b = torch.randn(256, hidden), torch.randn(hidden, 4 * hidden)
    for _ in range(3):
        a @ b
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    flops = 2 * 256 * hidden * 4 * hidden * reps / (time.perf_counter() - start)
    src = torch.empty(64 << 20)   # 256 MiB of fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    bandwidth = 2 * src.numel() * 4 * 5 / (time.perf_counter() - start)   # read + write
    return Device(name="cpu", bf16_tflops=flops / 1e12 / step_time.COMPUTE_EFFICIENCY,
                  fp32_tflops=flops / 1e12 / step_time.COMPUTE_EFFICIENCY,
                  hbm_gb_s=bandwidth / 1e9 / step_time.BANDWIDTH_EFFICIENCY, pcie_gb_s=bandwidth / 1e9,
                  memory_gib=0.0, interconnect_gb_s=bandwidth / 1e9)


def measured_step_s(cfg: TrialConfig) -> float:
    """The median seconds per iteration after the first, of a real CPU run (memory not traced)."""
    from autotune.rlhf.trial import run_trial

    result = run_trial(cfg, measure_memory=False)
    if not result.ok or result.step_time_s is None:
        raise RuntimeError(f"the run failed: {result.status} {result.message}")
    return result.step_time_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-small")
    parser.add_argument("--steps", type=int, default=3, help="iterations per run (the first is not timed)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    base = TrialConfig().replace(**{"model.actor": args.model, "device": "cpu", "workload.steps": args.steps,
                                    "workload.batch_size": args.batch, "workload.micro_batch": args.batch})
    shape = step_time.model_shape(args.model)
    cpu = calibrate_cpu(shape.hidden)
    print(f"cpu calibrated: {cpu.fp32_tflops * step_time.COMPUTE_EFFICIENCY * 1e3:.1f} GFLOP/s (matmul), "
          f"{cpu.hbm_gb_s * step_time.BANDWIDTH_EFFICIENCY:.1f} GB/s (copy); {args.model}: {shape.params / 1e6:.1f}M "
          f"parameters; {args.threads} thread(s)")
    base_s, base_pred = measured_step_s(base), step_time.predict(base, cpu)
    print(f"base: measured {base_s:.3g} s, predicted {base_pred.describe()}  (measured / predicted "
          f"{base_s / base_pred.total_s:.2f})")
    print(f"{'pair':26s} {'measured':>9s} {'predicted':>9s} {'error':>7s}")
    errors = []
    for pair in PAIRS:
        cfg = base.replace(**pair.changes)
        measured = measured_step_s(cfg) / base_s
        predicted = step_time.predict(cfg, cpu).total_s / base_pred.total_s
        errors.append(predicted / measured - 1)
        print(f"{pair.name:26s} {measured:9.3f} {predicted:9.3f} {predicted / measured - 1:+7.1%}")
    print(f"mean |error| of the ratios: {statistics.mean(abs(e) for e in errors):.1%}")

    print("public reference: Llama-2-7B, bf16, batch 1, 128 in + 20 out tokens (NeMo performance page)")
    for name, published in NEMO_MS.items():
        prefill, decode = step_time.generation_seconds(LLAMA2_7B, step_time.device(name), dtype="bfloat16",
                                                       sequences=1, prompt_len=128, gen_len=20)
        ms = 1e3 * (prefill + decode)
        print(f"  {name}: predicted {ms:.0f} ms, published {published:.1f} ms ({ms / published - 1:+.0%})")


if __name__ == "__main__":
    main()
