"""Writing the product's files: whole or not at all, and never through a symbolic link inside runs/.

Every file autotune writes goes through here. A file is written to a temporary name in its own
folder and renamed over the path, so a reader sees the old file or the whole new one, and a path
that is a symbolic link is replaced by the file rather than followed. A folder under `runs/` that is
itself a link is refused: following it would put a study's files (and overwrite others') outside
`runs/`. The `runs/` folder itself may be a link, e.g. to a larger disk.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from autotune.errors import StorageError

RUNS = "runs"


def check_no_link(path: str | Path) -> Path:
    """Refuse a path whose folders below a `runs/` folder include a symbolic link.

    Raises:
        StorageError: naming the link, before anything is written through it.
    """
    path = Path(path).absolute()
    parts = path.parts
    if RUNS not in parts[:-1]:
        return path
    start = parts.index(RUNS) + 1
    for depth in range(start + 1, len(parts)):   # runs/<study>, runs/<study>/trials, ... up to the file's folder
        folder = Path(*parts[:depth])
        if folder.is_symlink():
            raise StorageError(f"{folder} is a symbolic link inside {RUNS}/, and autotune does not write through "
                               f"one (the files would land outside {RUNS}/); replace it with a folder")
    return path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it still can), then
    rename it over `path`; on an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    check_no_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, replacing (never following) a link at `path`."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def open_new(path: str | Path) -> BinaryIO:
    """Open `path` afresh for writing a stream (a log): a link at `path` is removed, not followed."""
    path = Path(path)
    check_no_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "wb")
