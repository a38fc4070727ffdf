"""Exporters: carry a TrialConfig to another training stack, one small module per target.

Each exporter is a pure function `to_X(cfg) -> ExportOutput`: files as text, plus a warning for
every setting the target cannot express. `export_config` picks one by its format name.
"""
from __future__ import annotations

from typing import Callable

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

__all__ = ["EXPORTERS", "FORMATS", "ExportOutput", "export_config"]


def export_config(cfg: TrialConfig, fmt: str) -> ExportOutput:
    """Export `cfg` to the format named `fmt`.

    Raises:
        ConfigError: `fmt` is not one of FORMATS (the message lists them).
    """
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise ConfigError(f"unknown export format {fmt!r} (valid formats: {', '.join(FORMATS)})")
    return exporter(cfg)
