"""The base `Task` and the prompts-file reader that every task shares."""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from autotune import schema
from autotune.errors import ConfigError

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


def encode_prompt(text: str, vocab_size: int, tokenizer: Any) -> tuple[int, ...]:
    """A prompt's token ids: the tokenizer's, or UTF-8 bytes without one, folded into the vocab."""
    if tokenizer is None:
        return tuple(byte % vocab_size for byte in text.encode("utf-8"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # A tokenizer can know more ids than the model has rows (or none for this text): fold and fill.
    return tuple(i % vocab_size for i in ids) or (tokenizer_pad_id(tokenizer) % vocab_size,)


def tokenizer_pad_id(tokenizer: Any) -> int:
    """The id that left-pads file prompts: the tokenizer's pad, else its end-of-sequence, else 0."""
    if tokenizer is None:
        return 0
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
