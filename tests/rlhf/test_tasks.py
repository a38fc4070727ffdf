"""Reward tasks: scores worked out by hand, prompt sources, and learnability by a tiny policy."""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import DynamicCache, PreTrainedTokenizerFast

from autotune.errors import ConfigError
from autotune.rlhf.models import build_policy
from autotune.rlhf.tasks import TOKEN_TASKS as TASKS, Task, get_task

# vocab 16: every task's window is 16 // 8 = 2 ids.
PROMPTS = torch.tensor([[5, 9, 9], [0, 1, 2]])


def score(name: str, responses: list[list[int]], prompts: torch.Tensor = PROMPTS) -> list[float]:
    return get_task(name, vocab_size=16).score(prompts, torch.tensor(responses)).tolist()


def test_target_token_by_hand():
    # Targets are the top eighth: ids 14 and 15.
    assert score("target-token", [[14, 15, 0, 3], [1, 2, 13, 4]]) == [0.5, 0.0]


def test_ascending_by_hand():
    # Steps 1, 2, 3: two of three pairs climb by 1..2.  Steps 0, -1, 2: one of three.
    assert score("ascending", [[1, 2, 4, 7], [5, 5, 4, 6]]) == pytest.approx([2 / 3, 1 / 3])
    assert score("ascending", [[3], [4]]) == [0.0, 0.0]


def test_copy_first_by_hand():
    # First prompt tokens 5 and 0; credit 1 - |distance| / 2, floored at 0.
    assert score("copy-first", [[5, 6, 7, 3], [0, 0, 1, 15]]) == pytest.approx([(1 + 0.5) / 4, (1 + 1 + 0.5) / 4])


@pytest.mark.parametrize("name", list(TASKS))
def test_random_policy_scores_are_dense_and_bounded(name):
    task = get_task(name, vocab_size=512)
    g = torch.Generator().manual_seed(0)
    prompts = task.prompts(4096, 8, g)
    scores = task.score(prompts, torch.randint(0, 512, (4096, 16), generator=g))
    assert scores.shape == (4096,) and scores.dtype == torch.float32
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert 0.05 < scores.mean() < 0.3


def test_target_token_random_score_matches_its_probability():
    task = get_task("target-token", vocab_size=512)
    g = torch.Generator().manual_seed(1)
    scores = task.score(task.prompts(4096, 4, g), torch.randint(0, 512, (4096, 16), generator=g))
    assert scores.mean().item() == pytest.approx(64 / 512, abs=0.005)


@pytest.mark.parametrize("name", list(TASKS))
def test_prompts_are_deterministic_for_the_generator(name):
    task = get_task(name, vocab_size=100)
    first = task.prompts(8, 6, torch.Generator().manual_seed(42))
    assert first.shape == (8, 6) and first.dtype == torch.long
    assert 0 <= first.min() and first.max() < 100
    assert torch.equal(first, task.prompts(8, 6, torch.Generator().manual_seed(42)))
    assert not torch.equal(first, task.prompts(8, 6, torch.Generator().manual_seed(43)))


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ConfigError) as info:
        get_task("sentiment", vocab_size=512)
    for name in TASKS:
        assert name in str(info.value)


def test_score_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="B, T"):
        get_task("target-token", vocab_size=16).score(PROMPTS, torch.zeros(3, 4, dtype=torch.long))


def write_jsonl(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_file_prompts_as_bytes_without_a_tokenizer(tmp_path):
    # 'a' = 97 -> 97 % 64 = 33, 'b' -> 34; 'é' is two UTF-8 bytes 0xC3 0xA9 -> 3, 41.
    file = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "ab"}), "", json.dumps({"prompt": "xé"})])
    task = get_task("copy-first", vocab_size=64, prompts_file=file)
    batch = task.prompts(32, 4, torch.Generator().manual_seed(0))
    rows = {tuple(row) for row in batch.tolist()}
    assert rows == {(0, 0, 33, 34), (0, 120 % 64, 3, 41)}
    # Long prompts keep their end, which is what the response continues.
    assert set(task.prompts(16, 2, torch.Generator().manual_seed(0))[:, -1].tolist()) == {34, 41}


def test_file_prompts_use_the_tokenizer(tmp_path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    file = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "hello world hello"})])
    task = get_task("target-token", vocab_size=8, prompts_file=file, tokenizer=tokenizer)
    assert task.prompts(2, 5, torch.Generator()).tolist() == [[0, 0, 2, 3, 2]] * 2


def test_bad_prompt_file_reports_every_bad_line(tmp_path):
    file = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), "{not json", json.dumps({"text": "x"})])
    with pytest.raises(ConfigError) as info:
        get_task("target-token", vocab_size=64, prompts_file=file)
    assert "line 2" in str(info.value) and "line 3" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        get_task("target-token", vocab_size=64, prompts_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="no prompts"):
        get_task("target-token", vocab_size=64, prompts_file=write_jsonl(tmp_path / "empty.jsonl", [""]))


def sample(model, prompts: torch.Tensor, gen_len: int) -> torch.Tensor:
    """A fixed-length decode loop with a DynamicCache, as the workload runs it."""
    cache, inputs, tokens = DynamicCache(config=model.config), prompts, []
    with torch.no_grad():
        for _ in range(gen_len):
            logits = model(inputs, past_key_values=cache, use_cache=True).logits[:, -1]
            inputs = torch.multinomial(torch.softmax(logits, dim=-1), 1)
            tokens.append(inputs)
    return torch.cat(tokens, dim=1)


def reinforce_rewards(task: Task, steps: int, lr: float) -> list[float]:
    """Mean reward per step of plain REINFORCE (batch-mean baseline) on a random-init tiny Llama."""
    torch.manual_seed(0)
    model = build_policy("llama-tiny", seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator, rewards = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        prompts = task.prompts(8, 8, generator)
        responses = sample(model, prompts, 16)
        reward = task.score(prompts, responses)
        logits = model(torch.cat([prompts, responses], dim=1)).logits[:, prompts.shape[1] - 1:-1]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1).sum(dim=1)
        loss = -((reward - reward.mean()) * logp).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(reward.mean().item())
    return rewards


def test_default_task_reward_rises_within_50_steps():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add contention on a shared 2-core box
    try:
        rewards = reinforce_rewards(get_task("target-token", vocab_size=512), steps=50, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    start, end = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert 0.05 < start < 0.3
    assert end > start + 0.2


@pytest.mark.parametrize("name", list(TASKS))
def test_credit_at_the_sampled_tokens_is_the_score(name):
    # the score is a sum over response tokens of the credit each token earned, given its prefix
    task = get_task(name, vocab_size=64)
    g = torch.Generator().manual_seed(3)
    prompts, responses = task.prompts(32, 5, g), torch.randint(0, 64, (32, 12), generator=g)
    credit = task.credit(prompts, responses).expand(32, 12, 64)
    earned = credit.gather(-1, responses.unsqueeze(-1)).squeeze(-1).sum(dim=1)
    assert torch.allclose(earned, task.score(prompts, responses), atol=1e-6)


@pytest.mark.parametrize("name", list(TASKS))
def test_expected_score_under_one_hot_probabilities_is_the_score(name):
    task = get_task(name, vocab_size=64)
    g = torch.Generator().manual_seed(4)
    prompts, responses = task.prompts(16, 5, g), torch.randint(0, 64, (16, 10), generator=g)
    one_hot = torch.nn.functional.one_hot(responses, 64).float()
    assert torch.allclose(task.expected_score(prompts, responses, one_hot), task.score(prompts, responses), atol=1e-6)


def test_expected_target_mass_by_hand():
    # vocab 16, targets 14 and 15; a policy that puts 0.3 on 15 and 0.1 on 14 everywhere earns 0.4
    task = get_task("target-token", vocab_size=16)
    probs = torch.full((2, 4, 16), 0.6 / 14)
    probs[..., 14], probs[..., 15] = 0.1, 0.3
    expected = task.expected_score(PROMPTS[:, :2], torch.zeros(2, 4, dtype=torch.long), probs)
    assert expected.tolist() == pytest.approx([0.4, 0.4])
