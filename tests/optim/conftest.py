from __future__ import annotations

import pytest
import torch


def build_tiny_llama(*, layers: int = 2, intermediate: int = 64, seed: int = 0) -> torch.nn.Module:
    """A random LlamaForCausalLM: hidden 64, vocab 256; intermediate 64 makes every block the same size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=256,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_llama():
    return build_tiny_llama


@pytest.fixture
def token_batches():
    """A fixed list of random byte-token batches, the same for every run that asks for it."""

    def make(count: int, *, batch: int = 2, seq_len: int = 16, seed: int = 1) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (batch, seq_len), generator=generator) for _ in range(count)]

    return make

