"""The exported DeepSpeed JSON drives a real ZeRO engine with FRUGAL as the client optimizer (CPU, gloo)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # the first run JIT-compiles DeepSpeed's shm_comm op (about 30 s)

SCRIPT = textwrap.dedent("""
    import json, torch, transformers, deepspeed
    from autotune.config import TrialConfig
    from autotune.export import export_config
    from autotune.optim import build_optimizer

    cfg = TrialConfig().replace(**{"memory.zero_stage": 2, "memory.offload_optimizer": True,
                                   "optimizer.name": "frugal", "optimizer.partition.placement": "top"})
    ds = json.loads(export_config(cfg, "deepspeed").files["ds_config.json"])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=64))
    before = [p.detach().clone() for p in model.parameters()]
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, cfg.optimizer, lr=1e-2, frugal=True), config=ds)
    ids = torch.randint(0, 64, (8, 8))
    engine.backward(engine(ids, labels=ids).loss)
    engine.step()
    moved = sum(not torch.equal(a, b.detach()) for a, b in zip(before, engine.module.parameters()))
    print("stage", optimizer.__class__.__name__, engine.zero_optimization_stage(), "moved", moved)
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exported_zero2_offload_config_trains_with_frugal(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # A subprocess: deepspeed.initialize sets up torch.distributed for the whole process.
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[1:3] == ["DeepSpeedZeroOptimizer", "2"]
    assert int(last[-1]) > 0     # the step changed the weights
