"""The Optuna side of a search: storage, study, sampler, and reading trials back as TrialRecords.

Everything a later process needs (config, result, advisor reason, objective names) lives in the
storage itself, so `autotune pareto`, the exporters and the tracker work from a study name alone,
on any machine that reaches the storage.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from autotune.config import TrialConfig
from autotune.errors import ConfigError, StudyNotFoundError
from autotune.result import USER_ATTR_CONFIG, USER_ATTR_REASON, USER_ATTR_RESULT, TrialRecord, TrialResult
from autotune.tuner.metrics import metric_value

log = logging.getLogger(__name__)

STUDY_ATTR_OBJECTIVES = "autotune.objectives"     # [metric, ...] in the study's direction order
STUDY_ATTR_BUDGET = "autotune.budget_gb"
SAMPLERS = ("tpe", "nsga2", "gp", "random")


def default_storage(study_name: str) -> str:
    """The embedded storage of a study: `sqlite:///runs/<study>/optuna.db` (relative to the cwd)."""
    return f"sqlite:///runs/{study_name}/optuna.db"


def study_dir(study_name: str) -> Path:
    """`runs/<study>/`, where trial folders, pareto.json and recommended.yaml go."""
    return Path("runs") / study_name


def open_storage(url: str, *, heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
                 max_retry: int = 2) -> Any:
    """An RDBStorage (SQLite or PostgreSQL). With a heartbeat, a trial whose worker died is retried.

    Args:
        url: SQLAlchemy URL; a relative SQLite path has its folder created.
        heartbeat_interval_s: seconds between a running trial's heartbeats; None disables them.
        grace_period_s: how long without a heartbeat makes a trial stale (Optuna: 2 intervals).
        max_retry: how many times one stale trial is re-queued.
    """
    import optuna

    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # heartbeats are "experimental" in Optuna 5, but they are the documented way to retry dead workers
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs: dict[str, Any] = {}
        if heartbeat_interval_s is not None:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            kwargs = dict(heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s,
                          heartbeat_stale_trial_callback=retry)
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        storage = _create_rdb(url, engine_kwargs, kwargs)
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage


def _create_rdb(url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """RDBStorage, retried while another worker is creating the same tables at the same moment."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # "already exists" (SQLite says OperationalError, PostgreSQL IntegrityError or
            # ProgrammingError); a transient "database is locked" retries the same way
            log.info("storage being initialised by another worker (%s); retrying", type(exc).__name__)
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def _fast_sqlite(engine: Any) -> None:
    """WAL journal with synchronous=NORMAL: one fsync per checkpoint instead of per commit.

    Optuna commits every suggest and attribute; at ~10 ms an fsync that was most of the
    controller's time per trial. A killed process loses nothing under WAL; only a power cut
    may roll back the last commits.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made while Optuna created the tables predate the listener


def make_sampler(name: str, seed: int | None) -> Any:
    """The Optuna sampler for `--sampler`. Each reads constraints set with `trial.set_constraint`."""
    import optuna

    factories = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    if name not in factories:
        raise ConfigError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    return factories[name]()


def open_study(name: str, storage: Any, *, directions: list[str], objectives: list[str], sampler: Any,
               budget_gb: float | None) -> Any:
    """Create the study, or join it if it exists (a resumed run or another worker).

    Raises:
        ConfigError: when an existing study has other objectives than this space.
    """
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                load_if_exists=True)
    known = study.user_attrs.get(STUDY_ATTR_OBJECTIVES)
    if known is None:
        study.set_user_attr(STUDY_ATTR_OBJECTIVES, objectives)
        study.set_user_attr(STUDY_ATTR_BUDGET, budget_gb)
    elif list(known) != objectives:
        raise ConfigError(f"study {name!r} optimises {known}, but this space asks for {objectives}; "
                          "use another --study name")
    return study


def load_study(study_name: str, storage: str | None = None) -> Any:
    """Open an existing study for reading.

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    import optuna

    url = storage or default_storage(study_name)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise StudyNotFoundError(f"no study {study_name!r}: {url} does not exist")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise StudyNotFoundError(f"no study {study_name!r} in {url}") from None


def load_records(study_name: str, storage: str | None = None) -> list[TrialRecord]:
    """Every finished trial of a study, in trial-number order.

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    study = load_study(study_name, storage)
    return records_of(study)


def records_of(study: Any) -> list[TrialRecord]:
    """The study's trials that carry a result (completed or failed with a reason)."""
    metrics = list(study.user_attrs.get(STUDY_ATTR_OBJECTIVES, []))
    out = []
    for trial in study.get_trials(deepcopy=False):
        record = to_record(trial, metrics)
        if record is not None:
            out.append(record)
    return out


def measured_objectives(result: TrialResult, metrics: list[str]) -> dict[str, float]:
    """The objective metrics the trial measured. An infeasible trial's stand-in values, which
    Optuna needs but ignores, are left out, so no chart shows an OOM at reward 0."""
    values = {m: metric_value(result, m) for m in metrics}
    return {m: float(v) for m, v in values.items() if v is not None}


def to_record(trial: Any, metrics: list[str]) -> TrialRecord | None:
    """A TrialRecord from an Optuna FrozenTrial, or None when it holds no result (yet)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if USER_ATTR_RESULT not in attrs or USER_ATTR_CONFIG not in attrs or not trial.state.is_finished():
        return None
    complete = trial.state == TrialState.COMPLETE
    result = TrialResult.from_dict(attrs[USER_ATTR_RESULT])
    return TrialRecord(
        number=trial.number,
        config=TrialConfig.from_dict(attrs[USER_ATTR_CONFIG]),
        result=result,
        objectives=measured_objectives(result, metrics) if complete else {},
        feasible=complete and all(v <= 0 for v in trial.constraints.values()),
        advisor_reason=attrs.get(USER_ATTR_REASON),
    )
