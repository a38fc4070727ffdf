"""Two workers join one study in a real PostgreSQL server started on loopback for this test."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.tuner.study import load_records
from tests.net import free_port
from tests.tuner.tuner_helpers import search_cmd, subprocess_env

pytestmark = pytest.mark.postgres


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)



@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    # not under pytest's tmp dir: that is private to root, and the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    data, port = root / "data", free_port()
    # PostgreSQL refuses to run as root: run it as the postgres (or nobody) account
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if shutil.which("runuser") and _has_user("postgres") else "nobody"
        shutil.chown(root, user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run([*run_as, initdb, "-D", str(data), "--auth=trust", "-U", "postgres"], check=True,
                   capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_two_workers_share_one_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    env = subprocess_env(FAKE_TRIAL_SLEEP_S="0.3")
    workers = [subprocess.Popen(search_cmd("shared", 8, postgres_url), cwd=tmp_path / name, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b") if (tmp_path / name).mkdir() is None]
    for w in workers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0, err
    records = load_records("shared", postgres_url)
    assert len(records) == 8
    assert [r.number for r in records if r.advisor_reason == "baseline"] == [0]
    # each worker ran some of them, in its own folder (as two machines would)
    assert all(list((tmp_path / name).glob("runs/shared/trials/*/result.json")) for name in ("a", "b"))
