"""The Optuna side of a search: storage, study, sampler, and reading trials back as TrialRecords.

Everything a later process needs (config, result, advisor reason, objective names) lives in the
storage itself, so `autotune pareto`, the exporters and the tracker work from a study name alone,
on any machine that reaches the storage.
"""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune import schema
from autotune.attrs import (
    STUDY_ATTR_BUDGET,
    STUDY_ATTR_OBJECTIVES,
    USER_ATTR_CONFIG,
    USER_ATTR_REASON,
    USER_ATTR_RESULT,
)
from autotune.config import TrialConfig
from autotune.errors import ConfigError, StorageError, StudyNotFoundError
from autotune.result import TrialRecord, TrialResult
from autotune.tuner.definition import check_definition
from autotune.tuner.metrics import metric_value
from autotune.tuner.optuna_internals import rdb_tables

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "gp", "random")
MAX_SEED = 2**32 - 1                               # numpy's RandomState, which every sampler seeds
RUNS_ROOT = Path("runs")
# A study name becomes one folder under runs/: no separators, no leading dot, no control characters.
_STUDY_NAME = re.compile(r"^(?![.])[^/\\?#%\x00-\x1f\x7f]{1,128}$")
_OPTUNA_TABLES = {"studies", "trials", "version_info"}
_NEW_FILE_S = 10.0     # a younger empty database may be one another worker is creating right now


def check_study_name(name: str) -> str:
    """`name` if it is one plain folder name (what runs/<study>/ needs), else a ConfigError.

    Raises:
        ConfigError: the name is empty, too long, starts with a dot, or holds a path separator or a
            control character; each would put the study's files outside runs/ or split them.
    """
    if not isinstance(name, str) or not _STUDY_NAME.match(name):
        raise ConfigError(f"study name {name!r} cannot be a folder under {RUNS_ROOT}/: use 1 to 128 characters "
                          "without '/', '\\', '?', '#', '%', control characters or a leading '.' "
                          "(e.g. --study my-study)")
    return name


def default_storage(study_name: str) -> str:
    """The embedded storage of a study: `sqlite:///runs/<study>/optuna.db` (relative to the cwd)."""
    return f"sqlite:///{study_dir(study_name)}/optuna.db"


def study_dir(study_name: str) -> Path:
    """`runs/<study>/`, where trial folders, pareto.json and recommended.yaml go."""
    return RUNS_ROOT / check_study_name(study_name)


def open_storage(url: str, *, heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
                 max_retry: int = 2, read_only: bool = False) -> RDBStorage:
    """An RDBStorage (SQLite or PostgreSQL). With a heartbeat, a trial whose worker died is retried.

    A database that exists must already be an Optuna storage: anything else (a truncated 0-byte
    file, an MLflow store, a text file) is refused rather than written to.

    Args:
        url: SQLAlchemy URL; a relative SQLite path has its folder created (unless read_only).
        heartbeat_interval_s: seconds between a running trial's heartbeats; None disables them.
        grace_period_s: how long without a heartbeat makes a trial stale (Optuna: 2 intervals).
        max_retry: how many times one stale trial is re-queued.
        read_only: open a SQLite file read-only (for commands that only read a study).

    Raises:
        StorageError: a malformed URL, a missing driver, or a database that is not an Optuna storage.
    """
    import optuna

    sqlite_path = _sqlite_path(url)
    if sqlite_path is not None:
        _check_sqlite_file(sqlite_path, url)
        if not read_only:
            _make_parent(sqlite_path, url)
            _check_writable(sqlite_path, url)
        else:
            url = f"sqlite:///{_read_only_uri(sqlite_path)}&uri=true"
    else:
        _check_server_storage(url)
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
    if url.startswith("sqlite") and not read_only:
        _fast_sqlite(storage.engine)
    return storage


def _sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL; None for an in-memory or non-SQLite URL."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def _read_only_uri(path: Path) -> str:
    """A SQLite URI that reads `path` without writing a byte, also in a read-only folder.

    A WAL database opened read-only still creates its -shm file beside it, which a read-only folder
    refuses ("unable to open database file"). There, with no -wal file holding newer commits, no
    process can be writing the database, so it is opened as immutable and nothing is created.
    """
    uri = f"file:{path.resolve()}?mode=ro"
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not (wal.is_file() and wal.stat().st_size > 0):
        uri += "&immutable=1"
    return uri


def _check_writable(path: Path, url: str) -> None:
    """A search writes its study: say so when the database or its folder is read-only, before Optuna
    fails half-way with an internal error.

    Raises:
        StorageError: naming what is not writable.
    """
    for what in (path, path.parent):
        if what.exists() and not os.access(what, os.W_OK):
            raise StorageError(f"storage {url}: {what} is not writable; fix its permissions (or pass a writable "
                               "--storage), or use `autotune pareto` and `export`, which only read a study")


def _make_parent(path: Path, url: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder of storage {url}: {exc.strerror or exc}") from None


def _check_sqlite_file(path: Path, url: str) -> None:
    """Refuse an existing file that is not an Optuna SQLite storage, before anything writes to it.

    A 0-byte or table-less file younger than a few seconds may be one that another worker is
    creating this moment, so it gets that long to gain Optuna's tables.

    Raises:
        StorageError: naming the file, what it holds, and what to do.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise StorageError(f"storage {url}: {path} is not a file; pass a sqlite:///PATH to a database file")
    deadline = time.monotonic() + _NEW_FILE_S
    while True:
        tables = _sqlite_tables(path, url)
        if _OPTUNA_TABLES <= tables or (tables and tables <= rdb_tables()):
            return   # a study, or the start of one whose creator was killed half-way: Optuna completes it
        if tables or time.time() - path.stat().st_mtime > _NEW_FILE_S or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    what = f"holds other tables ({', '.join(sorted(tables)[:5])})" if tables else "is empty (a truncated file?)"
    raise StorageError(f"storage {url}: {path} exists but is not an Optuna study database: it {what}. "
                       "autotune will not overwrite it; restore it from a backup, or move it away to start afresh")


def _sqlite_tables(path: Path, url: str) -> set[str]:
    """The table names of a SQLite file, read without writing a byte."""
    import sqlite3

    try:
        with path.open("rb") as handle:
            header = handle.read(16)
        if not header:
            return set()
        if header != b"SQLite format 3\x00":
            raise StorageError(f"storage {url}: {path} is not a SQLite database (it may be a text file); "
                               "pass the path of an optuna.db")
        connection = sqlite3.connect(_read_only_uri(path), uri=True, timeout=60)
        try:
            return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"storage {url}: cannot read {path}: {exc}") from None


def _check_server_storage(url: str) -> None:
    """A server URL must parse, name a known dialect whose driver is installed, and (when the
    database already holds tables) be an Optuna storage.

    Raises:
        StorageError: naming the URL and the fix.
    """
    import sqlalchemy
    import sqlalchemy.exc

    hint = "pass e.g. sqlite:///runs/NAME/optuna.db or postgresql+psycopg2://user@host/db"
    try:
        parsed = sqlalchemy.engine.make_url(url)
        engine = sqlalchemy.create_engine(parsed)
    except sqlalchemy.exc.NoSuchModuleError:   # a subclass of ArgumentError
        raise StorageError(f"--storage {url!r}: unknown database dialect; {hint}") from None
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"--storage {url!r} is not a database URL; {hint}") from None
    except ImportError as exc:
        raise StorageError(f"--storage {url!r}: its database driver {exc.name or exc} is not installed; install "
                           "it, or name an installed one in the URL (e.g. postgresql+psycopg2://...)") from None
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"--storage {url!r}: cannot connect: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    if tables and not _OPTUNA_TABLES <= tables:
        raise StorageError(f"--storage {url!r} holds other tables ({', '.join(sorted(tables)[:5])}), not an Optuna "
                           "study; autotune will not write to it")


def _create_rdb(url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any], attempts: int = 5) -> RDBStorage:
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
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage {url}: {str(exc).splitlines()[0]}") from None


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


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
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
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    return factories[name]()


def open_study(name: str, storage: str | optuna.storages.BaseStorage, *,
               directions: list[Literal["minimize", "maximize"]], objectives: list[str],
               sampler: optuna.samplers.BaseSampler | None, budget_gb: float | None,
               distributions: dict[str, BaseDistribution] | None = None,
               definition: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study, or join it if it exists (a resumed run or another worker).

    Args:
        distributions: the space's {dimension: Optuna distribution}; an existing study's trials
            must agree with them, or the sampler would crash on the first ask().
        definition: what defines the study (`autotune.tuner.definition.study_definition`); an
            existing study's must be the same.

    Raises:
        ConfigError: when an existing study has other objectives or dimensions than this space, or
            a new study would overwrite the trial folders of an earlier one.
    """
    import optuna

    try:
        optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        _check_no_earlier_trials(name)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                load_if_exists=True)
    known = study.user_attrs.get(STUDY_ATTR_OBJECTIVES)
    if known is None:
        study.set_user_attr(STUDY_ATTR_OBJECTIVES, objectives)
        study.set_user_attr(STUDY_ATTR_BUDGET, budget_gb)
    elif list(known) != objectives:
        raise ConfigError(f"study {name!r} optimises {known}, but this space asks for {objectives}; "
                          "use another --study name")
    if definition is not None:
        check_definition(study, definition)
    _check_distributions(study, distributions or {})
    return study


def _check_no_earlier_trials(name: str) -> None:
    """A new study must not write over runs/<study>/trials of one whose storage is gone."""
    trials = study_dir(name) / "trials"
    if trials.is_dir() and any(trials.glob("*/result.json")):
        raise StorageError(f"{trials} holds the trials of an earlier study {name!r} that its storage no longer "
                           "has; a new study would overwrite them. Point --storage at that study, or move the "
                           "folder away, or use another --study name")


def _check_distributions(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> None:
    """Each dimension must still be the one the study's trials were sampled from.

    Raises:
        ConfigError: naming each changed dimension, before any ask().
    """
    from optuna.distributions import check_distribution_compatibility

    changed: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        for dim, old in trial.distributions.items():
            new = distributions.get(dim)
            if new is None or dim in changed:
                continue
            try:
                check_distribution_compatibility(old, new)
            except ValueError:
                changed[dim] = f"{dim}: was {old}, now {new}"
    if changed:
        raise ConfigError([*changed.values(), "the space changed under this study: restore the dimensions it was "
                           "started with, or use another --study name"], source=f"study {study.study_name!r}")


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """Open an existing study for reading.

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    import optuna

    url = storage or default_storage(study_name)
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise StudyNotFoundError(f"no study {study_name!r}: {url} does not exist")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url, read_only=True))
    except KeyError:
        raise StudyNotFoundError(f"no study {study_name!r} in {url}") from None


def load_records(study_name: str, storage: str | None = None) -> list[TrialRecord]:
    """Every finished trial of a study, in trial-number order.

    Raises:
        StudyNotFoundError: naming the storage searched.
    """
    study = load_study(study_name, storage)
    return records_of(study)


def records_of(study: optuna.Study) -> list[TrialRecord]:
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


def to_record(trial: optuna.trial.FrozenTrial, metrics: list[str]) -> TrialRecord | None:
    """A TrialRecord from an Optuna FrozenTrial, or None when it holds no result (yet)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if USER_ATTR_RESULT not in attrs or USER_ATTR_CONFIG not in attrs or not trial.state.is_finished():
        return None
    complete = trial.state == TrialState.COMPLETE
    result = TrialResult.from_dict(attrs[USER_ATTR_RESULT])
    try:
        config = TrialConfig.from_dict(attrs[USER_ATTR_CONFIG])
    except ConfigError:
        with schema.unchecked():   # an invalid sampled combination, recorded as what it was
            config = TrialConfig.from_dict(attrs[USER_ATTR_CONFIG])
    return TrialRecord(
        number=trial.number,
        config=config,
        result=result,
        objectives=measured_objectives(result, metrics) if complete else {},
        feasible=complete and all(v <= 0 for v in trial.constraints.values()),
        advisor_reason=attrs.get(USER_ATTR_REASON),
    )
