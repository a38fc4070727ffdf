"""Finding a decoder's repeated transformer blocks and the Linear weights FRUGAL may split."""
from __future__ import annotations

from torch import nn

from autotune.errors import ConfigError


def _linear_types() -> tuple[type, ...]:
    # GPT-2 stores its projections as transformers' Conv1D (a transposed Linear); it is a Linear all the same.
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain torch models
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer block list: the largest `nn.ModuleList` of modules of one class.

    Covers Hugging Face decoders (`model.layers` in Llama, Mistral and Qwen2, `transformer.h` in
    GPT-2, `model.decoder.layers` in OPT) without naming any of them.

    Raises:
        ConfigError: (a ValueError) naming the model class when no such list exists.
    """
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(True for _ in module.parameters())
    ]
    if not candidates:
        raise ConfigError(
            f"{type(model).__name__} has no repeated transformer block list (an nn.ModuleList of "
            "identical blocks), so FRUGAL cannot tell its layers apart"
        )
    return max(candidates, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


def linear_weights(module: nn.Module) -> list[nn.Parameter]:
    """The weights of the Linear (and GPT-2 Conv1D) layers inside `module`, in module order."""
    return [m.weight for m in module.modules() if isinstance(m, _linear_types())]  # type: ignore[attr-defined]


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and each model's own `*Norm` classes, recognised by class name."""
    return "norm" in type(module).__name__.lower()

