"""The MLflow UI in headless Chromium: a study's child runs, the parent run's Overview and its Pareto artifact.

By default the tests log a small synthetic study. To check (and photograph) a real one, point them at
its store: `AUTOTUNE_BROWSER_TRACKING_URI=sqlite:///$PWD/runs/mlflow.db AUTOTUNE_BROWSER_STUDY=demo`
after `make demo`; with `AUTOTUNE_UPDATE_DOCS_IMG=1` the screenshots then go to docs/img/.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.tracking import TAG_KIND, TAG_NOTE, TAG_TRIAL, StudyTracker, experiment_url, ui_argv
from autotune.tuner.convergence import progress_metrics
from autotune.tuner.recommend import Recommendation, summary
from tests.export.study_factory import tiny_study
from tests.net import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
DOCS_IMAGE = DOCS_IMG / "mlflow_pareto.png"
DOCS_OVERVIEW = DOCS_IMG / "mlflow_parent_overview.png"
STUDY = os.environ.get("AUTOTUNE_BROWSER_STUDY", "demo")
REAL_STORE = os.environ.get("AUTOTUNE_BROWSER_TRACKING_URI")

if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


class _Recommendation:
    def __init__(self, record):
        self.record, self.baseline, self.policy, self.reason = record, None, "max-reward", "best reward on the front"



def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with status {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):   # not up yet, or slow on a busy box
            pass
        time.sleep(1)
    raise TimeoutError(f"mlflow ui did not answer at {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def logged_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    root = tmp_path_factory.mktemp("ui")
    if REAL_STORE:
        return REAL_STORE, StudyTracker(STUDY, "", REAL_STORE).experiment_id, root
    uri = f"sqlite:///{root / 'mlflow.db'}"
    records = tiny_study()
    (root / "pareto.json").write_text(json.dumps({"recommended": 0, "front": [0, 1]}))
    records[0].config.dump(root / "recommended.yaml")
    tracker = StudyTracker(STUDY, "sqlite:///runs/demo/optuna.db", uri)
    tracker.start_search({"trials": len(records), "sampler": "tpe"})
    for done, record in enumerate(records, start=1):
        tracker.log_trial(record)
        tracker.log_progress(done, progress_metrics(records[:done], budget_gb=8.0))
    text = summary(Recommendation(record=records[0], baseline=records[0], policy="max-reward",
                                  reason="best reward on the front"))
    tracker.finish_search(records, _Recommendation(records[0]), root / "pareto.json", root / "recommended.yaml",
                          summary=text)
    tracker.close()
    return uri, tracker.experiment_id, root


def _study_runs(uri: str, experiment_id: str) -> tuple[object, list[object]]:
    """The study's latest parent run and its trials' runs, as the store holds them."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs([experiment_id], max_results=1000,
                                                      order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get(TAG_KIND) == "search")
    children = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    return parent, sorted(children, key=lambda r: int(r.data.tags[TAG_TRIAL]))


def _save_for_docs(shot: Path, target: Path) -> None:
    if os.environ.get("AUTOTUNE_UPDATE_DOCS_IMG"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


@pytest.fixture(scope="module")
def ui_url(logged_study: tuple[str, str, Path]) -> Iterator[str]:
    uri, _, root = logged_study
    port = free_port()
    # Its own process group, so the UI's uvicorn and job-runner children stop with it.
    proc = subprocess.Popen(ui_argv(uri, port=port), cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def page(ui_url: str) -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def test_ui_shows_child_runs_and_the_pareto_artifact(page, ui_url: str, logged_study, tmp_path: Path) -> None:
    uri, experiment_id, _ = logged_study
    page.goto(experiment_url(uri, STUDY, ui_url))
    page.get_by_role("button", name="Close").first.click(timeout=90_000)   # the Assistant side panel
    parent_cell = page.locator('[col-id="attributes.`Run Name`"]', has_text=f"{STUDY}-search").first
    parent_cell.wait_for(timeout=90_000)
    parent_cell.locator("button").first.click()          # expand the nested child runs
    _, children = _study_runs(uri, experiment_id)
    for child in children:                               # named by their knobs, e.g. "#1 adamw zero1"
        page.get_by_text(child.info.run_name, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "mlflow_runs.png"))

    parent_href = parent_cell.locator("a").first.get_attribute("href")
    page.goto(f"{ui_url}/{parent_href}/artifacts?workflowType=machine_learning")
    page.get_by_text("pareto.png", exact=True).first.click(timeout=60_000)
    image = page.locator('img[src^="blob:"]').first
    image.wait_for(timeout=30_000)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle(), timeout=30_000)
    assert image.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [960, 660]   # our 8x5.5 in @ 120 dpi
    shot = tmp_path / "mlflow_pareto.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    _save_for_docs(shot, DOCS_IMAGE)

    page.get_by_text("pareto.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first                # MLflow previews HTML in an iframe
    frame.locator(".plotly-graph-div").first.wait_for(timeout=30_000)
    assert f"/experiments/{experiment_id}/" in page.url


def test_parent_overview_shows_the_description_and_the_progress_metrics(page, ui_url: str, logged_study,
                                                                        tmp_path: Path) -> None:
    uri, experiment_id, _ = logged_study
    parent, children = _study_runs(uri, experiment_id)
    heading = parent.data.tags[TAG_NOTE].splitlines()[0].removeprefix("### ")   # "Recommended: trial #..."
    page.goto(f"{ui_url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning")
    close = page.get_by_role("button", name="Close").first                        # the Assistant side panel
    close.click(timeout=90_000)
    # the description rendered as markdown: a heading, not the raw "###" text
    page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
    assert page.get_by_text("### Recommended").count() == 0
    more = page.get_by_text("Show more", exact=True)      # MLflow folds a long description
    if more.count():
        more.first.click()
    figure = page.locator('img[src*="get-artifact?path=pareto.png"]').first
    figure.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=figure.element_handle(), timeout=30_000)
    assert figure.evaluate("el => el.naturalWidth") == 960                     # the Pareto figure itself
    for key in ("best_feasible_reward", "lowest_feasible_peak_gb", "front_size", "hypervolume_share"):
        page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
    assert children
    shot = tmp_path / "mlflow_parent_overview.png"
    page.set_viewport_size({"width": 1400, "height": 1500})   # the page scrolls inside: show it whole
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    _save_for_docs(shot, DOCS_OVERVIEW)
