"""`autotune sync` and `autotune ui`: MLflow after the fact. mlflow is imported inside the commands."""
from __future__ import annotations

import logging
import signal
import socket
import subprocess

import click


@click.command()
@click.option("--study", required=True, help="Study name.")
@click.option("--storage", default=None, help="Optuna storage URL; default sqlite:///runs/<study>/optuna.db.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or runs/mlflow.db.")
def sync(study: str, storage: str | None, tracking_uri: str | None) -> None:
    """Log the study's trials that MLflow is missing (after an outage); never logs one twice."""
    from autotune.tracking import StudyTracker, TrackingError
    from autotune.tuner.study import default_storage, load_records, study_dir

    url = storage or default_storage(study)
    records = load_records(study, url)
    tracker = StudyTracker(study, url, tracking_uri)
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # MLflow logs a failed query with its SQL and traceback before raising it; the error below says it once
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        added = tracker.sync(records, study_dir(study) / "trials")
    except TrackingError as exc:   # a damaged store's SQLAlchemy error carries its SQL: one line is enough
        first = str(exc).splitlines()[0]
        raise TrackingError(f"{first} (is the store damaged? restore it from a backup, or pass a new "
                            "--tracking-uri)" if first != str(exc) else first) from exc
    click.echo(f"{study}: {added} of {len(records)} trials added to MLflow at {tracker.tracking_uri}")


@click.command()
@click.option("--study", default=None, help="Study name: the UI opens on its experiment.")
@click.option("--tracking-uri", default=None, help="MLflow store; default $MLFLOW_TRACKING_URI or runs/mlflow.db.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(study: str | None, tracking_uri: str | None, port: int) -> None:
    """Start `mlflow ui` on the study's tracking store, on 127.0.0.1 (Ctrl-C stops it)."""
    from autotune.tracking import TrackingError, default_tracking_uri, experiment_url, require_experiment, ui_argv

    uri = tracking_uri or default_tracking_uri()
    argv = ui_argv(uri, port=port)
    if study:
        require_experiment(uri, study)
    _check_port_free(port)
    base = f"http://127.0.0.1:{port}"
    click.echo(f"MLflow UI: {experiment_url(uri, study, base) if study else base}")
    code = _serve(argv)   # in the foreground until Ctrl-C, SIGTERM or SIGHUP
    if code != 0:
        raise TrackingError(f"mlflow ui exited with status {code}")


def _check_port_free(port: int) -> None:
    """Fail before printing a URL that another program answers (`mlflow ui` would exit after it)."""
    from autotune.errors import TrackingError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise TrackingError(f"--port {port}: 127.0.0.1:{port} is in use ({exc.strerror or exc}); "
                                "pass another --port") from None


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached `autotune ui`."""


def _serve(argv: list[str]) -> int:
    """Run the MLflow server in its own process group and end that whole group on any way out.

    `mlflow ui` starts a uvicorn server and job workers; a signal to this process alone left them
    running, re-parented to init and holding the port. Ctrl-C, SIGTERM and SIGHUP are forwarded to
    the group (as the trial launcher does for trials), which is then waited for.
    """
    from autotune.tuner.launcher import stop_group

    def stopped(_signum: int, _frame: object) -> None:
        raise _Stopped

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(argv, start_new_session=True)
        return proc.wait()
    except _Stopped:
        raise KeyboardInterrupt from None   # reported as "Interrupted.", exit 130, as Ctrl-C is
    finally:
        if proc is not None:
            stop_group(proc)   # also what the server left in its group after it exited
        for sig, handler in previous.items():
            signal.signal(sig, handler)


COMMANDS = [sync, ui]
