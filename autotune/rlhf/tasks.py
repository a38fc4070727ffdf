"""Programmatic prompt tasks and their rewards, made to be learnable within a short CPU trial.

A trial's reward objective is only worth optimising if the reward moves within a short trial. So every
task's reward is dense: a uniformly random policy already scores about 1/8 (never ~0, which would
leave the policy gradient without signal), and every response token can earn credit. Scores are per
sequence, in [0, 1]. The tasks differ in how much context the policy must use, hence in speed: with
plain REINFORCE on random-init llama-tiny (batch 8, 16 tokens), target-token climbs from ~0.13 to
~0.9 in 50 steps, ascending from ~0.11 to ~0.6 in 200, and copy-first (which must read the prompt)
does not move within 200.

Prompts are random token ids by default, or come from a local JSONL file of {"prompt": "text"} lines
(encoded with the model's tokenizer when it has one, else as UTF-8 bytes mapped into the vocab).
Scoring with a reward model is the workload's job; a task only supplies the programmatic score.
"""
from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from autotune import schema
from autotune.errors import ConfigError

logger = logging.getLogger(__name__)

# A random policy hits one id in _DENSITY, which sets every task's initial reward near 1/_DENSITY.
_DENSITY = 8


@dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
    """A source of prompts plus a reward on (prompt, response) token ids.

    Attributes:
        name: The task's key in TASKS.
        vocab_size: Token ids are in [0, vocab_size).
        prompt_pool: Encoded prompts from a JSONL file, or None for random prompts.
        pad_id: Left-pads file prompts shorter than the requested length.
    """

    name: ClassVar[str]
    vocab_size: int
    prompt_pool: tuple[tuple[int, ...], ...] | None = None
    pad_id: int = 0

    def prompts(self, batch_size: int, prompt_len: int, generator: torch.Generator) -> torch.LongTensor:
        """Draws a (batch_size, prompt_len) batch of prompt ids; the same generator state gives the same batch.

        File prompts are drawn with replacement, cut to their last `prompt_len` tokens (the end is
        what the response continues) or left-padded with `pad_id`.
        """
        if self.prompt_pool is None:
            return torch.randint(0, self.vocab_size, (batch_size, prompt_len), generator=generator)
        picks = torch.randint(0, len(self.prompt_pool), (batch_size,), generator=generator).tolist()
        batch = torch.full((batch_size, prompt_len), self.pad_id, dtype=torch.long)
        for row, pick in enumerate(picks):
            ids = self.prompt_pool[pick][-prompt_len:]
            batch[row, prompt_len - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return batch

    def score(self, prompts: torch.LongTensor, responses: torch.LongTensor) -> torch.FloatTensor:
        """Rewards each (prompt, response) pair: a (B,) float tensor in [0, 1]."""
        if prompts.dim() != 2 or responses.dim() != 2 or prompts.shape[0] != responses.shape[0]:
            raise ValueError(
                f"{self.name}: want prompts (B, P) and responses (B, T), "
                f"got {tuple(prompts.shape)} and {tuple(responses.shape)}"
            )
        return self._score(prompts, responses).float().clamp(0.0, 1.0)

    @abc.abstractmethod
    def _score(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """The task's reward on validated (B, P) prompts and (B, T) responses."""

    def credit(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor | None:
        """What each vocabulary id would earn at each response position, given the tokens before it.

        A task whose score is a sum over response tokens returns a tensor that broadcasts to
        (B, T, vocab), such that `score(prompts, responses)[b] == sum_t credit[b, t, responses[b, t]]`
        (before clamping). Weighting it with the policy's next-token probabilities then gives the
        expected score exactly, with no sampling noise. None: the score is not a sum over tokens.
        """
        return None

    def expected_score(self, prompts: torch.Tensor, responses: torch.Tensor,
                       probs: torch.Tensor) -> torch.Tensor | None:
        """The policy's expected score per prompt, exact given each position's prefix: (B,) or None.

        Args:
            prompts: (B, P) prompt ids.
            responses: (B, T) a fixed continuation; position t's prefix is the prompt and responses[:, :t].
            probs: (B, T, vocab) the policy's next-token probabilities at each response position.
        """
        credit = self.credit(prompts, responses)
        if credit is None:
            return None
        return (probs.float() * credit).sum(dim=(1, 2))

    @property
    def _window(self) -> int:
        return max(1, self.vocab_size // _DENSITY)


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


_TASK_TYPES: dict[str, type[Task]] = {cls.name: cls for cls in (TargetTokenTask, AscendingTask, CopyFirstTask)}
# Tasks scored on token ids: any vocabulary, no tokenizer.
TOKEN_TASKS: dict[str, str] = {name: " ".join(cls.__doc__.split()) for name, cls in _TASK_TYPES.items()}
# Tasks on decoded text: they need the policy's tokenizer (autotune.rlhf.similarity).
TEXT_TASKS: dict[str, str] = {
    "similarity": "Cosine similarity of the decoded response to the closest target text (frozen all-MiniLM-L6-v2)",
}
# Every task a workload can name: the one list that config checks, search and the docs read.
TASKS: dict[str, str] = {**TOKEN_TASKS, **TEXT_TASKS}


def get_task(name: str, *, vocab_size: int, prompts_file: str | None = None, tokenizer: Any = None) -> Task:
    """Builds a task by name.

    Args:
        name: A key of TASKS (a text task needs `tokenizer`).
        vocab_size: The policy's vocabulary size (its config's, which may exceed the tokenizer's).
        prompts_file: A JSONL file of {"prompt": "text"} lines to draw prompts from instead of random ids.
        tokenizer: Encodes the file's prompts; without one, UTF-8 bytes are taken modulo vocab_size.

    Raises:
        ConfigError: An unknown task name, a bad vocab size, or an unreadable or malformed prompts file.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    if vocab_size < 2:
        raise ConfigError(f"vocab_size must be at least 2, got {vocab_size}")
    if name in TEXT_TASKS:
        from autotune.rlhf.similarity import make_similarity_task

        return make_similarity_task(vocab_size=vocab_size, tokenizer=tokenizer, prompts_file=prompts_file)
    if prompts_file is None:
        return _TASK_TYPES[name](vocab_size=vocab_size)
    texts = read_prompts(prompts_file)
    pool = tuple(_encode(text, vocab_size, tokenizer) for text in texts)
    logger.info("%s: %d prompts from %s", name, len(pool), prompts_file)
    return _TASK_TYPES[name](vocab_size=vocab_size, prompt_pool=pool, pad_id=_pad_id(tokenizer) % vocab_size)


def read_prompts(path: str) -> list[str]:
    """Reads the "prompt" strings of a JSONL file, reporting every bad line at once.

    Raises:
        ConfigError: The file is missing, empty, or has lines that are not {"prompt": non-empty string}.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts file {path!r} does not exist")
    prompts, problems = [], []
    for number, line in enumerate(schema.read_text(file, what="prompts file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not JSON ({err.msg})")
            continue
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt:
            problems.append(f'line {number}: want {{"prompt": "non-empty text"}}')
            continue
        prompts.append(prompt)
    if problems:
        raise ConfigError(problems, source=path)
    if not prompts:
        raise ConfigError("holds no prompts", source=path)
    return prompts


def _encode(text: str, vocab_size: int, tokenizer: Any) -> tuple[int, ...]:
    if tokenizer is None:
        return tuple(byte % vocab_size for byte in text.encode("utf-8"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # A tokenizer can know more ids than the model has rows (or none for this text): fold and fill.
    return tuple(i % vocab_size for i in ids) or (_pad_id(tokenizer) % vocab_size,)


def _pad_id(tokenizer: Any) -> int:
    if tokenizer is None:
        return 0
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
