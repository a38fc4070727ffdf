"""The reward objective: a policy's score on a fixed evaluation set, exact where the task allows.

Every trial of every study is scored on the same prompts: they are drawn from `EVAL_SEED`, never
from the workload's own random stream, so a trial's seed or step count cannot change what it is
asked. Each prompt gets one continuation sampled from the policy with a fixed seed. Where the task
credits tokens one by one (`Task.credit`), the score of a prompt is the *expected* credit under the
policy's next-token probabilities at each position of that continuation: the policy's own
probability mass on what the task rewards, with no sampling noise in the tokens scored. Tasks
without token credit fall back to the sampled continuation's score (still fixed-seed, so the same
policy always gets the same number). The standard error is over prompts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from autotune.config import WorkloadConfig
from autotune.rlhf.generation import sample
from autotune.rlhf.tasks import Task

EVAL_PROMPTS = 64
EVAL_SEED = 20_261_130
# Probability entries (prompts x T x vocab) per forward: 256 MiB of float32. All 64 prompts go at once
# for most models (one decode loop instead of several: small models are dominated by per-op overhead).
_MAX_PROB_ENTRIES = 1 << 26


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """A policy's score on the evaluation set.

    Attributes:
        mean: The mean score over prompts, in [0, 1].
        se: Its standard error over prompts (sample standard deviation / sqrt(n)).
        exact: True when scores are expected credits from the policy's probabilities, False when
            they score the sampled continuation.
        n: The number of prompts.
    """

    mean: float
    se: float
    exact: bool
    n: int

    @classmethod
    def of(cls, scores: torch.Tensor, *, exact: bool) -> Evaluation:
        values = scores.double()
        n = values.numel()
        se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
        return cls(mean=float(values.mean()), se=se, exact=exact, n=n)


@torch.no_grad()
def evaluate(policy: torch.nn.Module, task: Task, workload: WorkloadConfig, device: torch.device) -> Evaluation:
    """Score `policy` on the fixed evaluation prompts of `task`.

    Args:
        policy: A causal LM (left in eval mode).
        task: The trial's task; its vocabulary must be the policy's.
        workload: Gives prompt_len, gen_len and the sampling temperature.
        device: Where the policy lives.
    """
    policy.eval()
    prompts = task.prompts(EVAL_PROMPTS, workload.prompt_len, torch.Generator().manual_seed(EVAL_SEED))
    generator = torch.Generator(device=device).manual_seed(EVAL_SEED + 1)
    scores, exact = [], True
    chunk_size = max(1, _MAX_PROB_ENTRIES // (workload.gen_len * task.vocab_size))
    for chunk in prompts.split(chunk_size):
        chunk = chunk.to(device)
        responses = sample(policy, chunk, gen_len=workload.gen_len, temperature=workload.temperature,
                           generator=generator)
        score = _expected(policy, task, chunk, responses, workload.temperature)
        if score is None:
            exact = False
            score = task.score(chunk.cpu(), responses.cpu())
        scores.append(score.cpu())
    return Evaluation.of(torch.cat(scores), exact=exact)


def _expected(policy: torch.nn.Module, task: Task, prompts: torch.Tensor, responses: torch.Tensor,
              temperature: float) -> torch.Tensor | None:
    if task.credit(prompts[:1].cpu(), responses[:1].cpu()) is None:
        return None
    gen_len = responses.shape[1]
    sequences = torch.cat([prompts, responses], dim=1)
    logits = policy(input_ids=sequences, use_cache=False, logits_to_keep=gen_len + 1).logits[:, :-1]
    # the distribution the policy samples from in training: same temperature
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    return task.expected_score(prompts.cpu(), responses.cpu(), probs)
