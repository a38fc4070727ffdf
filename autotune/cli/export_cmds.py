"""`autotune export`: carry a study's recommended config (or a config file) to another training stack."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from autotune.cli.checks import FiniteFloat, writable_dir, writable_file
from autotune.export import FORMATS

if TYPE_CHECKING:
    from autotune.config import TrialConfig


def _study_config(study: str, storage: str | None) -> TrialConfig:
    """runs/<study>/recommended.yaml when no --storage is given and it exists, else the study's
    recommendation afresh, through the same function (and stored policy) as `search` and `pareto`."""
    from autotune.config import TrialConfig
    from autotune.tuner.recommend import recommend_study
    from autotune.tuner.study import load_study, study_dir

    saved = study_dir(study) / "recommended.yaml"
    if storage is None and saved.is_file():
        return TrialConfig.load(saved)
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
def export(study: str | None, storage: str | None, config_path: Path | None, gpu_gb: float | None, fmt: str,
           out: Path | None) -> None:
    """Write the config in a target stack's own format; settings it cannot express become warnings."""
    from autotune.config import TrialConfig
    from autotune.export import export_config

    if (study is None) == (config_path is None):
        raise click.UsageError("give exactly one of --study or --config")
    if gpu_gb is not None and study is None:
        raise click.UsageError("--gpu-gb picks a row of a study's per-GPU table: give --study")
    if config_path is not None:
        cfg = TrialConfig.load(config_path)
    elif gpu_gb is not None:
        cfg = _gpu_config(study, storage, gpu_gb)
    else:
        cfg = _study_config(study, storage)
    output = export_config(cfg, fmt)
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
