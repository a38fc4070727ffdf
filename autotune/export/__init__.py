"""Exporters: carry a TrialConfig to another training stack, one small module per target.

Each exporter is a pure function `to_X(cfg) -> ExportOutput`: files as text, plus a warning for
every setting the target cannot express. `export_config` picks one by its format name.
"""
from __future__ import annotations

from collections.abc import Callable

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.export.deepspeed import to_deepspeed
from autotune.export.deepspeed_chat import to_deepspeed_chat
from autotune.export.env import to_env
from autotune.export.full_yaml import to_yaml
from autotune.export.openrlhf import to_openrlhf
from autotune.export.output import ExportOutput
from autotune.export.trl import to_trl
from autotune.export.verl import to_verl

EXPORTERS: dict[str, Callable[[TrialConfig], ExportOutput]] = {
    "deepspeed": to_deepspeed,
    "trl": to_trl,
    "openrlhf": to_openrlhf,
    "verl": to_verl,
    "deepspeed-chat": to_deepspeed_chat,
    "env": to_env,
    "yaml": to_yaml,
}
FORMATS: tuple[str, ...] = tuple(EXPORTERS)

__all__ = ["EXPORTERS", "FORMATS", "GPU_COUNT_FORMATS", "ExportOutput", "export_config"]


# Formats whose flags depend on how many GPUs the user launches on (global batch sizes).
GPU_COUNT_FORMATS: tuple[str, ...] = ("openrlhf",)


def export_config(cfg: TrialConfig, fmt: str, *, gpus: int | None = None) -> ExportOutput:
    """Export `cfg` to the format named `fmt`.

    Args:
        cfg: the config to export.
        fmt: one of FORMATS.
        gpus: the GPU count to write global flags for (GPU_COUNT_FORMATS only); None: the trial's world size.

    Raises:
        ConfigError: `fmt` is not one of FORMATS (the message lists them), or `gpus` is given for a
            format that has no GPU count.
    """
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise ConfigError(f"unknown export format {fmt!r} (valid formats: {', '.join(FORMATS)})")
    if gpus is not None and fmt not in GPU_COUNT_FORMATS:
        raise ConfigError(f"--gpus applies to --format {' or '.join(GPU_COUNT_FORMATS)} only, not {fmt}")
    return exporter(cfg, gpus) if fmt in GPU_COUNT_FORMATS else exporter(cfg)  # type: ignore[call-arg]
