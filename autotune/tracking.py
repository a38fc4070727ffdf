"""MLflow tracking of a study: one experiment per study, one parent run per search, one child per trial.

The embedded default is `sqlite:///runs/mlflow.db` (MLflow 3 refuses the plain file store), with
artifacts in `runs/mlartifacts/<study>`; `--tracking-uri` or `MLFLOW_TRACKING_URI` points at a real server.

MLflow must never make a study fail: `start_search`, `log_trial`, `finish_search` and `close` log one
warning on the first tracking error and then stand down for the rest of the search. `sync` logs what
is missing afterwards; child runs carry the study name and trial number as tags, so it never logs a
trial twice.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from autotune import owner
from autotune.config import MemoryConfig, PartitionSpec, TrialConfig, flatten
from autotune.errors import ConfigError, TrackingError
from autotune.pareto_plot import write_pareto_figures
from autotune.result import TrialRecord

logger = logging.getLogger(__name__)

TAG_STUDY = "autotune.study"
TAG_STORAGE = "autotune.storage"
TAG_KIND = "autotune.kind"                # "search" (parent) or "trial" (child)
TAG_TRIAL = "autotune.trial_number"
TAG_STATUS = "status"
TAG_REASON = "advisor_reason"
TAG_RECOMMENDED = "recommended"
TAG_PARENT = "mlflow.parentRunId"         # what makes the MLflow UI nest a run under another
TAG_OWNER = "autotune.owner"              # the process that holds a parent run open (autotune.owner)
TAG_NOTE = "mlflow.note.content"          # a run's description: markdown on the run's Overview
# Marks the experiment as model development (MLflow 3's ExperimentKind CUSTOM_MODEL_DEVELOPMENT), not
# GenAI. The UI of MLflow 3.17 reads the mode from its workflowType (URL or browser storage) first,
# so the links autotune prints also carry workflowType=machine_learning (see experiment_url).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = {TAG_EXPERIMENT_KIND: "custom_model_development"}
UI_MODE = "workflowType=machine_learning"
PARETO_FIGURE = "pareto.png"             # the parent's figure, as write_pareto_figures names it
TRIAL_FILES = ("trial.yaml", "result.json", "timeline.png")
# A trial that never ran (prescreened) is KILLED, a crashed one FAILED; both stay visible in the UI.
_RUN_STATUS = {"ok": "FINISHED", "prescreened": "KILLED"}
_MAX_PARAMS_PER_BATCH = 100               # MLflow's log_batch limit
_HEALTH_TIMEOUT_S = 3.0
_MLFLOW_TABLES = {"experiments", "runs", "tags"}

T = TypeVar("T")


class RecommendationLike(Protocol):
    """What the tracker reads from `autotune.tuner.recommend.Recommendation` (tuner imports us, not back)."""

    record: TrialRecord
    policy: str
    reason: str


# Short labels for the memory knobs a child run's name lists (see run_name); a knob not here is
# named by its key and value.
_KNOB_LABELS = {
    "offload_reference": "offload-ref", "offload_reward": "offload-rm", "offload_optimizer": "offload-opt",
    "static_kv_cache": "static-kv", "allocator.expandable_segments": "expandable",
}


def knob_labels(config: TrialConfig) -> list[str]:
    """The config's optimizer and memory knobs that differ from the defaults, as short labels.

    e.g. ["frugal0.25+critic", "ckpt", "offload-ref"]; ["adamw"] for the plain AdamW baseline.
    """
    opt = config.optimizer
    part = opt.partition
    frugal = f"frugal{part.density:g}" + (f"-{part.placement}" if part.placement != PartitionSpec().placement else "")
    if opt.name == "frugal":
        labels = [frugal + ("+critic" if opt.critic == "frugal" else "")]
    else:
        labels = ["adamw"] + ([f"critic-{frugal}"] if opt.critic == "frugal" else [])
    memory, default = flatten(config.memory), flatten(MemoryConfig())
    changed = {key: value for key, value in memory.items() if value != default.get(key)}
    actor, critic = (changed.pop(f"{m}_gradient_checkpointing", False) for m in ("actor", "critic"))
    if actor or critic:   # both models: the usual pairing, one short word
        labels.append("ckpt" if actor and critic else "ckpt-actor" if actor else "ckpt-critic")
    for key, value in changed.items():
        if key == "empty_cache_after":
            labels.append("empty-cache:" + ",".join(str(phase) for phase in value))  # type: ignore[attr-defined]
        elif key == "zero_stage":
            labels.append(f"zero{value}")
        elif value is True and key in _KNOB_LABELS:
            labels.append(_KNOB_LABELS[key])
        else:
            labels.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return labels


def run_name(record: TrialRecord) -> str:
    """A child run's name that says what the trial was, e.g. "#9 frugal0.25+critic ckpt offload-ref"."""
    return " ".join([f"#{record.number}", *knob_labels(record.config)])


def summary_markdown(text: str) -> str:
    """The tuner's plain-text summary as markdown: the first line a heading, "  key   value" lines a list.

    The summary aligns its figures in columns for a terminal; markdown collapses the spaces, so each
    figure becomes a "**key**: value" item instead. Other lines are kept as they are.
    """
    lines = text.strip("\n").splitlines()
    if not lines:
        return ""
    out = [f"### {lines[0].strip()}", ""]
    for line in lines[1:]:
        item = re.match(r"^\s+(?:([a-z][\w-]*(?: [\w-]+)*):\s+|([a-z][\w-]*(?: [\w-]+)*)\s{2,})(\S.*)$", line)
        if item:
            out.append(f"- **{item.group(1) or item.group(2)}**: {item.group(3)}")
        elif line.startswith(" "):
            out.append(f"- {line.strip()}")
        else:
            out += ["", line]
    return "\n".join(out)


def parent_description(*, study_name: str, recommendation: RecommendationLike | None, summary: str | None,
                       extra_markdown: str | None, run_id: str, experiment_id: str, n_trials: int) -> str:
    """The parent run's description (markdown): the recommendation, then the Pareto figure.

    Args:
        summary: the tuner's summary text (autotune.tuner.recommend.summary); None builds a shorter
            one from `recommendation` (e.g. `autotune pareto --log`, which has no step-time cost).
        extra_markdown: a block shown after the summary as it is, e.g. a per-GPU table.
        run_id, experiment_id: the parent run's, for links to its figure and artifacts. The links
            are relative to the UI, so they work behind any host and port.
    """
    if summary:
        parts = [summary_markdown(summary)]
    elif recommendation is not None:
        rec = recommendation.record
        lines = [f"Recommended: trial #{rec.number} ({rec.advisor_reason or 'sampled'}), "
                 f"policy {recommendation.policy}"]
        lines += [f"  {key.removesuffix('_source')} source: {value}" for key, value in source_fields(rec).items()
                  if key != "reward_key"]
        lines.append(f"  why: {recommendation.reason}")
        parts = [summary_markdown("\n".join(lines))]
    else:
        parts = [f"### No recommendation\n\nNo feasible trial among the {n_trials} trials of {study_name}."]
    if extra_markdown:
        parts.append(extra_markdown.strip("\n"))
    figure = f"get-artifact?path={PARETO_FIGURE}&run_uuid={run_id}"
    artifacts = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts?{UI_MODE}"
    parts.append(f"**Pareto front** of {n_trials} trials: [the figure]({figure}) · "
                 f"[all artifacts]({artifacts}) (pareto.html to zoom, pareto.json, recommended.yaml)\n\n"
                 f"![Pareto front: reward against peak reserved memory]({figure})")
    return "\n\n".join(parts) + "\n"


def default_tracking_uri(runs_dir: str | Path = "runs") -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store `sqlite:///runs/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs_dir) / 'mlflow.db'}"


def artifact_location(tracking_uri: str, study_name: str) -> str | None:
    """Where an embedded store keeps a study's artifacts: `mlartifacts/<study>` next to the SQLite file.

    None for a server, which decides itself (it may proxy artifacts to object storage).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / study_name).resolve().as_uri()


def trial_metrics(record: TrialRecord) -> dict[str, float]:
    """Final metrics of one trial: whole-run and per-phase memory, reward, step time, objectives."""
    res = record.result
    out: dict[str, float | None] = {"reward": res.reward, "reward_se": res.reward_se,
                                    "initial_reward": res.initial_reward,
                                    "step_time": res.step_time_s, "wall_time_s": res.wall_time_s}
    if res.memory is not None:
        mem = res.memory
        out.update(peak_reserved_gb=mem.peak_reserved_gb, peak_allocated_gb=mem.peak_allocated_gb,
                   fragmentation=mem.fragmentation, num_alloc_retries=mem.num_alloc_retries)
        for phase in mem.phases:
            out[f"{phase.name}.peak_reserved_gb"] = phase.peak_reserved_gb
            out[f"{phase.name}.peak_allocated_gb"] = phase.peak_allocated_bytes / (1 << 30)
            out[f"{phase.name}.fragmentation"] = phase.fragmentation
    out.update({f"objective.{name}": value for name, value in record.objectives.items()})
    return {key: float(value) for key, value in out.items() if value is not None}


def trial_tags(study_name: str, record: TrialRecord) -> dict[str, str]:
    """Tags of a child run; study name and trial number are what `sync` looks trials up by."""
    res = record.result
    tags = {TAG_STUDY: study_name, TAG_KIND: "trial", TAG_TRIAL: str(record.number), TAG_STATUS: res.status,
            "feasible": str(record.feasible).lower(), "backend": res.backend, "config_hash": res.config_hash}
    if record.advisor_reason:
        tags[TAG_REASON] = record.advisor_reason
    if res.failed_phase:
        tags["failed_phase"] = res.failed_phase
    if res.message:
        tags["message"] = res.message[:5000]   # MLflow caps tag values; the full text is in result.json
    tags.update(source_fields(record))
    return tags


def source_fields(record: TrialRecord) -> dict[str, str]:
    """Where the trial's objectives came from, e.g. memory_source "llama-1b, planned (simulator)";
    logged both as tags (to filter runs by) and params (shown beside the config)."""
    res = record.result
    fields = {"memory_source": res.memory_source, "reward_source": res.reward_source, "reward_key": res.reward_key}
    return {key: value for key, value in fields.items() if value}


def _tracking_errors() -> tuple[type[BaseException], ...]:
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    # SQLAlchemy's: a store MLflow itself cannot open (e.g. a half-migrated one)
    return (MlflowException, OSError, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, TrackingError)


def _never_raises(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run a tracker method; on a tracking error warn once, then skip tracking for this tracker."""

    @functools.wraps(method)
    def wrapper(self: StudyTracker, *args: Any, **kwargs: Any) -> T | None:
        if self.down:
            logger.debug("MLflow is down; skipping %s", method.__name__)
            return None
        try:
            return method(self, *args, **kwargs)
        except _tracking_errors() as exc:
            self.down = True
            logger.warning("MLflow tracking at %s failed (%s); the study goes on without it. Log the missing "
                           "trials later with `%s`.", self.tracking_uri, exc, self.sync_command())
            logger.debug("tracking failure", exc_info=True)
            return None

    return wrapper


class StudyTracker:
    """Logs one study to MLflow. Safe to use when the server is down (see the module docstring).

    Args:
        study_name: the Optuna study; also the MLflow experiment's name.
        storage_url: the Optuna storage, recorded as a tag so a run leads back to its study.
        tracking_uri: MLflow tracking URI; None means `default_tracking_uri()`.
    """

    def __init__(self, study_name: str, storage_url: str, tracking_uri: str | None = None) -> None:
        self.study_name = study_name
        self.storage_url = storage_url
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.down = False
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._owns_parent = False

    def sync_command(self) -> str:
        """The `autotune sync` line that logs this study's missing trials into this same store."""
        return " ".join(["autotune sync", "--study", shlex.quote(self.study_name),
                         "--storage", shlex.quote(self.storage_url), "--tracking-uri", shlex.quote(self.tracking_uri)])

    # -- public API: never raises (except sync) ------------------------------------------------
    @_never_raises
    def start_search(self, settings: dict[str, object]) -> None:
        """Open this search's parent run with the study settings as params (ending dead ones first)."""
        self.end_dead_parents()
        self._parent_id = self._create_parent("search", settings)
        self._owns_parent = True

    @_never_raises
    def log_trial(self, record: TrialRecord, trial_dir: Path | None = None) -> None:
        """Log one finished trial (any status) as a child run of the search."""
        self._log_trial(self._parent(), record, trial_dir)

    @_never_raises
    def log_progress(self, step: int, metrics: dict[str, float]) -> None:
        """Log the search's progress on the parent run at `step` (the number of finished trials).

        `metrics` comes from autotune.tuner.convergence.progress_metrics; MLflow charts each one
        against the step, so the parent's chart view shows the search converging.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._connect().log_batch(self._parent(), metrics=[Metric(key, float(value), now, step)
                                                           for key, value in metrics.items()])

    @_never_raises
    def finish_search(self, records: list[TrialRecord], recommendation: RecommendationLike | None,
                      pareto_json: Path | None, recommended_yaml: Path | None, *, summary: str | None = None,
                      extra_markdown: str | None = None) -> None:
        """Put the Pareto figure, pareto.json and recommended.yaml on the parent run; tag the recommended run;
        write the parent's description (see parent_description for `summary` and `extra_markdown`)."""
        parent = self._parent()
        client = self._connect()
        number = recommendation.record.number if recommendation is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_pareto_figures(records, tmp, recommended=number,
                                             title=f"{self.study_name}: reward against peak reserved memory"):
                client.log_artifact(parent, str(path))
        for written in (pareto_json, recommended_yaml):
            if written is not None and Path(written).is_file():
                client.log_artifact(parent, str(written))
        if recommendation is not None:
            self._tag_recommended(parent, recommendation)
        client.set_tag(parent, TAG_NOTE, parent_description(
            study_name=self.study_name, recommendation=recommendation, summary=summary,
            extra_markdown=extra_markdown, run_id=parent, experiment_id=self.experiment_id, n_trials=len(records)))

    @_never_raises
    def close(self, status: str = "FINISHED") -> None:
        """End the parent run this tracker started, as `status` (FINISHED, KILLED or FAILED)."""
        if self._owns_parent and self._parent_id is not None:
            self._connect().set_terminated(self._parent_id, status)
            self._owns_parent = False

    def end_dead_parents(self) -> int:
        """Mark KILLED the study's parent runs still RUNNING whose process is gone (kill -9, a crash).

        A run with no owner tag predates the tag, and counts as gone; an owner on another host is
        left alone (it may be a live worker). Returns how many runs were ended.
        """
        client = self._connect()
        ended = 0
        for run in self._search(f"tags.`{TAG_KIND}` = 'search' AND attributes.status = 'RUNNING'"):
            holder = run.data.tags.get(TAG_OWNER)
            if holder is None or owner.is_dead(holder):
                client.set_terminated(run.info.run_id, "KILLED")
                ended += 1
        if ended:
            logger.info("ended %d parent run(s) of %s left RUNNING by a dead search", ended, self.study_name)
        return ended

    def sync(self, records: list[TrialRecord], trials_root: Path | None) -> int:
        """Log the trials that MLflow does not have yet; return how many were added.

        Args:
            records: every trial of the study, as read from the Optuna storage.
            trials_root: `runs/<study>/trials`, holding `<number>/{trial.yaml,result.json,timeline.png}`.

        Raises:
            TrackingError: the tracking server or store cannot be reached.
        """
        try:
            self.end_dead_parents()
            logged = self.logged_trial_numbers()
            missing = [r for r in records if r.number not in logged]
            if missing:
                parent = self._parent()
                for record in missing:
                    trial_dir = trials_root / str(record.number) if trials_root is not None else None
                    self._log_trial(parent, record, trial_dir)
            self.close()
        except _tracking_errors() as exc:
            raise TrackingError(f"cannot sync study {self.study_name!r} to MLflow at {self.tracking_uri}: "
                                f"{exc}") from exc
        logger.info("synced %d of %d trials of %s to %s", len(missing), len(records), self.study_name,
                    self.tracking_uri)
        return len(missing)

    def logged_trial_numbers(self) -> set[int]:
        """Trial numbers that already have a child run in this study's experiment."""
        runs = self._search(f"tags.`{TAG_KIND}` = 'trial'")
        return {int(run.data.tags[TAG_TRIAL]) for run in runs if TAG_TRIAL in run.data.tags}

    @property
    def experiment_id(self) -> str:
        """The study's experiment, created (with its artifact location) on first use."""
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            client = self._connect()
            found = client.get_experiment_by_name(self.study_name)
            if found is not None:
                self._experiment_id = found.experiment_id
                if found.tags.get(TAG_EXPERIMENT_KIND) is None:   # made by an autotune without the tag
                    client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND,
                                              EXPERIMENT_KIND[TAG_EXPERIMENT_KIND])
                return self._experiment_id
            try:
                self._experiment_id = client.create_experiment(
                    self.study_name, artifact_location=artifact_location(self.tracking_uri, self.study_name),
                    tags={TAG_STUDY: self.study_name, TAG_STORAGE: self.storage_url, **EXPERIMENT_KIND})
            except MlflowException as exc:
                # Another worker of the same study created it first.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                self._experiment_id = client.get_experiment_by_name(self.study_name).experiment_id
        return self._experiment_id

    # -- internals -----------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            # MLflow gives its own logger an INFO handler (table creation, migrations); autotune's -v
            # decides what the user sees, as it does for Optuna.
            logging.getLogger("mlflow").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.WARNING))
            if self.tracking_uri.startswith("sqlite:///"):
                path = Path(self.tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
                _check_mlflow_file(path, self.tracking_uri)
                path.parent.mkdir(parents=True, exist_ok=True)
                _create_store(path)
            elif self.tracking_uri.startswith(("http://", "https://")):
                _check_reachable(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _search(self, condition: str, *, order_by: list[str] | None = None, limit: int | None = None) -> list[Any]:
        """Runs of this study matching `condition`, every page of them (or the first `limit`)."""
        client = self._connect()
        literal = _quote(self.study_name)
        where = f"tags.`{TAG_STUDY}` = {literal} AND {condition}" if literal is not None else condition
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs([self.experiment_id], where, max_results=limit or 1000,
                                      order_by=order_by, page_token=token)
            # the filter may have left the name out (see _quote); the tag decides
            runs.extend(run for run in page if run.data.tags.get(TAG_STUDY) == self.study_name)
            token = page.token
            if not token or (limit is not None and len(runs) >= limit):
                return runs

    def _parent(self) -> str:
        """This search's parent run; without start_search (sync, `pareto --log`) the latest one, or a new one."""
        if self._parent_id is None:
            latest = self._search(f"tags.`{TAG_KIND}` = 'search'", order_by=["attributes.start_time DESC"], limit=1)
            if latest:
                self._parent_id = latest[0].info.run_id
            else:
                self._parent_id = self._create_parent("sync", {})
                self._owns_parent = True
        return self._parent_id

    def _create_parent(self, name: str, settings: dict[str, object]) -> str:
        client = self._connect()
        tags = {TAG_STUDY: self.study_name, TAG_STORAGE: self.storage_url, TAG_KIND: "search",
                TAG_OWNER: owner.this_process()}
        run = client.create_run(self.experiment_id, tags=tags, run_name=f"{self.study_name}-{name}")
        _log_params(client, run.info.run_id, flatten(settings) if settings else {})
        return run.info.run_id

    def _log_trial(self, parent: str, record: TrialRecord, trial_dir: Path | None) -> None:
        from mlflow.entities import Metric

        client = self._connect()
        tags = {**trial_tags(self.study_name, record), TAG_PARENT: parent}
        run_id = client.create_run(self.experiment_id, tags=tags, run_name=run_name(record)).info.run_id
        _log_params(client, run_id, {**flatten(record.config), **source_fields(record)})
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in trial_metrics(record).items()]
        # The curve is a stepped metric, so MLflow's chart view draws it per RLHF step.
        metrics += [Metric("reward_curve", value, now, step) for step, value in enumerate(record.result.reward_curve)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        _log_trial_files(client, run_id, record, trial_dir)
        client.set_terminated(run_id, _RUN_STATUS.get(record.result.status, "FAILED"))
        logger.debug("logged trial %d of %s as run %s", record.number, self.study_name, run_id)

    def _tag_recommended(self, parent: str, recommendation: RecommendationLike) -> None:
        """Tag the recommended trial's run `recommended=true`, and clear the tag from an earlier pick."""
        client = self._connect()
        number = recommendation.record.number
        for run in self._search(f"tags.`{TAG_RECOMMENDED}` = 'true'"):
            if run.data.tags.get(TAG_TRIAL) != str(number):
                client.set_tag(run.info.run_id, TAG_RECOMMENDED, "false")
        runs = self._search(f"tags.`{TAG_TRIAL}` = '{number}' AND tags.`{TAG_KIND}` = 'trial'")
        for run in runs:
            client.set_tag(run.info.run_id, TAG_RECOMMENDED, "true")
        if not runs:
            logger.warning("recommended trial %d has no MLflow run yet; run `autotune sync --study %s` and "
                           "`autotune pareto --study %s --log`", number, self.study_name, self.study_name)
        sources = {f"recommended_{key}": value for key, value in source_fields(recommendation.record).items()}
        for key, value in (("recommended_trial", str(number)), ("recommendation_policy", recommendation.policy),
                           ("recommendation_reason", recommendation.reason), *sources.items()):
            client.set_tag(parent, key, value)


def _log_params(client: Any, run_id: str, params: dict[str, object]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + _MAX_PARAMS_PER_BATCH])


def _log_trial_files(client: Any, run_id: str, record: TrialRecord, trial_dir: Path | None) -> None:
    """The trial folder's files; trial.yaml and result.json are rebuilt from the record when absent."""
    present = {name for name in TRIAL_FILES if trial_dir is not None and (trial_dir / name).is_file()}
    for name in sorted(present):
        client.log_artifact(run_id, str(trial_dir / name))  # type: ignore[operator]
    if "trial.yaml" not in present:
        client.log_text(run_id, record.config.dump(), "trial.yaml")
    if "result.json" not in present:
        from autotune import schema

        client.log_text(run_id, schema.dump_json(record.result) + "\n", "result.json")


def _check_reachable(uri: str) -> None:
    """Fail fast on a dead server instead of waiting out MLflow's HTTP retries (minutes by default).

    Raises:
        requests.ConnectionError: nothing answers at `uri`. Any HTTP answer counts as reachable.
    """
    import requests

    requests.get(uri.rstrip("/") + "/health", timeout=_HEALTH_TIMEOUT_S)


def _quote(value: str) -> str | None:
    """`value` as a string literal of MLflow's filter syntax, or None where it has none.

    MLflow strips the outer quotes of a literal and does not unescape inside, so `'it\\'s'` is
    compared as `it\\'s`. A value with a single quote goes in double quotes; one with both kinds,
    or a backslash (which could escape the closing quote), cannot be written, and the caller
    filters on the tag itself.
    """
    if "\\" in value:
        return None
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _create_store(path: Path) -> None:
    """Create a new SQLite MLflow store whole or not at all.

    MLflow builds its tables in many steps; a process killed half-way left a store that MLflow
    itself then refuses ("index ... already exists"). So a new store is built in a side file and
    linked into place, which fails harmlessly when another worker got there first.
    """
    from mlflow import MlflowClient

    if path.exists() and path.stat().st_size > 0:
        return
    side = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{side}").search_experiments(max_results=1)
        if path.exists():   # an empty file: nothing to lose
            os.replace(side, path)
        else:
            os.link(side, path)
    except FileExistsError:
        pass
    finally:
        side.unlink(missing_ok=True)


def _check_mlflow_file(path: Path, uri: str) -> None:
    """Refuse a SQLite file that holds something other than an MLflow store (e.g. an optuna.db).

    Raises:
        TrackingError: naming the file and what it holds.
    """
    import sqlite3

    if path.is_dir():   # checked here, once: MLflow itself retries a folder for about 100 s
        raise TrackingError(f"--tracking-uri {uri}: {path} is a folder, not an MLflow store file")
    if not path.is_file() or path.stat().st_size == 0:
        return   # MLflow creates its tables in a new or empty file; nothing to lose
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=60)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise TrackingError(f"--tracking-uri {uri}: {path} is not a SQLite database ({exc})") from None
    if tables and not _MLFLOW_TABLES <= tables:
        raise TrackingError(f"--tracking-uri {uri}: {path} is not an MLflow store (it holds "
                            f"{', '.join(sorted(tables)[:5])}); autotune will not add MLflow's tables to it. "
                            "Pass the MLflow store, e.g. sqlite:///runs/mlflow.db")


def ui_argv(tracking_uri: str, *, port: int = 5000) -> list[str]:
    """The `mlflow ui` command line for an embedded store, bound to loopback only.

    Raises:
        ConfigError: `tracking_uri` is already a server (http/https), or names a SQLite file that does
            not exist yet.
    """
    if tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"{tracking_uri} is already an MLflow server: open it in a browser")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {tracking_uri}: run `autotune search` first, or pass --tracking-uri")
    # One worker: a local UI serves one person, and MLflow's default of four is heavy on a laptop.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def require_experiment(tracking_uri: str, study_name: str) -> None:
    """Fail when the store has no experiment for `study_name` (a typo would open an empty UI).

    Raises:
        TrackingError: naming the study and the store.
    """
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(study_name) is None:
        raise TrackingError(f"no study {study_name!r} in the MLflow store {tracking_uri}: check the name, or log it "
                            f"with `autotune sync --study {shlex.quote(study_name)}`")


def experiment_url(tracking_uri: str, study_name: str, base_url: str) -> str:
    """The UI address of the study's experiment, or the UI's front page when it has none yet."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(study_name)
    if found is None:
        return base_url
    # MLflow 3's UI opens in its GenAI view by default; ask for the runs table of "Model training".
    return f"{base_url}/#/experiments/{found.experiment_id}/runs?{UI_MODE}"
