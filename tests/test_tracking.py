"""StudyTracker against a real MLflow on the SQLite backend in a temporary folder."""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.result import TrialRecord
from autotune.tracking import (
    EXPERIMENT_KIND,
    TAG_KIND,
    TAG_NOTE,
    TAG_PARENT,
    TAG_RECOMMENDED,
    TAG_STUDY,
    TAG_TRIAL,
    StudyTracker,
    TrackingError,
    artifact_location,
    default_tracking_uri,
    run_name,
    summary_markdown,
    ui_argv,
)
from autotune.tuner.recommend import Recommendation, summary
from tests.export.study_factory import tiny_study

mlflow = pytest.importorskip("mlflow")


class _Recommendation:
    def __init__(self, record: TrialRecord):
        self.record, self.baseline, self.policy, self.reason = record, None, "max-reward", "best reward on the front"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One store per module: creating MLflow's tables takes seconds, each test uses its own study.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def _runs(uri: str, study: str) -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(study)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def _dead_uri() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fast_http_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_default_tracking_uri_is_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri() == "http://mlflow.example:5000"
    assert artifact_location("http://mlflow.example:5000", "s") is None
    assert artifact_location("sqlite:////x/runs/mlflow.db", "s") == "file:///x/runs/mlartifacts/s"


PER_GPU_TABLE = "| GPU | fits |\n|---|---|\n| A100 40 GB | yes |"


@dataclass(frozen=True)
class LoggedSearch:
    uri: str
    parent: object
    children: dict
    folder: Path


@pytest.fixture(scope="module")
def logged_search(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> LoggedSearch:
    """A whole search logged once: trial 0 has a trial folder, the others are rebuilt from records."""
    folder = tmp_path_factory.mktemp("search")
    records = tiny_study()
    trial_dir = folder / "trials" / "0"
    trial_dir.mkdir(parents=True)
    records[0].config.dump(trial_dir / "trial.yaml")
    records[0].result.save(trial_dir / "result.json")
    (trial_dir / "timeline.png").write_bytes(b"\x89PNG\r\n\x1a\nstub")
    (folder / "pareto.json").write_text(json.dumps({"front": [0, 1]}))
    records[0].config.dump(folder / "recommended.yaml")
    text = summary(Recommendation(record=records[0], baseline=records[0], policy="max-reward",
                                  reason="best reward on the front"), cost="none (no saver)")

    tracker = StudyTracker("study-a", "sqlite:///optuna.db", tracking_uri)
    tracker.start_search({"trials": 5, "sampler": "tpe", "space": {"name": "ci-tiny"}})
    for record in records:
        tracker.log_trial(record, folder / "trials" / str(record.number))
    tracker.finish_search(records, _Recommendation(records[0]), folder / "pareto.json", folder / "recommended.yaml",
                          summary=text, extra_markdown=PER_GPU_TABLE)
    tracker.close()
    assert not tracker.down

    runs = _runs(tracking_uri, "study-a")
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "search"]
    assert len(parents) == 1
    children = {int(r.data.tags[TAG_TRIAL]): r for r in runs if r.data.tags.get(TAG_KIND) == "trial"}
    return LoggedSearch(uri=tracking_uri, parent=parents[0], children=children, folder=folder)


def test_one_parent_run_with_settings_and_one_child_per_trial(logged_search: LoggedSearch) -> None:
    parent, children = logged_search.parent, logged_search.children
    assert sorted(children) == [0, 1, 2, 3, 4]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "5" and parent.data.params["space.name"] == "ci-tiny"
    assert parent.data.tags[TAG_STUDY] == "study-a" and parent.data.tags["autotune.storage"] == "sqlite:///optuna.db"
    assert all(r.data.tags[TAG_PARENT] == parent.info.run_id for r in children.values())


def test_every_run_says_where_the_objectives_came_from(logged_search: LoggedSearch) -> None:
    child = logged_search.children[0].data
    for fields in (child.params, child.tags):
        assert fields["memory_source"] == "llama-1b, planned (simulator)"
        assert fields["reward_source"] == "smollm2-135m proxy, 8 steps"
    parent = logged_search.parent.data.tags
    assert parent["recommended_memory_source"] == "llama-1b, planned (simulator)"
    assert parent["recommended_reward_source"] == "smollm2-135m proxy, 8 steps"


def test_child_run_holds_config_metrics_curve_and_tags(logged_search: LoggedSearch) -> None:
    best = logged_search.children[0].data
    assert best.metrics["peak_reserved_gb"] == pytest.approx(2.0)
    assert best.metrics["peak_allocated_gb"] == pytest.approx(1.5)
    assert best.metrics["fragmentation"] == pytest.approx(0.25)    # 1 - 1.5/2
    assert best.metrics["generation.peak_reserved_gb"] == pytest.approx(1.0)
    assert best.metrics["actor_train.peak_reserved_gb"] == pytest.approx(2.0)
    assert best.metrics["reward"] == pytest.approx(0.5) and best.metrics["step_time"] == pytest.approx(0.05)
    assert best.params["memory.zero_stage"] == "0" and best.params["model.actor"] == "llama-tiny"
    assert best.tags["status"] == "ok" and best.tags["advisor_reason"] == "baseline"
    curve = _client(logged_search.uri).get_metric_history(logged_search.children[0].info.run_id, "reward_curve")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(0, 0.0), (1, 0.25), (2, 0.5)]


def test_failed_and_prescreened_trials_are_logged_with_their_status(logged_search: LoggedSearch) -> None:
    oom, screened = logged_search.children[3], logged_search.children[4]
    assert oom.data.tags["status"] == "oom" and oom.info.status == "FAILED"
    assert oom.data.tags["message"] == "oom in actor_train" and "reward" not in oom.data.metrics
    assert screened.data.tags["status"] == "prescreened" and screened.info.status == "KILLED"


def test_trial_artifacts_come_from_the_folder_or_the_record(logged_search: LoggedSearch) -> None:
    client = _client(logged_search.uri)
    names = lambda run: {f.path for f in client.list_artifacts(run.info.run_id)}  # noqa: E731
    assert names(logged_search.children[0]) == {"trial.yaml", "result.json", "timeline.png"}
    assert names(logged_search.children[2]) == {"trial.yaml", "result.json"}   # rebuilt from the record
    local = client.download_artifacts(logged_search.children[2].info.run_id, "trial.yaml",
                                      str(logged_search.folder / "dl2"))
    assert TrialConfig.load(local) == tiny_study()[2].config


def test_parent_holds_pareto_figures_and_recommended_run_is_tagged(logged_search: LoggedSearch) -> None:
    parent, children = logged_search.parent, logged_search.children
    client = _client(logged_search.uri)
    assert {f.path for f in client.list_artifacts(parent.info.run_id)} == {
        "pareto.html", "pareto.png", "pareto.json", "recommended.yaml"}
    assert children[0].data.tags[TAG_RECOMMENDED] == "true"
    assert all(TAG_RECOMMENDED not in children[n].data.tags for n in (1, 2, 3, 4))
    assert parent.data.tags["recommended_trial"] == "0"
    download = str(logged_search.folder / "dl")
    width, height = _png_size(Path(client.download_artifacts(parent.info.run_id, "pareto.png", download)))
    assert (width, height) == (960, 660)
    html = Path(client.download_artifacts(parent.info.run_id, "pareto.html", download)).read_text()
    assert "plotly" in html[:200_000].lower() and "trial 0 (ok)" in html


def test_a_new_recommendation_moves_the_tag(tracking_uri: str) -> None:
    records = tiny_study()[:3]
    tracker = StudyTracker("study-b", "sqlite:///optuna.db", tracking_uri)
    tracker.start_search({})
    for record in records:
        tracker.log_trial(record)
    tracker.finish_search(records, _Recommendation(records[0]), None, None)
    later = StudyTracker("study-b", "sqlite:///optuna.db", tracking_uri)   # as `autotune pareto --log` does
    later.finish_search(records, _Recommendation(records[1]), None, None)
    tags = {int(r.data.tags[TAG_TRIAL]): r.data.tags.get(TAG_RECOMMENDED)
            for r in _runs(tracking_uri, "study-b") if r.data.tags.get(TAG_KIND) == "trial"}
    assert tags == {0: "false", 1: "true", 2: None}


def test_outage_warns_once_then_sync_adds_missing_runs_without_duplicates(
        tracking_uri: str, fast_http_failures: None, caplog: pytest.LogCaptureFixture) -> None:
    records = tiny_study()
    live = StudyTracker("study-c", "sqlite:///optuna.db", tracking_uri)
    live.start_search({"trials": 5})
    live.log_trial(records[0])          # the server was up for the first trial only
    live.close()

    dead = StudyTracker("study-c", "sqlite:///optuna.db", _dead_uri())
    with caplog.at_level(logging.WARNING, logger="autotune.tracking"):
        dead.start_search({"trials": 5})
        for record in records[1:]:
            dead.log_trial(record)
        dead.finish_search(records, _Recommendation(records[0]), None, None)
        dead.close()
    assert dead.down
    warnings = [r for r in caplog.records if r.name == "autotune.tracking" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "autotune sync --study study-c" in warnings[0].getMessage()

    syncer = StudyTracker("study-c", "sqlite:///optuna.db", tracking_uri)
    assert syncer.sync(records, None) == 4
    assert StudyTracker("study-c", "sqlite:///optuna.db", tracking_uri).sync(records, None) == 0
    runs = _runs(tracking_uri, "study-c")
    numbers = sorted(int(r.data.tags[TAG_TRIAL]) for r in runs if r.data.tags.get(TAG_KIND) == "trial")
    assert numbers == [0, 1, 2, 3, 4]
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "search"]
    assert len(parents) == 1   # sync files the missing trials under the search's own parent run
    assert all(r.data.tags[TAG_PARENT] == parents[0].info.run_id for r in runs if r not in parents)


def test_sync_into_an_empty_store_creates_a_parent(tracking_uri: str) -> None:
    records = tiny_study()[:2]
    assert StudyTracker("study-d", "postgresql://db/optuna", tracking_uri).sync(records, None) == 2
    runs = _runs(tracking_uri, "study-d")
    assert sum(r.data.tags.get(TAG_KIND) == "search" for r in runs) == 1
    assert sum(r.data.tags.get(TAG_KIND) == "trial" for r in runs) == 2


def test_sync_against_a_dead_server_raises_tracking_error(fast_http_failures: None) -> None:
    uri = _dead_uri()
    with pytest.raises(TrackingError, match=uri):
        StudyTracker("study-e", "sqlite:///optuna.db", uri).sync(tiny_study(), None)


def test_ui_binds_loopback_and_refuses_a_server_or_missing_store(tracking_uri: str, tmp_path: Path) -> None:
    StudyTracker("study-ui", "sqlite:///optuna.db", tracking_uri).experiment_id  # noqa: B018 - the store exists now
    argv = ui_argv(tracking_uri, port=5123)
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5123"
    assert argv[argv.index("--backend-store-uri") + 1] == tracking_uri
    with pytest.raises(ConfigError, match="already an MLflow server"):
        ui_argv("http://mlflow.example:5000")
    with pytest.raises(ConfigError, match="autotune search"):
        ui_argv(f"sqlite:///{tmp_path / 'none.db'}")


@pytest.mark.parametrize("study", ["it's", "say \"it's\"", "back\\slash"])
def test_hostile_study_names_never_duplicate_on_sync(tracking_uri: str, study: str) -> None:
    records = tiny_study()[:3]
    assert StudyTracker(study, "sqlite:///optuna.db", tracking_uri).sync(records, None) == 3
    assert StudyTracker(study, "sqlite:///optuna.db", tracking_uri).sync(records, None) == 0
    trials = [r for r in _runs(tracking_uri, study) if r.data.tags.get(TAG_KIND) == "trial"]
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in trials) == [0, 1, 2]


def test_parent_runs_of_dead_searches_end_killed(tracking_uri: str) -> None:
    import os
    import subprocess
    import sys

    from autotune import owner
    from autotune.tracking import TAG_OWNER

    client = _client(tracking_uri)
    tracker = StudyTracker("study-dead", "sqlite:///optuna.db", tracking_uri)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner.this_process().rsplit(":", 2)[0]
    owners = {"dead": f"{host}:{gone.stdout.strip()}:0", "legacy": None, "alive": owner.this_process(),
              "elsewhere": f"another-host:{os.getpid()}:0"}
    ids = {}
    for name, holder in owners.items():
        tags = {TAG_STUDY: "study-dead", TAG_KIND: "search", **({TAG_OWNER: holder} if holder else {})}
        ids[name] = client.create_run(tracker.experiment_id, tags=tags).info.run_id
    tracker.sync(tiny_study()[:1], None)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"dead": "KILLED", "legacy": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}


def test_the_outage_hint_names_the_store_to_sync_into(fast_http_failures: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    uri = _dead_uri()
    tracker = StudyTracker("study-hint", "sqlite:///runs/study-hint/optuna.db", uri)
    with caplog.at_level(logging.WARNING, logger="autotune.tracking"):
        tracker.start_search({})
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "autotune.tracking"]
    assert f"--tracking-uri {uri}" in warning and "--storage sqlite:///runs/study-hint/optuna.db" in warning


def test_sync_refuses_a_store_that_is_not_mlflows(tmp_path: Path) -> None:
    import sqlite3

    optuna_db = tmp_path / "optuna.db"
    with sqlite3.connect(optuna_db) as connection:
        connection.execute("CREATE TABLE studies (study_id INTEGER)")
    before = optuna_db.read_bytes()
    with pytest.raises(TrackingError, match="not an MLflow store"):
        StudyTracker("s", "sqlite:///x.db", f"sqlite:///{optuna_db}").sync(tiny_study()[:1], None)
    assert optuna_db.read_bytes() == before


def test_the_parent_description_holds_the_recommendation(logged_search: LoggedSearch) -> None:
    note = logged_search.parent.data.tags[TAG_NOTE]
    run_id = logged_search.parent.info.run_id
    assert note.startswith("### Recommended: trial #0 (baseline), policy max-reward")
    assert "- **sources**: memory: llama-1b, planned (simulator); reward: smollm2-135m proxy, 8 steps" in note
    assert "- **peak reserved**: 2 GiB (baseline 2 GiB, +0%; 1.00x)" in note      # the gain over the baseline
    assert "- **step time by phase**: none (no saver)" in note                       # and what it costs
    assert "- **why**: best reward on the front" in note
    assert PER_GPU_TABLE in note
    assert f"](get-artifact?path=pareto.png&run_uuid={run_id})" in note              # link and image
    assert f"#/experiments/{logged_search.parent.info.experiment_id}/runs/{run_id}/artifacts" in note


def test_without_a_summary_the_description_still_says_what_won_and_why(tracking_uri: str) -> None:
    records = tiny_study()[:3]
    tracker = StudyTracker("study-note", "sqlite:///optuna.db", tracking_uri)
    tracker.start_search({})
    tracker.finish_search(records, _Recommendation(records[1]), None, None)   # as `autotune pareto --log`
    tracker.close()
    (parent,) = [r for r in _runs(tracking_uri, "study-note") if r.data.tags.get(TAG_KIND) == "search"]
    note = parent.data.tags[TAG_NOTE]
    assert note.startswith("### Recommended: trial #1 (empty_cache after generation), policy max-reward")
    assert "- **why**: best reward on the front" in note and "pareto.png" in note


def test_summary_markdown_lists_each_figure() -> None:
    text = ("Recommended: trial #3 (sampled), policy min-memory\n  reward          0.5 (baseline 0.4)\n"
            "  why: lowest peak")
    assert summary_markdown(text) == ("### Recommended: trial #3 (sampled), policy min-memory\n\n"
                                      "- **reward**: 0.5 (baseline 0.4)\n- **why**: lowest peak")


def test_the_experiment_is_marked_for_model_development(logged_search: LoggedSearch, tracking_uri: str,
                                                         tmp_path: Path) -> None:
    client = _client(tracking_uri)
    ((key, value),) = EXPERIMENT_KIND.items()
    assert (key, value) == ("mlflow.experimentKind", "custom_model_development")
    assert client.get_experiment(logged_search.parent.info.experiment_id).tags[key] == value
    # as an autotune before the tag made it
    older = client.create_experiment("study-older", artifact_location=tmp_path.as_uri())
    StudyTracker("study-older", "sqlite:///optuna.db", tracking_uri).sync(tiny_study()[:1], None)
    assert client.get_experiment(older).tags[key] == value


def test_child_run_names_carry_the_knobs(logged_search: LoggedSearch) -> None:
    records = tiny_study()
    for number, child in logged_search.children.items():
        assert child.info.run_name == run_name(records[number])
    assert logged_search.children[0].info.run_name == "#0 adamw"          # the baseline: nothing changed
    assert logged_search.children[1].info.run_name == "#1 adamw zero1"
    config = TrialConfig().replace(**{
        "optimizer.name": "frugal", "optimizer.critic": "frugal", "optimizer.partition.density": 0.25,
        "memory.actor_gradient_checkpointing": True, "memory.critic_gradient_checkpointing": True,
        "memory.offload_reference": True})
    assert run_name(dataclasses.replace(records[0], number=9, config=config)) == "#9 frugal0.25+critic ckpt offload-ref"
    config = TrialConfig().replace(**{
        "optimizer.critic": "frugal", "optimizer.partition.placement": "top",
        "memory.actor_gradient_checkpointing": True,
        "memory.empty_cache_after": ("generation", "actor_train"), "memory.allocator.max_split_size_mb": 64})
    assert run_name(dataclasses.replace(records[0], number=2, config=config)) == (
        "#2 adamw critic-frugal0.25-top ckpt-actor empty-cache:generation,actor_train max_split_size_mb=64")


def test_a_search_logs_one_progress_step_per_finished_trial(tracking_uri: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.tuner.controller import SearchSettings, run_search
    from tests.tuner.tuner_helpers import BUDGET_GB, ci_space, fake_launcher

    monkeypatch.chdir(tmp_path)
    n = 4
    outcome = run_search(SearchSettings(study="study-progress", space=ci_space(), n_trials=n, budget_gb=BUDGET_GB,
                                        seed=0, heartbeat_interval_s=1, launcher=fake_launcher(),
                                        tracking_uri=tracking_uri))
    runs = _runs(tracking_uri, "study-progress")
    (parent,) = [r for r in runs if r.data.tags.get(TAG_KIND) == "search"]
    client = _client(tracking_uri)
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(parent.info.run_id, key))
               for key in ("front_size", "hypervolume_share", "best_feasible_reward", "lowest_feasible_peak_gb")}
    assert [step for step, _ in history["front_size"]] == list(range(1, n + 1))
    assert [step for step, _ in history["hypervolume_share"]] == list(range(1, n + 1))
    assert all(0.0 <= share <= 1.0 for _, share in history["hypervolume_share"])
    feasible = [r for r in sorted(outcome.records, key=lambda r: r.number) if r.feasible and r.result.ok]
    assert feasible, "the fake trials should give a feasible trial within the budget"
    assert history["best_feasible_reward"][-1][1] == pytest.approx(max(r.result.reward for r in feasible))
    assert history["lowest_feasible_peak_gb"][-1][1] == pytest.approx(
        min(r.result.memory.peak_reserved_gb for r in feasible))
    # the description is the summary `search` prints, with the step-time cost
    rec = outcome.recommendation
    assert parent.data.tags[TAG_NOTE].startswith(f"### Recommended: trial #{rec.record.number} ")
    assert "**step time by phase**" in parent.data.tags[TAG_NOTE]
