"""PPO and GRPO math: per-token log-probs, KL-shaped rewards, advantages and the clipped losses.

Pure tensor functions with no model or optimizer in sight, so each one is checked by hand in tests.
Shapes: B sequences, T response tokens. Every response has exactly T tokens (fixed-length
generation), so no mask is needed.
"""
from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`: (B, T, V), (B, T) -> (B, T), computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def kl_shaped_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * (log p - log p_ref) everywhere, plus the score on the last token.

    This is the KL penalty of InstructGPT / DeepSpeed-Chat: the reference anchors the policy token
    by token, the task speaks once per sequence.
    """
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[:, -1] += score.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, *, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over T steps, with a zero value after the last token.

    Returns:
        (advantages, returns), each (B, T); returns = advantages + values (the critic's target).
    """
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the whole batch (PPO's advantage normalisation)."""
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def group_advantages(score: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's score relative to the other samples of its prompt.

    Args:
        score: (B * G,) scores, the G samples of one prompt adjacent.
        group_size: G.

    Returns:
        (B * G,) advantages (score - group mean) / (group std + eps).
    """
    groups = score.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip_ratio: float) -> torch.Tensor:
    """PPO's clipped surrogate objective, negated for minimisation, averaged over tokens."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    return -torch.minimum(unclipped, clipped).mean()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       value_clip: float) -> torch.Tensor:
    """PPO's clipped value loss: the worse of the clipped and unclipped squared errors, halved."""
    clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(p || p_ref) per token, always >= 0 (GRPO's KL term)."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0
