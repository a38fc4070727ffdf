"""The study's storage: never written over, never created where it should not be, and bad URLs are messages."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from autotune.errors import ConfigError, StorageError, StudyNotFoundError
from autotune.tuner import study as studies
from autotune.tuner.space import distributions, load_space
from tests.tuner.tuner_helpers import CI_TINY


def _age(path: Path, seconds: float = 60.0) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_truncated_database_is_an_error_and_stays_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    db.write_bytes(b"")
    _age(db)
    with pytest.raises(StorageError, match="not an Optuna study database.*empty.*will not overwrite"):
        studies.open_storage(f"sqlite:///{db}", heartbeat_interval_s=1)
    assert db.read_bytes() == b""


def test_a_young_empty_database_is_waited_for(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "optuna.db"
    db.write_bytes(b"")   # another worker's connect() made it a moment ago, and creates the tables now
    other = threading.Timer(0.5, lambda: studies._create_rdb(f"sqlite:///{db}", {}, {}))
    other.start()
    studies.open_storage(f"sqlite:///{db}")
    other.join()
    assert {"studies", "trials"} <= _tables(db)


def test_a_half_created_optuna_schema_is_completed(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    with sqlite3.connect(db) as connection:   # its creator was killed after the first table
        connection.execute("CREATE TABLE studies (study_id INTEGER NOT NULL, study_name VARCHAR(512) NOT NULL, "
                           "PRIMARY KEY (study_id))")
    _age(db)
    studies.open_storage(f"sqlite:///{db}")
    assert {"studies", "trials", "version_info"} <= _tables(db)


@pytest.mark.parametrize("make", ["mlflow", "text", "folder"])
def test_a_file_that_is_not_a_study_is_refused_and_left_alone(tmp_path: Path, make: str) -> None:
    db = tmp_path / "other.db"
    if make == "mlflow":
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    elif make == "text":
        db.write_text("just some notes\n")
    else:
        db.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    content = db.read_bytes() if db.is_file() else None
    with pytest.raises(StorageError):
        studies.open_storage(f"sqlite:///{db}", heartbeat_interval_s=1)
    with pytest.raises(StorageError):
        studies.load_study("s", f"sqlite:///{db}")   # what `pareto --storage` and `sync --storage` do
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (db.read_bytes() if db.is_file() else None) == content


@pytest.mark.parametrize(("url", "reason"), [
    ("notaurl", "not a database URL"),
    ("nosuchdialect://host/db", "unknown database dialect"),
    ("postgresql+pg8000://user@127.0.0.1:1/db", "driver pg8000 is not installed"),
])
def test_malformed_storage_urls_are_messages(url: str, reason: str) -> None:
    with pytest.raises(StorageError, match=reason):
        studies.open_storage(url)


def test_reading_a_study_opens_it_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = studies.default_storage("ro")
    optuna.create_study(study_name="ro", storage=studies.open_storage(url))
    db = tmp_path / "runs" / "ro" / "optuna.db"
    before = db.read_bytes()
    study = studies.load_study("ro")
    assert study.study_name == "ro"
    with pytest.raises(optuna.exceptions.StorageInternalError) as info:
        study.set_user_attr("x", 1)
    assert "readonly" in str(info.value.__cause__)   # what pareto, export and sync open cannot write, even by mistake
    with pytest.raises(StudyNotFoundError):
        studies.load_study("other", url)
    assert db.read_bytes() == before


@pytest.mark.parametrize("name", ["../../x", "/abs/study", "a/b", ".hidden", "", "x" * 129, "new\nline", "q?x"])
def test_study_names_stay_one_folder_under_runs(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot be a folder under runs/"):
        studies.study_dir(name)
    with pytest.raises(ConfigError):
        studies.default_storage(name)


@pytest.mark.parametrize("name", ["llama-tiny", "it's", "my study", "v1.2_x"])
def test_ordinary_and_quoted_names_are_fine(name: str) -> None:
    assert studies.study_dir(name) == Path("runs") / name


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999999])
def test_a_seed_out_of_numpys_range_is_a_config_error(seed: int) -> None:
    with pytest.raises(ConfigError, match="--seed"):
        studies.make_sampler("tpe", seed)


def _open(name: str, storage: object, dists: dict) -> optuna.Study:
    return studies.open_study(name, storage, directions=["maximize", "minimize"],
                              objectives=["reward", "peak_reserved_gb"],
                              sampler=None, budget_gb=None, distributions=dists)


def test_a_space_that_changed_under_a_study_fails_before_any_ask(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = studies.open_storage(studies.default_storage("changed"))
    study = _open("changed", storage, {})
    float_range = optuna.distributions.FloatDistribution(0.1, 0.9)
    study.add_trial(optuna.trial.create_trial(params={"optimizer.partition.density": 0.5},
                                              distributions={"optimizer.partition.density": float_range},
                                              values=[0.5, 0.1]))
    categorical = {"optimizer.partition.density": optuna.distributions.CategoricalDistribution([0.25, 0.5])}
    with pytest.raises(ConfigError, match=r"(?s)optimizer.partition.density: was .* now .*space changed"):
        _open("changed", storage, categorical)
    narrower = {"optimizer.partition.density": optuna.distributions.FloatDistribution(0.2, 0.8)}
    _open("changed", storage, narrower)   # a narrower range of the same kind is fine for Optuna
    assert distributions(load_space(CI_TINY))   # every shipped dimension has a distribution


def test_a_new_study_will_not_overwrite_an_earlier_ones_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = tmp_path / "runs" / "lost" / "trials" / "0" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"status": "ok"}\n')
    storage = studies.open_storage(studies.default_storage("lost"))
    with pytest.raises(StorageError, match="holds the trials of an earlier study"):
        _open("lost", storage, {})
    assert result.read_text() == '{"status": "ok"}\n'
