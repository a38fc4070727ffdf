"""A tiny Llama training step shared by the memory tests (built from a config: nothing downloaded)."""
from __future__ import annotations

from collections.abc import Callable

import torch


def tiny_llama_step(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    """A 2-layer Llama, its AdamW and one forward/backward/step closure, on the current tensor mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))

    def step() -> None:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, opt, step
