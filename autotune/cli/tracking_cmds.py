"""`autotune sync` and `autotune ui`: MLflow after the fact. mlflow is imported inside the commands."""
from __future__ import annotations

import subprocess

import click


@click.command()
@click.option("--study", required=True, help="Study name.")
@click.option("--storage", default=None, help="Optuna storage URL; default sqlite:///runs/<study>/optuna.db.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or runs/mlflow.db.")
def sync(study: str, storage: str | None, tracking_uri: str | None) -> None:
    """Log the study's trials that MLflow is missing (after an outage); never logs one twice."""
    from autotune.tracking import StudyTracker
    from autotune.tuner.study import default_storage, load_records, study_dir

    url = storage or default_storage(study)
    records = load_records(study, url)
    tracker = StudyTracker(study, url, tracking_uri)
    added = tracker.sync(records, study_dir(study) / "trials")
    click.echo(f"{study}: {added} of {len(records)} trials added to MLflow at {tracker.tracking_uri}")


@click.command()
@click.option("--study", default=None, help="Study name: the UI opens on its experiment.")
@click.option("--tracking-uri", default=None, help="MLflow store; default $MLFLOW_TRACKING_URI or runs/mlflow.db.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(study: str | None, tracking_uri: str | None, port: int) -> None:
    """Start `mlflow ui` on the study's tracking store, on 127.0.0.1 (Ctrl-C stops it)."""
    from autotune.tracking import TrackingError, default_tracking_uri, experiment_url, ui_argv

    uri = tracking_uri or default_tracking_uri()
    argv = ui_argv(uri, port=port)
    base = f"http://127.0.0.1:{port}"
    click.echo(f"MLflow UI: {experiment_url(uri, study, base) if study else base}")
    code = subprocess.call(argv)   # in the foreground until Ctrl-C
    if code != 0:
        raise TrackingError(f"mlflow ui exited with status {code}")


COMMANDS = [sync, ui]
