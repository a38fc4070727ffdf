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

import logging
from typing import Any

from autotune.errors import ConfigError
from autotune.rlhf.tasks.base import Task, encode_prompt, read_prompts, tokenizer_pad_id
from autotune.rlhf.tasks.token import TOKEN_TASK_TYPES, AscendingTask, CopyFirstTask, TargetTokenTask

__all__ = [
    "TASKS", "TEXT_TASKS", "TOKEN_TASKS", "AscendingTask", "CopyFirstTask", "TargetTokenTask", "Task", "get_task",
    "read_prompts",
]

logger = logging.getLogger(__name__)

# Tasks scored on token ids: any vocabulary, no tokenizer.
TOKEN_TASKS: dict[str, str] = {name: " ".join((cls.__doc__ or "").split()) for name, cls in TOKEN_TASK_TYPES.items()}
# Tasks on decoded text: they need the policy's tokenizer (autotune.rlhf.tasks.similarity).
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
        from autotune.rlhf.tasks.similarity import make_similarity_task

        return make_similarity_task(vocab_size=vocab_size, tokenizer=tokenizer, prompts_file=prompts_file)
    if prompts_file is None:
        return TOKEN_TASK_TYPES[name](vocab_size=vocab_size)
    texts = read_prompts(prompts_file)
    pool = tuple(encode_prompt(text, vocab_size, tokenizer) for text in texts)
    logger.info("%s: %d prompts from %s", name, len(pool), prompts_file)
    pad_id = tokenizer_pad_id(tokenizer) % vocab_size
    return TOKEN_TASK_TYPES[name](vocab_size=vocab_size, prompt_pool=pool, pad_id=pad_id)
