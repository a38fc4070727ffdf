from __future__ import annotations

import pytest
import torch
from torch import nn

from autotune.config import OptimizerConfig, PartitionSpec
from autotune.optim import FRUGAL, build_optimizer, choose_layers, find_blocks, partition

LAYERS = 4


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=128))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, vocab_size=128, n_positions=64))


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                                    vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32))


# (builder, Linear-like weights per block): Llama-style q,k,v,o,gate,up,down; GPT-2 c_attn,c_proj,c_fc,c_proj;
# OPT q,k,v,out,fc1,fc2
FAMILIES = {"llama": (_llama, 7), "mistral": (_mistral, 7), "qwen2": (_qwen2, 7), "gpt2": (_gpt2, 4), "opt": (_opt, 6)}


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _by_key(groups, key, value):
    return [p for g in groups if g.get(key) == value for p in g["params"]]


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    build, per_block = FAMILIES[request.param]
    torch.manual_seed(0)
    return build(), per_block


def test_find_blocks_finds_the_decoder_layers(family):
    model, _ = family
    blocks = find_blocks(model)
    assert len(blocks) == LAYERS
    assert model.config.num_hidden_layers == len(blocks)


def test_static_layers_make_exactly_those_linear_weights_statefull(family):
    model, per_block = family
    groups = partition(model, PartitionSpec(layers=(1, 3)))
    blocks = find_blocks(model)
    free = _by_key(groups, "statefull", False)
    linear_of = {i: [m.weight for m in blocks[i].modules() if m.__class__.__name__ in ("Linear", "Conv1D")]
                 for i in range(LAYERS)}
    assert all(len(weights) == per_block for weights in linear_of.values())
    assert _ids(free) == _ids(linear_of[0] + linear_of[2])
    full = _by_key(groups, "statefull", True)
    assert _ids(linear_of[1] + linear_of[3]) <= _ids(full)
    # every parameter lands in exactly one group
    assert sorted(_ids(full) | _ids(free)) == sorted(_ids(model.parameters()))
    assert len(full) + len(free) == len(list(model.parameters()))


def test_rotate_puts_every_block_weight_in_one_group(family):
    model, per_block = family
    groups = partition(model, PartitionSpec(placement="rotate", density=0.5))
    rotating = _by_key(groups, "rotate", True)
    assert len(rotating) == LAYERS * per_block
    assert all(p.dim() == 2 for p in rotating)
    optimizer = FRUGAL(groups, lr=1e-3, density=0.5)
    assert len(optimizer.active_blocks()) == LAYERS * per_block // 2


@pytest.mark.parametrize(
    ("placement", "density", "expected"),
    [("top", 0.25, [6, 7]), ("bottom", 0.25, [0, 1]), ("spread", 0.25, [2, 6]), ("spread", 0.125, [4]),
     ("top", 0.0, []), ("bottom", 1.0, list(range(8)))],
)
def test_choose_layers_by_placement(placement, density, expected):
    assert choose_layers(8, PartitionSpec(placement=placement, density=density)) == expected


def test_explicit_layers_win_over_placement_and_are_checked():
    assert choose_layers(8, PartitionSpec(layers=(5, 1, 5), placement="top")) == [1, 5]
    with pytest.raises(ValueError, match="layers"):
        choose_layers(4, PartitionSpec(layers=(0, 4)))


def test_flags_for_embeddings_head_and_norms():
    model = _llama()
    groups = partition(model, PartitionSpec(placement="top", density=0.25, embeddings_statefull=False,
                                            lm_head_statefull=True, norms_statefull=False))
    free = _ids(_by_key(groups, "statefull", False))
    assert id(model.get_input_embeddings().weight) in free
    assert id(model.get_output_embeddings().weight) not in free
    assert id(model.model.norm.weight) in free and id(model.model.layers[3].input_layernorm.weight) in free


def test_tied_head_keeps_state_when_either_role_asks():
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    spec = PartitionSpec(placement="top", embeddings_statefull=False, lm_head_statefull=True)
    free = _ids(_by_key(partition(model, spec), "statefull", False))
    assert id(model.lm_head.weight) not in free
    assert id(model.transformer.wpe.weight) in free  # positional embeddings are embeddings too


def test_a_model_without_block_list_is_named_in_the_error():
    with pytest.raises(ValueError, match="Sequential"):
        find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="Sequential"):
        partition(nn.Sequential(nn.Linear(4, 4)), PartitionSpec())


def test_invalid_spec_is_rejected_with_its_field():
    with pytest.raises(ValueError, match="density"):
        partition(_llama(), PartitionSpec(density=2.0))
    with pytest.raises(ValueError, match="mode"):
        partition(_llama(), PartitionSpec(mode="column", placement="top"))


def test_build_optimizer_follows_the_config():
    model = _llama()
    spec = PartitionSpec(density=0.5, update_gap=7, order="mirror", state_free_rule="sgd", state_free_lr_scale=0.1)
    cfg = OptimizerConfig(beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.01, partition=spec)
    adamw = build_optimizer(model, cfg, lr=3e-4, frugal=False)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["foreach"] is True
    assert adamw.defaults["betas"] == (0.8, 0.95) and adamw.defaults["weight_decay"] == 0.01
    frugal = build_optimizer(model, cfg, lr=3e-4, frugal=True)
    assert isinstance(frugal, FRUGAL)
    assert (frugal.density, frugal.update_gap, frugal.order) == (0.5, 7, "mirror")
    group = frugal.param_groups[0]
    assert group["rotate"] and group["state_free_rule"] == "sgd" and group["state_free_lr_scale"] == 0.1
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["lr"] == 3e-4
