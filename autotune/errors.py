"""The one home of autotune's exceptions.

The CLI turns any `AutotuneError` into a message and exit code 1; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations


class AutotuneError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class ConfigError(AutotuneError, ValueError):
    """A config, search space or CLI value is wrong. Carries every problem found, with key paths."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            super().__init__(head + self.problems[0])
        else:
            super().__init__(head + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ModelNotFoundError(ConfigError):
    """A model name is neither a preset nor an existing local path."""


class TrialOOM(AutotuneError):
    """A trial ran out of (real or simulated) device memory in `phase`."""

    def __init__(self, message: str, *, phase: str | None = None):
        super().__init__(message)
        self.phase = phase


class TrialFailed(AutotuneError):
    """A trial subprocess crashed, timed out or wrote no result."""


class StudyNotFoundError(AutotuneError):
    """No study of that name in the storage searched."""


class StorageError(AutotuneError):
    """A study's storage (--storage, runs/<study>/) cannot be used as it is: malformed, or not a study's."""


class NoFeasibleTrialError(AutotuneError):
    """A study has no feasible completed trial to recommend or export."""


class ExportError(AutotuneError):
    """A config cannot be exported to the requested format."""


class TrackingError(AutotuneError):
    """The MLflow tracking server or store cannot be used (raised by `sync` and `ui`, never mid-search)."""
