"""Reliability round 3 (issue 22): bad input, changed studies, links, storage and false successes.

Each test reproduces one reported case and checks the product's answer: one `error:` line, a refusal
that names the cause, or no write outside runs/. Most run the console entry point in this process.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_errors import SEARCH, _in_tmp, _main, _one_line_error  # noqa: F401 - _in_tmp is autouse
from tests.tuner.tuner_helpers import CI_TINY


# -- 1: a budget no device holds ------------------------------------------------------------------
@pytest.mark.parametrize("where", ["--budget-gb", "space", "pareto"])
def test_a_huge_budget_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "huge.yaml").write_text(CI_TINY.read_text() + "\nbudget_gb: 1.0e+308\n")
    argv = {"--budget-gb": [*SEARCH, "--study", "s", "--budget-gb", "1e308"],
            "space": [*SEARCH[:3], "--space", "huge.yaml", "--study", "s", "--no-tracking"],
            "pareto": ["pareto", "--study", "s", "--budget-gb", "1e308"]}[where]
    code, _, err = _main(argv, capsys)
    _one_line_error(code, err, "1e+308", "65536")
    assert not (tmp_path / "runs").exists()


def test_a_trial_config_with_a_huge_device_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.yaml").write_text("device_memory_gb: 1.0e+308\n")
    code, _, err = _main(["trial", "--config", "t.yaml", "--out", "r.json"], capsys)
    _one_line_error(code, err, "device_memory_gb", "at most 65536")
    assert not (tmp_path / "r.json").exists()
