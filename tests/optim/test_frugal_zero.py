"""FRUGAL's static partitions under DeepSpeed ZeRO, which flattens each parameter group into one tensor.

Runs DeepSpeed on the CPU (gloo, one process) in one subprocess for all cases, so that its
accelerator choice and process group stay out of the test process and its import is paid once.
The first run JIT-compiles DeepSpeed's shm_comm op (about 3 minutes on 2 shared cores; cached in
~/.cache/torch_extensions afterwards).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.net import free_port

pytest.importorskip("deepspeed")

# (ZeRO stage, placement, density)
CASES = [(1, "top", 1.0), (2, "top", 1.0), (1, "top", 0.5), (2, "top", 0.5), (1, "rotate", 0.5)]

SCRIPT = textwrap.dedent(
    """
    import copy, json, sys
    import torch, deepspeed
    sys.path.insert(0, "tests/optim")
    from conftest import build_tiny_llama
    from autotune.config import PartitionSpec
    from autotune.optim import FRUGAL, partition

    def run(stage, placement, density):
        config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
                  "zero_allow_untested_optimizer": True}
        frugal_model = build_tiny_llama()
        adamw_model = copy.deepcopy(frugal_model)
        options = dict(lr=1e-2, weight_decay=0.1)
        groups = partition(frugal_model, PartitionSpec(placement=placement, density=density))
        frugal = FRUGAL(groups, density=density, **options)
        frugal_engine, _, _, _ = deepspeed.initialize(model=frugal_model, optimizer=frugal, config=config)
        adamw_engine, _, _, _ = deepspeed.initialize(
            model=adamw_model, optimizer=torch.optim.AdamW(adamw_model.parameters(), **options), config=config)
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
        losses = []  # FRUGAL's, on one batch again and again, so they must fall
        try:
            for _ in range(5):
                for engine in (frugal_engine, adamw_engine):
                    loss = engine(input_ids=ids, labels=ids).loss
                    engine.backward(loss)
                    engine.step()
                    if engine is frugal_engine:
                        losses.append(loss.item())
        except ValueError as exc:
            return {"error": str(exc)}
        return {
            "max_diff_to_adamw": max((a - b).abs().max().item()
                                     for a, b in zip(frugal_model.parameters(), adamw_model.parameters())),
            "tensors_per_group": [len(g["params"]) for g in frugal.param_groups],
            "state_free_has_state": [any(bool(frugal.state.get(p)) for p in g["params"])
                                     for g in frugal.param_groups if not g["statefull"]],
            "losses": losses,
        }

    torch.set_num_threads(1)
    print(json.dumps([run(*case) for case in json.loads(sys.argv[1])]))
    """
)


@pytest.fixture(scope="module")
def results() -> dict[tuple, dict]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=".")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(CASES, json.loads(done.stdout.strip().splitlines()[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_density_one_under_zero_is_adamw_under_zero(results, stage):
    # compared with AdamW under the same ZeRO stage: DeepSpeed's gradients are not plain autograd's
    result = results[(stage, "top", 1.0)]
    assert result["tensors_per_group"] == [1]
    assert result["max_diff_to_adamw"] < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_static_partition_under_zero_keeps_no_state_for_the_state_free_group(results, stage):
    result = results[(stage, "top", 0.5)]
    assert result["tensors_per_group"] == [1, 1]  # ZeRO really flattened both groups
    assert result["state_free_has_state"] == [False]
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.slow
def test_rotation_under_zero_fails_with_a_clear_message(results):
    error = results[(1, "rotate", 0.5)]["error"]
    assert "ZeRO" in error and "static partition" in error
