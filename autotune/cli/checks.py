"""Checks the commands run on their options before any work starts: finite numbers, writable outputs."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import click

from autotune.errors import ConfigError


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (every comparison with nan is false, so a
    plain range lets it through, and `--timeout nan` silently meant no timeout)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number is not None and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def default_study_name(model: str) -> str:
    """A study name from a model name or path: one plain folder name under runs/."""
    return re.sub(r"[^\w.-]+", "_", model).strip("._") or "study"


def writable_dir(path: Path, what: str) -> Path:
    """Check that files can be written into `path`, or that it can be created; creates nothing.

    Raises:
        ConfigError: naming the option and the folder, before any trial or export runs.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is not a folder, so {path} cannot be written; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {existing} is not writable, so {path} cannot be written; "
                          "choose a writable folder or fix its permissions")
    return path


def writable_file(path: Path, what: str) -> Path:
    """Check that `path` can be written (its folder exists or can be made, and it is not read-only).

    Raises:
        ConfigError: naming the option and the path, before the work that would produce the file.
    """
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; give a file path")
    writable_dir(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} is read-only; choose another path or fix its permissions")
    return path
