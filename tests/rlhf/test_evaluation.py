"""The evaluation reward: fixed prompts, exact expected credit, a standard error over prompts."""
from __future__ import annotations

import pytest
import torch

from autotune.config import WorkloadConfig
from autotune.rlhf.evaluation import EVAL_PROMPTS, Evaluation, evaluate
from autotune.rlhf.models import build_policy
from autotune.rlhf.tasks import get_task

WORKLOAD = WorkloadConfig(prompt_len=4, gen_len=6)


def test_standard_error_is_over_prompts():
    result = Evaluation.of(torch.tensor([0.1, 0.2, 0.3, 0.4]), exact=True)
    assert result.mean == pytest.approx(0.25)
    assert result.se == pytest.approx(torch.tensor([0.1, 0.2, 0.3, 0.4]).std().item() / 2)
    assert result.n == 4


def test_the_same_policy_gets_the_same_score_and_another_seed_of_the_workload_changes_nothing():
    policy = build_policy("llama-tiny", seed=0)
    task = get_task("target-token", vocab_size=512)
    first = evaluate(policy, task, WORKLOAD, torch.device("cpu"))
    torch.manual_seed(123)   # the global RNG is not what the evaluation draws from
    again = evaluate(policy, task, WorkloadConfig(prompt_len=4, gen_len=6, seed=7), torch.device("cpu"))
    assert first == again
    assert first.exact and first.n == EVAL_PROMPTS
    assert 0.08 < first.mean < 0.17     # a random-init policy spreads its mass: about 1/8 on the targets
    assert 0 < first.se < 0.01


def test_a_policy_that_favours_targets_scores_higher():
    policy = build_policy("llama-tiny", seed=0)
    task = get_task("target-token", vocab_size=512)
    before = evaluate(policy, task, WORKLOAD, torch.device("cpu"))
    with torch.no_grad():
        policy.lm_head.bias = None
        policy.lm_head.weight[-64:] *= 0.0
        policy.lm_head.weight[-64:] += policy.lm_head.weight[:64].abs().mean()   # a positive push on targets
    after = evaluate(policy, task, WORKLOAD, torch.device("cpu"))
    assert after.mean != before.mean
