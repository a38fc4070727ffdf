"""Which process owns a running trial or MLflow run, and whether that process still lives.

An owner is written as "host:pid:start" (start: the process start time in clock ticks since boot,
from /proc, or 0 where there is no /proc), so that a resumed search can tell a trial whose
controller died (kill -9, a crash, a reboot) from one that another live worker is running, and a
recycled pid from the original process. Only owners on this host can be judged; others count as alive
(their heartbeats decide).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


def this_process() -> str:
    """This process as an owner string."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def is_dead(owner: str) -> bool:
    """True when `owner` ran on this host and that process has exited (or its pid was reused)."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return False
    host, pid, start = parts[0], int(parts[1]), int(parts[2])
    if host != socket.gethostname():
        return False
    return not pid_alive(pid) or (start != 0 and _start_ticks(pid) not in (0, start))


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) != "Z"


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[-1].split()   # the command name in parentheses may hold spaces


def _state(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[0] if fields else "?"


def _start_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else 0
