"""The targets' own code reads the exports: OpenRLHF's parser, verl's Hydra config and build_optimizer,
accelerate's launch-config validation.

Versions checked: openrlhf 0.11.2, verl 0.9.1 (both `pip install --no-deps`, see the Makefile),
accelerate and DeepSpeed as installed. Ray, vLLM and flash-attn are stubbed (tests/export/targets.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autotune.config import TrialConfig
from autotune.export import export_config
from tests.export.configs import CASES, GOLDEN_CONFIG
from tests.export.targets import openrlhf_parse, stub_modules, verl_compose

# What the user adds to the exported flags (OpenRLHF needs model paths); the GPU counts come from the export.
OPENRLHF_SITE_FLAGS = ["--actor.model_name_or_path", "actor", "--reward.model_name_or_path", "reward"]


def _openrlhf_argv(cfg: TrialConfig, gpus: int | None = None) -> list[str]:
    text = export_config(cfg, "openrlhf", gpus=gpus).files["openrlhf.args"]
    return [tok for line in text.splitlines() if line and not line.startswith("#") for tok in line.split()]


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=64))


def _one_step(model, optimizer) -> None:
    import torch

    ids = torch.randint(0, 64, (2, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()


# -- OpenRLHF 0.11.2: its own parser, its own post-parse checks, its own DeepSpeed strategy --------------
@pytest.mark.parametrize("case", CASES)
def test_openrlhf_parser_accepts_the_export_and_builds_the_trials_deepspeed_configs(case: str) -> None:
    pytest.importorskip("openrlhf")
    cfg = CASES[case]
    args, strategy = openrlhf_parse(_openrlhf_argv(cfg) + OPENRLHF_SITE_FLAGS)
    m = cfg.memory
    assert args.ds.zero_stage == m.zero_stage
    assert args.ds.adam_offload == m.offload_optimizer
    assert args.actor.gradient_checkpointing_enable == m.actor_gradient_checkpointing
    assert args.train.micro_batch_size == cfg.workload.micro_batch
    assert args.ds.param_dtype == {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "bf16")
    train = strategy.get_ds_train_config()["zero_optimization"]
    assert train["stage"] == m.zero_stage
    assert train["offload_optimizer"]["device"] == ("cpu" if m.offload_optimizer else "none")
    ref = strategy.get_ds_eval_config(offload=args.ref.offload)["zero_optimization"]
    # The reference model ends up offloaded exactly when the trial offloaded it and ZeRO-3 makes it act.
    assert (ref["offload_param"]["device"] == "cpu" and ref["stage"] == 3) == (
        m.offload_reference and m.zero_stage == 3)


@pytest.mark.parametrize("gpus", [1, 8])
@pytest.mark.parametrize("case", CASES)
def test_openrlhf_start_up_checks_pass_at_the_exported_gpu_count(case: str, gpus: int) -> None:
    """train_ppo_ray's own __main__ runs on the export for `gpus` GPUs, up to where it would start Ray."""
    pytest.importorskip("openrlhf")
    cfg = CASES[case]
    args, strategy = openrlhf_parse(_openrlhf_argv(cfg, gpus) + OPENRLHF_SITE_FLAGS)
    w = cfg.workload
    assert args.actor.num_gpus_per_node == args.ref.num_gpus_per_node == gpus
    # global flags: each GPU makes the trial's rollout and steps after one micro-batch, as the trial did
    assert args.rollout.batch_size == w.batch_size * gpus
    assert args.train.batch_size // args.train.micro_batch_size // gpus == 1
    assert strategy.get_ds_train_config()["train_batch_size"] == w.micro_batch * gpus


def test_openrlhf_gpu_count_defaults_to_the_trials_world_size(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("openrlhf")
    cfg = CASES["golden"].replace(world_size=8)
    output = export_config(cfg, "openrlhf")
    assert any("written for 8 GPU(s)" in w and "--gpus" in w for w in output.warnings)
    args, _ = openrlhf_parse(_openrlhf_argv(cfg) + OPENRLHF_SITE_FLAGS)
    assert args.actor.num_gpus_per_node == 8 and args.rollout.batch_size == 8 * cfg.workload.batch_size
    assert not any("--gpus not given" in w for w in export_config(cfg, "openrlhf", gpus=8).warnings)


def test_openrlhf_stops_at_start_up_on_per_gpu_batches_and_its_default_gpu_count() -> None:
    """Why the export scales: the trial's per-GPU batches alone fail OpenRLHF's own check at 8 GPUs."""
    pytest.importorskip("openrlhf")
    per_gpu = ["--rollout.batch_size", "8", "--rollout.micro_batch_size", "8", "--train.batch_size", "8"]
    with pytest.raises(AssertionError, match="number of sample batches"):
        openrlhf_parse(per_gpu + OPENRLHF_SITE_FLAGS)


def test_openrlhf_ref_offload_below_zero3_does_nothing() -> None:
    """Why the export drops --ref.offload below ZeRO-3: OpenRLHF's eval config is then stage 0."""
    pytest.importorskip("openrlhf")
    _, strategy = openrlhf_parse(["--ds.zero_stage", "2", "--ref.offload", *OPENRLHF_SITE_FLAGS])
    zero = strategy.get_ds_eval_config(offload=True)["zero_optimization"]
    assert zero["stage"] == 0      # DeepSpeed ignores offload_param below stage 3


# -- verl 0.9.1: Hydra against its packaged ppo_trainer.yaml, its config classes, its build_optimizer -----
def _verl_overrides(cfg: TrialConfig) -> list[str]:
    return export_config(cfg, "verl").files["verl_overrides.txt"].splitlines()


@pytest.mark.parametrize("case", CASES)
def test_verl_overrides_compose_into_verls_own_config_classes(case: str) -> None:
    pytest.importorskip("verl")
    pytest.importorskip("hydra")
    stub_modules()
    from verl.utils.config import omega_conf_to_dataclass

    cfg = CASES[case]
    composed = verl_compose(_verl_overrides(cfg))
    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)       # verl's own validation
    assert actor.fsdp_config.reshard_after_forward == (cfg.memory.zero_stage == 3)
    assert actor.fsdp_config.offload_policy == cfg.memory.offload_optimizer
    assert actor.fsdp_config.optimizer_offload is False
    assert actor.strategy == ("fsdp2" if cfg.memory.offload_optimizer else "fsdp")
    assert actor.ppo_micro_batch_size_per_gpu == cfg.workload.micro_batch
    assert actor.optim.lr == cfg.workload.actor_lr
    if cfg.algorithm == "ppo":
        # The whole critic node would load critic.model.path; its optimizer and engine are what the export sets.
        assert omega_conf_to_dataclass(composed.critic.optim).lr == cfg.workload.critic_lr
        engine = omega_conf_to_dataclass(composed.critic.fsdp)
        assert engine.offload_policy == cfg.memory.offload_optimizer
        assert engine.reshard_after_forward == (cfg.memory.zero_stage == 3)
        assert composed.critic.strategy == actor.strategy


def test_verl_rejects_the_keys_the_old_export_wrote() -> None:
    pytest.importorskip("verl")
    from hydra.errors import ConfigCompositionException as HydraError

    for key in ("critic.model.fsdp_config.fsdp_size=-1", "reward_model.model.fsdp_config.param_offload=true"):
        with pytest.raises(HydraError):
            verl_compose([key])


def _optimizer_summary(model, optimizer) -> tuple[int, int]:
    """(state-free parameters holding state, state-full parameters holding state) after a step."""
    import torch

    free = {id(p) for g in optimizer.param_groups if g.get("statefull") is False for p in g["params"]}
    held = [p for p in model.parameters() if any(isinstance(v, torch.Tensor) for v in optimizer.state[p].values())]
    return sum(id(p) in free for p in held), sum(id(p) not in free for p in held)


def test_verl_build_optimizer_with_exported_adamw_settings() -> None:
    pytest.importorskip("verl")
    stub_modules()
    import torch
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config.optimizer import build_optimizer

    cfg = TrialConfig().replace(**{"optimizer.weight_decay": 0.01, "optimizer.beta2": 0.99})
    optim = omega_conf_to_dataclass(verl_compose(_verl_overrides(cfg)).actor_rollout_ref.actor.optim)
    model = _tiny_llama()
    optimizer = build_optimizer(model.parameters(), optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], tuple(group["betas"])) == (1e-3, 0.01, (0.9, 0.99))


def test_verl_frugal_route_keeps_state_free_layers_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old export (optimizer_impl=autotune.optim) gave AdamW state to everything; the hook does not."""
    pytest.importorskip("verl")
    stub_modules()
    from types import SimpleNamespace

    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config.optimizer import build_optimizer

    cfg = GOLDEN_CONFIG.replace(**{"optimizer.partition.placement": "top"})
    export_config(cfg, "verl").write(tmp_path)
    monkeypatch.setenv("AUTOTUNE_FRUGAL_PARTITION", str(tmp_path / "frugal_partition.yaml"))
    composed = verl_compose(_verl_overrides(cfg))
    optim = omega_conf_to_dataclass(composed.actor_rollout_ref.actor.optim)

    old = omega_conf_to_dataclass(verl_compose([*_verl_overrides(cfg), "actor_rollout_ref.actor.optim.optimizer_impl="
                                                "autotune.optim"]).actor_rollout_ref.actor.optim)
    model = _tiny_llama()
    old_opt = build_optimizer(model.parameters(), old)           # verl's own call: bare parameters
    _one_step(model, old_opt)
    assert len(old_opt.param_groups) == 1
    assert _optimizer_summary(model, old_opt)[1] == len(list(model.parameters()))   # state for every one

    import importlib

    hook = importlib.import_module(composed.actor_rollout_ref.model.external_lib)   # what verl's worker does
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    engine = SimpleNamespace(optimizer_config=optim)
    model = _tiny_llama()
    optimizer = FSDPEngine._build_optimizer(engine, model)        # the patched engine method
    _one_step(model, optimizer)
    free_with_state, full_with_state = _optimizer_summary(model, optimizer)
    assert free_with_state == 0 and full_with_state > 0
    assert any(g.get("statefull") is False for g in optimizer.param_groups)
    with pytest.raises(RuntimeError, match="patch is not installed"):
        hook.FRUGAL(model.parameters(), lr=1e-3)                  # build_optimizer without the patch


# -- accelerate: its own launch-config validation -------------------------------------------------------
def _accelerate_checks(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `accelerate launch --config_file accelerate.yaml` validates before and at start-up."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(folder)
    args = launch_command_parser().parse_args(["--config_file", "accelerate.yaml", "train.py"])
    args, defaults, mp_from_config_flag = _validate_launch_command(args)
    if not args.use_deepspeed:
        return
    # As accelerate's launch_command does before deepspeed_launcher (commands/launch.py).
    fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config_flag else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", env["ACCELERATE_CONFIG_DS_FIELDS"])
    DeepSpeedPlugin(hf_ds_config=str(folder / "ds_config.json"))      # raises on a refused combination


@pytest.mark.parametrize("case", CASES)
def test_accelerate_validates_the_exported_launch_config(case: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("accelerate")
    export_config(CASES[case], "trl").write(tmp_path)
    _accelerate_checks(tmp_path, monkeypatch)


def test_accelerate_refuses_mixed_precision_next_to_a_deepspeed_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The old export: accelerate.yaml with mixed_precision and deepspeed_config_file."""
    pytest.importorskip("accelerate")
    export_config(GOLDEN_CONFIG, "trl").write(tmp_path)
    data = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump({**data, "mixed_precision": "bf16"}))
    with pytest.raises(ValueError, match="deepspeed_config_file"):
        _accelerate_checks(tmp_path, monkeypatch)
