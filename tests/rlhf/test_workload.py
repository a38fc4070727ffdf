"""The workload's parts: the PPO/GRPO math against hand-worked numbers, and the decode loop."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.rlhf import losses
from autotune.rlhf.generation import sample
from autotune.rlhf.workload import Experience


def test_token_logprobs_match_cross_entropy():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    expected = -F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1), reduction="none").view(2, 3)
    torch.testing.assert_close(losses.token_logprobs(logits, tokens), expected)


def test_kl_shaped_rewards_penalise_every_token_and_score_the_last():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    rewards = losses.kl_shaped_rewards(torch.tensor([0.7]), logp, ref, kl_coef=0.1)
    # -0.1 * (logp - ref) = [-0.05, +0.1]; the score lands on the last token
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.8]]))


@pytest.mark.parametrize(("lam", "expected"), [
    (1.0, [2.5, 1.5, 1.5]),   # Monte Carlo: reward-to-go [3, 2, 2] minus the value 0.5
    (0.0, [1.0, 0.0, 1.5]),   # one-step TD errors r_t + V_{t+1} - V_t, V after the end = 0
])
def test_gae_by_hand(lam, expected):
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.full((1, 3), 0.5)
    advantages, returns = losses.gae(rewards, values, gamma=1.0, lam=lam)
    torch.testing.assert_close(advantages, torch.tensor([expected]))
    torch.testing.assert_close(returns, advantages + values)


def test_gae_discounts():
    advantages, _ = losses.gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), gamma=0.5, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 1.0]]))


def test_group_advantages_are_relative_to_each_prompts_samples():
    score = torch.tensor([1.0, 0.0, 0.5, 0.5])
    adv = losses.group_advantages(score, group_size=2)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: no spread -> no signal
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("advantage", "expected_loss"), [(1.0, -1.2), (-1.0, 1.5)])
def test_clipped_policy_loss_takes_the_pessimistic_term(advantage, expected_loss):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(1.5))   # ratio 1.5, outside the 0.2 clip
    loss = losses.clipped_policy_loss(new, old, torch.full((1, 1), advantage), clip_ratio=0.2)
    assert loss.item() == pytest.approx(expected_loss)


def test_clipped_value_loss_takes_the_larger_error():
    returns = torch.zeros(1, 1)
    # moved 2.0 from 0: clipped to 0.2, whose error 0.04 is smaller, so the unclipped 4.0 counts
    loss = losses.clipped_value_loss(torch.full((1, 1), 2.0), torch.zeros(1, 1), returns, value_clip=0.2)
    assert loss.item() == pytest.approx(2.0)
    # towards the target from far away: clipping keeps it far, so the clipped error counts
    loss = losses.clipped_value_loss(torch.full((1, 1), 0.9), torch.full((1, 1), 2.0), returns, value_clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.8 ** 2)


def test_k3_kl_is_zero_at_equality_and_positive_elsewhere():
    logp = torch.tensor([[-1.0, -2.0]])
    assert losses.k3_kl(logp, logp).abs().max().item() == 0.0
    d = 0.3
    assert losses.k3_kl(logp, logp + d)[0, 0].item() == pytest.approx(math.exp(d) - d - 1)


def test_experience_micro_batches_slice_every_field():
    n = 5
    exp = Experience(sequences=torch.arange(n * 3).view(n, 3), responses=torch.zeros(n, 2),
                     logprobs=torch.arange(n * 2.0).view(n, 2), ref_logprobs=torch.zeros(n, 2),
                     advantages=torch.zeros(n, 2))
    parts = list(exp.micro_batches(2))
    assert [p.sequences.shape[0] for p in parts] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([p.logprobs for p in parts]), exp.logprobs)
    assert all(p.values is None for p in parts)


def _tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97)
    return LlamaForCausalLM(cfg).eval()


def _sample_without_cache(model, prompts, gen_len, generator):
    seq = prompts
    for _ in range(gen_len):
        logits = model(input_ids=seq).logits[:, -1].float()
        seq = torch.cat([seq, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)], dim=1)
    return seq[:, prompts.shape[1]:]


@pytest.mark.parametrize("static_cache", [False, True])
def test_cached_decode_samples_what_a_full_forward_would(static_cache):
    model = _tiny_lm()
    prompts = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        # the cache goes under the name this transformers takes: `past_key_values` warns from 5.24
        # and is to be removed in 5.40
        warnings.simplefilter("error", FutureWarning)
        got = sample(model, prompts, gen_len=7, temperature=1.0, generator=torch.Generator().manual_seed(2),
                     static_cache=static_cache)
    with torch.no_grad():
        want = _sample_without_cache(model, prompts, 7, torch.Generator().manual_seed(2))
    assert got.shape == (3, 7)
    assert torch.equal(got, want)


def test_decode_traces_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        model = _tiny_lm()
        out = sample(model, torch.zeros(2, 4, dtype=torch.long), gen_len=3, temperature=0.7,
                     generator=torch.Generator().manual_seed(0))
    assert isinstance(out, FakeTensor) and out.shape == (2, 3)


def test_rotating_frugal_is_rejected_under_zero():
    frugal = TrialConfig().replace(**{"optimizer.name": "frugal", "optimizer.partition.placement": "top",
                                      "memory.zero_stage": 2})
    with pytest.raises(ConfigError, match="optimizer.partition.placement 'rotate' cannot work under ZeRO"):
        frugal.replace(**{"optimizer.partition.placement": "rotate"})
    # AdamW ignores the partition, so its (default, rotating) spec is no obstacle to ZeRO
    TrialConfig().replace(**{"memory.zero_stage": 2})


def test_a_model_from_a_local_folder_counts_its_weights_like_the_preset(tmp_path):
    """Weights that from_pretrained maps from safetensors make no aten op the tracer sees; setup must
    still put them on the simulated device, or every local model (smollm2 too) looks nearly free."""
    from autotune.memory.probes import make_probe
    from autotune.rlhf.models import build_policy
    from autotune.rlhf.workload import RLHFWorkload

    build_policy("llama-tiny").save_pretrained(tmp_path / "policy")
    setup_bytes = {}
    for actor in ("llama-tiny", str(tmp_path / "policy")):
        cfg = TrialConfig.from_dict({"model": {"actor": actor, "critic": "llama-tiny"}, "device": "cpu"})
        probe = make_probe("cpu")
        with probe:
            RLHFWorkload(cfg, probe).setup()
            setup_bytes[actor] = probe.report().peak_allocated_bytes
    preset, folder = setup_bytes.values()
    assert folder == preset   # critic and reward are presets in both runs: only the actor's source differs
