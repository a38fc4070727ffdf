"""yaml: the full TrialConfig, loadable with `TrialConfig.load` and `autotune trial --config`."""
from __future__ import annotations

from autotune.config import TrialConfig
from autotune.export.output import ExportOutput

CONFIG_FILE = "trial.yaml"


def to_yaml(cfg: TrialConfig) -> ExportOutput:
    """trial.yaml: every field, so nothing can be lost."""
    return ExportOutput(files={CONFIG_FILE: cfg.dump()})
