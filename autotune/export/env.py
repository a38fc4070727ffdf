"""env: the allocator environment line and where a training loop should empty the cache."""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.features import partition_files, unexpressed
from autotune.export.output import ExportOutput

ENV_FILE = "autotune.env"

# Where each autotune phase ends in a typical RLHF loop; the cache is emptied right after it.
_PHASE_EDGE = {
    "generation": "after actor.generate(...) returns, before the experience forwards",
    "experience": "after the reference, reward and critic forwards (experience made), before training",
    "actor_train": "after the actor's optimizer.step() and zero_grad()",
    "critic_train": "after the critic's optimizer.step() and zero_grad()",
}


ALLOC_VAR = "PYTORCH_ALLOC_CONF"          # the primary name in newer PyTorch (2.9 on)
LEGACY_ALLOC_VAR = "PYTORCH_CUDA_ALLOC_CONF"   # deprecated there (it warns), the only name before


def env_lines(cfg: TrialConfig) -> list[str]:
    """A sourceable shell file: the PYTORCH_ALLOC_CONF export and comments for the code changes."""
    alloc = cfg.memory.allocator
    value = alloc.to_env_string()
    lines = ["# Source before launching: the allocator reads it once, when CUDA initialises."]
    if value:
        lines += [f"export {ALLOC_VAR}={value}",
                  f"# PyTorch before 2.9 reads only {LEGACY_ALLOC_VAR}: there, export the same value under that name.",
                  "# Warning: a set_expandable_segments call (verl makes one around every weight sync) goes through",
                  "# torch.cuda.memory._set_allocator_settings, which resets some of these settings; a stack that",
                  "# calls it does not keep the whole line above for the rest of the run."]
    else:
        lines.append(f"# PyTorch's allocator defaults: no {ALLOC_VAR} to set.")
    if alloc.memory_fraction is not None:
        lines.append(f"# At start-up: torch.cuda.set_per_process_memory_fraction({alloc.memory_fraction})")
    if cfg.memory.empty_cache_after:
        lines.append("# Call torch.cuda.empty_cache() once per RLHF step:")
        lines += [f"#   {phase}: {_PHASE_EDGE[phase]}" for phase in cfg.memory.empty_cache_after]
    else:
        lines.append("# No torch.cuda.empty_cache() calls: the winning policy does not empty the cache.")
    return lines


def to_env(cfg: TrialConfig) -> ExportOutput:
    """autotune.env; every non-allocator setting is a warning pointing at a stack exporter."""
    files = {ENV_FILE: "\n".join(env_lines(cfg)) + "\n"}
    files.update(partition_files(cfg))
    warnings = unexpressed(cfg, "the environment", {"allocator", "memory_fraction", "empty_cache_after"})
    return ExportOutput(files=files, warnings=tuple(warnings))
