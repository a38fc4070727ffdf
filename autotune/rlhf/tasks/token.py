"""The tasks scored on token ids: any vocabulary, no tokenizer (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from autotune.rlhf.tasks.base import Task


@dataclass(frozen=True, kw_only=True)
class TargetTokenTask(Task):
    """Share of response tokens in the target set, the top eighth of the vocab (the quickest to learn)."""

    name: ClassVar[str] = "target-token"

    def _score(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        return (responses >= self.vocab_size - self._window).float().mean(dim=1)

    def credit(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        targets = (torch.arange(self.vocab_size) >= self.vocab_size - self._window).float()
        return (targets / responses.shape[1]).to(responses.device)[None, None, :]


@dataclass(frozen=True, kw_only=True)
class AscendingTask(Task):
    """Share of adjacent response pairs that step up by 1 to vocab/8 ids (a slow upward count)."""

    name: ClassVar[str] = "ascending"

    def _score(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        if responses.shape[1] < 2:
            return torch.zeros(responses.shape[0])
        steps = responses[:, 1:] - responses[:, :-1]
        return ((steps >= 1) & (steps <= self._window)).float().mean(dim=1)

    def credit(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        batch, length = responses.shape
        credit = torch.zeros(batch, length, self.vocab_size, device=responses.device)
        if length < 2:
            return credit
        # position t (t >= 1) earns when it climbs 1..window above the token before it
        steps = torch.arange(self.vocab_size, device=responses.device) - responses[:, :-1, None]
        credit[:, 1:] = ((steps >= 1) & (steps <= self._window)).float() / (length - 1)
        return credit


@dataclass(frozen=True, kw_only=True)
class CopyFirstTask(Task):
    """Copy the prompt's first token: a token earns 1 - |token - first| / (vocab/8), floored at 0 (the hardest)."""

    name: ClassVar[str] = "copy-first"

    def _score(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        distance = (responses - prompts[:, :1]).abs().float()
        return (1.0 - distance / self._window).clamp(min=0.0).mean(dim=1)

    def credit(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        distance = (torch.arange(self.vocab_size, device=prompts.device) - prompts[:, :1]).abs().float()
        return ((1.0 - distance / self._window).clamp(min=0.0) / responses.shape[1])[:, None, :]


TOKEN_TASK_TYPES: dict[str, type[Task]] = {
    cls.name: cls for cls in (TargetTokenTask, AscendingTask, CopyFirstTask)
}
