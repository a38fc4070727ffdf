"""The RLHF trial workload: PPO with four models, or GRPO without a critic, phase by phase.

Reads like a torchtune recipe: `__init__` rejects bad combinations before anything is built,
`setup()` builds the task, models and optimizers in dependency order, and `run()` loops
`generate() -> make_experience() -> train_actor() -> train_critic()`, each phase inside a memory
probe phase, with the memory interventions applied where docs/SEARCH.md places them ("Where the interventions act").
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from autotune.config import TrialConfig
from autotune.rlhf import losses
from autotune.rlhf.evaluation import Evaluation, evaluate
from autotune.rlhf.generation import sample
from autotune.rlhf.zero import Updater, make_updater

if TYPE_CHECKING:
    from autotune.memory.probe import MemoryProbe

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """What generation produced: N prompts of P tokens and their T sampled tokens."""

    prompts: torch.Tensor     # (N, P)
    responses: torch.Tensor   # (N, T)


@dataclass(frozen=True, kw_only=True)
class Experience:
    """Everything the updates need, computed without gradients. Per-token tensors are (N, T)."""

    sequences: torch.Tensor           # (N, P + T): prompts then responses
    responses: torch.Tensor
    logprobs: torch.Tensor            # the actor's, at sampling time
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    values: torch.Tensor | None = None    # PPO only: the critic's, at sampling time
    returns: torch.Tensor | None = None   # PPO only: the critic's targets

    def micro_batches(self, size: int) -> Iterator[Experience]:
        """Consecutive slices of at most `size` sequences."""
        total = self.sequences.shape[0]
        for start in range(0, total, size):
            part = slice(start, start + size)
            yield replace(self, **{name: None if value is None else value[part]
                                   for name, value in vars(self).items()})


@dataclass(frozen=True, kw_only=True)
class IterationStats:
    """One RLHF iteration, for progress lines: its index, mean task reward and wall time."""

    step: int
    reward: float | None
    time_s: float


class RLHFWorkload:
    """One trial's RLHF run under a memory probe.

    Args:
        cfg: the trial; `cfg.algorithm` picks PPO (actor, critic, reference, reward) or GRPO (no critic).
        probe: a memory probe from `autotune.memory.probes.make_probe` for `cfg.device`.
    """

    def __init__(self, cfg: TrialConfig, probe: MemoryProbe):
        self.cfg = cfg
        self.probe = probe
        self.fake = cfg.device == "fake"
        # under torchrun each rank drives the GPU of its LOCAL_RANK within the trial's group
        self.device = torch.device("cuda", local_rank()) if cfg.device == "cuda" else torch.device("cpu")
        self.has_critic = cfg.algorithm == "ppo"
        self.reward_curve: list[float] = []
        self.step_times_s: list[float] = []
        self.current_phase = "setup"   # where an OOM or error is reported to have happened

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build task, models, optimizers and placements, in dependency order."""
        self._setup_task()
        self._setup_models()
        self._setup_updaters()
        log.info("%s setup done: actor %s, critic %s", self.cfg.algorithm, self.cfg.model.actor,
                 self.cfg.model.critic_name if self.has_critic else "none")

    def _setup_task(self) -> None:
        from autotune.rlhf.models import load_tokenizer, model_config
        from autotune.rlhf.tasks import TEXT_TASKS, get_task

        w, actor = self.cfg.workload, self.cfg.model.actor
        # only file prompts and text tasks need the tokenizer
        tokenizer = load_tokenizer(actor) if w.prompts_file or w.task in TEXT_TASKS else None
        self.task = get_task(w.task, vocab_size=model_config(actor).vocab_size, prompts_file=w.prompts_file,
                             tokenizer=tokenizer)
        # data parallel: each rank draws its own prompts (rank 0 draws what a one-rank trial draws)
        self.prompt_generator = torch.Generator().manual_seed(w.seed + 1000 * int(os.environ.get("RANK", "0")))
        self.sample_generator = torch.Generator(device=self.device).manual_seed(w.seed + 1)

    def _setup_models(self) -> None:
        from autotune.rlhf.models import build_policy, build_value_model, enable_checkpointing

        names, mem, seed = self.cfg.model, self.cfg.memory, self.cfg.workload.seed
        opts = {"dtype": getattr(torch, names.dtype), "seed": seed, "weights": not self.fake}
        self.actor = self._place(build_policy(names.actor, **opts))
        self.reference = self._frozen(build_policy(names.reference_name, **opts), offloaded=mem.offload_reference)
        self.reward_model = self._frozen(build_value_model(names.reward_name, **opts), offloaded=mem.offload_reward)
        self.critic = self._place(build_value_model(names.critic_name, **opts)) if self.has_critic else None
        if mem.actor_gradient_checkpointing:
            enable_checkpointing(self.actor)
        if self.critic is not None and mem.critic_gradient_checkpointing:
            self.critic.gradient_checkpointing_enable()

    def _setup_updaters(self) -> None:
        from autotune.optim import build_optimizer

        opt, w = self.cfg.optimizer, self.cfg.workload
        actor_opt = build_optimizer(self.actor, opt, lr=w.actor_lr, frugal=opt.name == "frugal")
        self.actor_up: Updater = make_updater(self.actor, actor_opt, self.cfg, probe=self.probe,
                                              micro_batch=w.micro_batch)
        self.critic_up: Updater | None = None
        if self.critic is not None:
            critic_opt = build_optimizer(self.critic, opt, lr=w.critic_lr, frugal=opt.critic == "frugal")
            self.critic_up = make_updater(self.critic, critic_opt, self.cfg, probe=self.probe,
                                          micro_batch=w.micro_batch)

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.device.type == "cuda":
            return model.to(self.device)
        # Weights loaded from a local folder are mapped from the safetensors file without an aten op,
        # so the storage tracer never saw them being made; a simulated device holds them all the same.
        self.probe.track(model)
        return model

    def _frozen(self, model: torch.nn.Module, *, offloaded: bool) -> torch.nn.Module:
        model = model.eval().requires_grad_(False)
        if offloaded:
            # It waits in host memory and comes in for the experience phase only. The simulated
            # backends built it "on the device", so they are told it left.
            self.probe.to_host(model)
            return model
        return self._place(model)

    # -- evaluation (outside the memory probe: its forwards are no part of the measured run) ------
    def evaluate(self) -> Evaluation:
        """The trained actor's score on the fixed evaluation set (see `autotune.rlhf.evaluation`)."""
        return evaluate(self.actor_up.module, self.task, self.cfg.workload, self.device)

    def evaluate_initial(self) -> Evaluation:
        """The untrained actor's score on the same set: the reference model, when it is the actor's twin."""
        from autotune.rlhf.models import build_policy

        names = self.cfg.model
        if names.reference_name == names.actor:   # same name, same seed: the same weights as the initial actor
            return evaluate(self.reference.to(self.device), self.task, self.cfg.workload, self.device)
        initial = build_policy(names.actor, dtype=getattr(torch, names.dtype), seed=self.cfg.workload.seed)
        return evaluate(initial.to(self.device), self.task, self.cfg.workload, self.device)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, on_iteration: Callable[[IterationStats], None] | None = None) -> None:
        """Run `cfg.workload.steps` RLHF iterations; `on_iteration` hears about each one."""
        for step in range(self.cfg.workload.steps):
            start = time.perf_counter()
            reward = self.iteration()
            self.step_times_s.append(time.perf_counter() - start)
            if reward is not None:
                self.reward_curve.append(reward)
            if on_iteration is not None:
                on_iteration(IterationStats(step=step, reward=reward, time_s=self.step_times_s[-1]))

    def iteration(self) -> float | None:
        """One RLHF iteration; returns its mean task reward (None under the fake backend)."""
        with self._phase("generation"):
            rollout = self.generate()
        with self._phase("experience"):
            experience, reward = self.make_experience(rollout)
            del rollout
        with self._phase("actor_train"):
            self.train_actor(experience)
        if self.has_critic:
            with self._phase("critic_train"):
                self.train_critic(experience)
        return reward

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """A probe phase that ends with `probe.empty_cache()` where the config asks for one."""
        self.current_phase = name
        with self.probe.phase(name):
            yield
            if name in self.cfg.memory.empty_cache_after:
                self.probe.empty_cache()

    # -- phases ----------------------------------------------------------------------------------
    def generate(self) -> Rollout:
        """Sample `gen_len` tokens for each prompt (GRPO: `group_size` samples per prompt)."""
        w = self.cfg.workload
        prompts = self._prompts()
        if not self.has_critic:
            prompts = prompts.repeat_interleave(w.group_size, dim=0)
        self.actor_up.module.eval()  # HF turns the KV cache off in training mode under checkpointing
        responses = sample(self.actor_up.module, prompts, gen_len=w.gen_len, temperature=w.temperature,
                           generator=self.sample_generator, static_cache=self.cfg.memory.static_kv_cache)
        return Rollout(prompts=prompts, responses=responses)

    def _prompts(self) -> torch.Tensor:
        w = self.cfg.workload
        if self.fake:
            # Fake tensors carry no values; the prompts' content cannot change memory.
            return torch.zeros(w.batch_size, w.prompt_len, dtype=torch.long, device=self.device)
        return self.task.prompts(w.batch_size, w.prompt_len, self.prompt_generator).to(self.device)

    @torch.no_grad()
    def make_experience(self, rollout: Rollout) -> tuple[Experience, float | None]:
        """Forward passes of all models without gradients, then rewards and advantages."""
        w = self.cfg.workload
        sequences = torch.cat([rollout.prompts, rollout.responses], dim=1)
        logprobs = response_logprobs(self.actor_up.module, sequences, w.gen_len)
        with self._brought_in(self.cfg.memory.offload_reference, self.reference):
            ref_logprobs = response_logprobs(self.reference, sequences, w.gen_len)
        with self._brought_in(self.cfg.memory.offload_reward, self.reward_model):
            model_score = self.reward_model(sequences)[:, -1].float()
        task_score = None if self.fake else self._task_score(rollout)
        score = task_score if w.reward_source == "task" and task_score is not None else model_score
        experience = self._advantages(sequences, rollout.responses, logprobs, ref_logprobs, score)
        reward = None if task_score is None else float(task_score.mean())
        return experience, reward

    def _task_score(self, rollout: Rollout) -> torch.Tensor:
        score = self.task.score(rollout.prompts.cpu(), rollout.responses.cpu())
        return score.to(self.device, torch.float32)

    def _advantages(self, sequences: torch.Tensor, responses: torch.Tensor, logprobs: torch.Tensor,
                    ref_logprobs: torch.Tensor, score: torch.Tensor) -> Experience:
        w = self.cfg.workload
        common = {"sequences": sequences, "responses": responses, "logprobs": logprobs, "ref_logprobs": ref_logprobs}
        if not self.has_critic:
            advantages = losses.group_advantages(score, w.group_size)
            return Experience(advantages=advantages[:, None].expand_as(logprobs), **common)
        values = response_values(self.critic_up.module.eval(), sequences, w.gen_len)
        rewards = losses.kl_shaped_rewards(score, logprobs, ref_logprobs, w.kl_coef)
        advantages, returns = losses.gae(rewards, values, gamma=w.gamma, lam=w.lam)
        return Experience(advantages=losses.whiten(advantages), values=values, returns=returns, **common)

    def train_actor(self, experience: Experience) -> None:
        """Clipped policy updates over `ppo_epochs` x micro-batches (GRPO adds its k3 KL term)."""
        w, actor = self.cfg.workload, self.actor_up.module.train()
        for _ in range(w.ppo_epochs):
            for batch in experience.micro_batches(w.micro_batch):
                logprobs = response_logprobs(actor, batch.sequences, w.gen_len)
                loss = losses.clipped_policy_loss(logprobs, batch.logprobs, batch.advantages, w.clip_ratio)
                if not self.has_critic:
                    loss = loss + w.kl_coef * losses.k3_kl(logprobs, batch.ref_logprobs).mean()
                self.actor_up.step(loss)

    def train_critic(self, experience: Experience) -> None:
        """Clipped value updates towards the GAE returns."""
        w, critic = self.cfg.workload, self.critic_up.module.train()
        for _ in range(w.ppo_epochs):
            for batch in experience.micro_batches(w.micro_batch):
                values = response_values(critic, batch.sequences, w.gen_len)
                self.critic_up.step(losses.clipped_value_loss(values, batch.values, batch.returns, w.value_clip))

    @contextlib.contextmanager
    def _brought_in(self, offloaded: bool, model: torch.nn.Module) -> Iterator[None]:
        """An offloaded model's stay on the device: moved in for the block, out again after it."""
        if not offloaded:
            yield
            return
        self.probe.to_device(model)
        try:
            yield
        finally:
            self.probe.to_host(model)


def local_rank() -> int:
    """This process's index within its machine's ranks (torchrun's LOCAL_RANK); 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def response_logprobs(model: torch.nn.Module, sequences: torch.Tensor, gen_len: int) -> torch.Tensor:
    """Log-probs of the last `gen_len` tokens of `sequences` under a causal LM: (N, gen_len).

    Only the logits that predict response tokens are computed (`logits_to_keep`): the prompt's
    (N, P, vocab) logits would be memory that no RLHF framework spends.
    """
    # use_cache=False: a full-sequence forward needs no KV cache, and building one is dead memory
    logits = model(input_ids=sequences, use_cache=False, logits_to_keep=gen_len + 1).logits[:, :-1]
    return losses.token_logprobs(logits, sequences[:, -gen_len:])


def response_values(model: torch.nn.Module, sequences: torch.Tensor, gen_len: int) -> torch.Tensor:
    """A value model's estimate at each state that precedes a response token: (N, gen_len)."""
    return model(sequences)[:, -gen_len - 1:-1].float()

