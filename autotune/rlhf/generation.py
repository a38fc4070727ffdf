"""Fixed-length sampling with a KV cache: the generation phase of an RLHF iteration.

`model.generate` cannot run under FakeTensorMode (its early-stopping check reads tensor values), and
a trial wants the same number of tokens every time so that memory is reproducible. So this loop
always decodes exactly `gen_len` tokens: forward with a cache, temperature, softmax, multinomial.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache


def _cache_kwarg(model: torch.nn.Module) -> str:
    """The name the model's forward takes its KV cache under: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name warns until 5.40), and earlier releases know only the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def make_cache(model: torch.nn.Module, *, max_len: int, static: bool) -> Cache:
    """A growing `DynamicCache`, or a `StaticCache` preallocated for `max_len` positions.

    The dynamic cache concatenates each layer's keys and values at every token: many short-lived,
    ever larger blocks, the pattern that fragments a caching allocator. The static cache allocates
    once (on its first update) and writes in place.
    """
    if static:
        return StaticCache(config=model.config, max_cache_len=max_len)
    return DynamicCache(config=model.config)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    *,
    gen_len: int,
    temperature: float,
    generator: torch.Generator | None,
    static_cache: bool = False,
) -> torch.Tensor:
    """Sample exactly `gen_len` tokens after each prompt.

    Args:
        model: a causal LM taking `input_ids`, a KV cache (`cache` or `past_key_values`), `cache_position`
            and `logits_to_keep`.
        prompts: (B, P) token ids, unpadded (every prompt has the same length).
        gen_len: tokens to sample; there is no early stop.
        temperature: softmax temperature (> 0).
        generator: the random source of `torch.multinomial`, for reproducible samples.
        static_cache: preallocate the KV cache instead of growing it.

    Returns:
        (B, gen_len) sampled token ids.
    """
    prompt_len = prompts.shape[1]
    cache = make_cache(model, max_len=prompt_len + gen_len, static=static_cache)
    positions = torch.arange(prompt_len, device=prompts.device)
    step_input = prompts
    cache_kwarg = _cache_kwarg(model)
    tokens = []
    for _ in range(gen_len):
        # logits_to_keep=1: only the last position's logits, as HF generate does; the full
        # (B, P, vocab) prompt logits would be a memory spike no real sampler has.
        out = model(input_ids=step_input, cache_position=positions, use_cache=True, logits_to_keep=1,
                    **{cache_kwarg: cache})
        probs = torch.softmax(out.logits[:, -1, :].float() / temperature, dim=-1)
        step_input = torch.multinomial(probs, 1, generator=generator)
        tokens.append(step_input)
        positions = positions[-1:] + 1
        del out, probs
    return torch.cat(tokens, dim=1)
