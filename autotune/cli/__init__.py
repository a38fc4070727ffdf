"""The `autotune` command line. Thin: parse options, make one library call, report.

Each command lives in a small module of this package and imports torch, transformers, optuna,
mlflow or deepspeed inside its body, so `autotune --help` stays fast. `sys.exit` lives only here.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from autotune import __version__
from autotune.errors import AutotuneError

_debug = os.environ.get("AUTOTUNE_DEBUG") == "1"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="autotune")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(verbose: int, debug: bool) -> None:
    """Find the memory configuration for RLHF fine-tuning of a language model.

    \b
    Typical session:
      autotune plan   --model llama-1b                  # predicted per-phase GPU memory, no GPU needed
      autotune search --model llama-tiny --trials 12    # Optuna study of FRUGAL partitions x memory interventions
      autotune pareto --study NAME                      # the memory/reward front
      autotune export --study NAME --format deepspeed   # carry the winner to your training stack
    """
    global _debug
    _debug = _debug or debug
    # A trial loads four models, each with its own "Loading weights" bar from a local file in a
    # fraction of a second: the bars bury autotune's own progress lines and say nothing. Set before
    # transformers is imported (it reads this once); the trials' subprocesses inherit it. A user's own
    # setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _register() -> None:
    from autotune.cli import export_cmds, reward_cmds, search_cmds, tracking_cmds, trial_cmds

    for module in (trial_cmds, reward_cmds, search_cmds, tracking_cmds, export_cmds):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: an error is one line and exit code 1, never a traceback (unless --debug)."""
    try:
        cli.main(args=argv, prog_name="autotune", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        _exit_interrupted()
    except click.UsageError as exc:   # one line, like every other error
        command = exc.ctx.command_path if exc.ctx is not None else "autotune"
        click.secho(f"error: {exc.format_message()} (see `{command} --help`)", fg="red", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        _exit_interrupted()
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes a message
        _report(exc)
        sys.exit(1)
    finally:
        if argv is None:   # the program itself, not a caller in Python
            _ignore_late_stops()


def _ignore_late_stops() -> None:
    """The command's work is done (or abandoned) and reported: a Ctrl-C or SIGTERM that arrives while
    Python shuts down changes nothing, so it must not turn a finished run into a death by signal."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _exit_interrupted() -> None:
    """Exit 130 after a handled Ctrl-C or SIGTERM.

    CPython 3.11 notes a KeyboardInterrupt that escapes code run through exec() of a string (as
    dataclasses and namedtuple do while a module imports) and, at exit, kills the process with
    SIGINT even when the interrupt was handled. Evaluating any string resets that note.
    """
    exec("pass")  # noqa: S102 - resets CPython's unhandled-KeyboardInterrupt flag; see the docstring
    sys.exit(130)


def _report(exc: Exception) -> None:
    """An AutotuneError says what to do; an OSError names the file; anything else is a bug."""
    if _debug:
        traceback.print_exception(exc)
    if isinstance(exc, AutotuneError):
        message = str(exc)
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    else:
        message = f"internal error, {type(exc).__name__}: {exc}"
    hint = "" if _debug or isinstance(exc, AutotuneError) else " (rerun with --debug for the traceback)"
    click.secho(f"error: {message}{hint}", fg="red", err=True)
