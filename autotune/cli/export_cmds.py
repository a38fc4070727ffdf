"""`autotune export`: carry a study's recommended config (or a config file) to another training stack."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from autotune.cli.checks import FiniteFloat, writable_dir, writable_file
from autotune.export import FORMATS

if TYPE_CHECKING:
    from autotune.config import TrialConfig


def _load_config(path: Path) -> TrialConfig | None:
    """The TrialConfig in `path`, or None when the file holds no YAML document (empty or comments only).

    An empty file would otherwise load as the all-defaults config and be exported as if it were the
    study's pick. Raises ConfigError as `TrialConfig.load` does (missing file, bad YAML or keys).
    """
    from autotune import schema
    from autotune.config import TrialConfig
    from autotune.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    data = schema.load_yaml_text(path)
    return None if data is None else TrialConfig.from_dict(data, source=str(path))


def _study_config(study: str, storage: str | None) -> TrialConfig:
    """runs/<study>/recommended.yaml when no --storage is given and it holds a config, else the study's
    recommendation afresh, through the same function (and stored policy) as `search` and `pareto`."""
    from autotune.tuner.recommend import recommend_study
    from autotune.tuner.study import load_study, study_dir

    saved = study_dir(study) / "recommended.yaml"
    if storage is None and saved.is_file():
        cfg = _load_config(saved)
        if cfg is not None:
            return cfg
        click.secho(f"warning: {saved} is empty; recommending from the study's storage instead", fg="yellow",
                    err=True)
    return recommend_study(load_study(study, storage)).record.config


def _gpu_config(study: str, storage: str | None, gpu_gb: float) -> TrialConfig:
    """The config of the study's per-GPU row for a `gpu_gb` card (autotune.tuner.by_gpu)."""
    from autotune.tuner.by_gpu import by_gpu_study, row_for
    from autotune.tuner.study import load_study, records_of

    loaded = load_study(study, storage)
    records = records_of(loaded)
    row = row_for(by_gpu_study(loaded, records, extra_gb=(gpu_gb,)), gpu_gb)
    return next(r.config for r in records if r.number == row.trial)


@click.command()
@click.option("--study", default=None, help="Export this study's recommended config.")
@click.option("--storage", default=None, help="Optuna storage URL; default sqlite:///runs/<study>/optuna.db.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Export this TrialConfig YAML instead (e.g. runs/<study>/recommended.yaml).")
@click.option("--gpu-gb", type=FiniteFloat(min=0, min_open=True), default=None,
              help="With --study: export the fastest config that fits a card of this size (its `pareto --by-gpu` row).")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="Target stack.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write the files into; default: print them.")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="openrlhf: GPUs per model to write the global batch flags for; default the trial's world size.")
def export(study: str | None, storage: str | None, config_path: Path | None, gpu_gb: float | None, fmt: str,
           out: Path | None, gpus: int | None) -> None:
    """Write the config in a target stack's own format; settings it cannot express become warnings."""
    from autotune.errors import ConfigError
    from autotune.export import export_config

    if (study is None) == (config_path is None):
        raise click.UsageError("give exactly one of --study or --config")
    if gpu_gb is not None and study is None:
        raise click.UsageError("--gpu-gb picks a row of a study's per-GPU table: give --study")
    if config_path is not None:
        cfg = _load_config(config_path)
        if cfg is None:
            raise ConfigError("empty config file: it holds no TrialConfig to export", source=str(config_path))
    elif study is None:   # not reached: the check above wants exactly one of --study and --config
        raise click.UsageError("give exactly one of --study or --config")
    elif gpu_gb is not None:
        cfg = _gpu_config(study, storage, gpu_gb)
    else:
        cfg = _study_config(study, storage)
    output = export_config(cfg, fmt, gpus=gpus)
    if out is not None:   # every file checked before the first is written
        writable_dir(out, "--out")
        for name in output.files:
            writable_file(out / name, "--out")
    for warning in output.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if out is not None:
        paths = output.write(out)
        click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")
        return
    for name, text in output.files.items():
        click.echo(f"# ---- {name}")
        click.echo(text, nl=False)


COMMANDS = [export]
