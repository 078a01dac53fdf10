"""`lut serve`'s pages in a real headless browser (Debian's chromium, driven by playwright): each page loads
with no console error and draws its chart with as many marks as it has data. Screenshots of each page go to
$LUT_SCREENSHOTS (the README's come from there), else to the test's own folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from latency.vocab.family import blocks_of
from tests.test_serve import Served, make_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with Served(make_table(tmp_path_factory.mktemp("pages") / "lut.sqlite")) as served:
        yield served.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("LUT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Visit:
    """A page opened in a fresh tab, with every console error and uncaught exception it produced."""

    def __init__(self, browser: object, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        # a phone's first page fits the predictor of its missing blocks: seconds on a busy 2-core machine
        self.page.set_default_timeout(120_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.response = self.page.goto(url, wait_until="load", timeout=120_000)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def close(self, shot: Path | None = None) -> None:
        assert not self.errors, self.errors
        if shot is not None:
            self.page.screenshot(path=str(shot), full_page=True)
        self.page.close()


def test_the_devices_page(browser, server: str, shots: Path) -> None:
    visit = Visit(browser, f"{server}/")
    assert visit.response.status == 200
    assert visit.count("section.device") == 2 and visit.count("table.calibrations tbody tr") == 1
    assert "cpu" in visit.page.locator("section.device h2").first.inner_text()
    visit.close(shots / "serve-devices.png")


@pytest.mark.parametrize(("device", "source"), [("cpu", "measured alone"), ("pixel", "predicted")])
def test_a_model_page_draws_a_bar_per_block(browser, server: str, shots: Path, device: str, source: str) -> None:
    visit = Visit(browser, f"{server}/model/dmasking_f3?device={device}")
    assert visit.response.status == 200
    blocks = len(blocks_of("dmasking_f3"))
    assert visit.count("figure.blocks svg rect.bar") == blocks == visit.count("figure.blocks svg line.whisker")
    assert visit.count(f'figure.blocks rect.bar[data-group="{source}"]') > 0
    assert visit.count("table.blocks tbody tr") == blocks and visit.count("figure.kinds rect.bar") >= 3
    if device == "cpu":
        assert visit.count("table.runs tbody tr") == 1  # its validation run, beside the estimate
        visit.page.screenshot(path=str(shots / "serve-model.png"), full_page=True)
    visit.page.select_option("form.conditions select[name=device]", "pixel" if device == "cpu" else "cpu")
    visit.page.click("form.conditions button")
    visit.page.wait_for_load_state("load")
    assert visit.count("figure.blocks svg rect.bar") == blocks
    visit.close()


def test_the_rank_page_draws_each_device_and_the_rank_changes_chosen(browser, server: str, shots: Path) -> None:
    visit = Visit(browser, f"{server}/rank?devices=cpu,pixel")
    assert visit.count("figure.rank") == 2 and visit.count("figure.rank svg circle.point") == 2 * 7
    assert visit.count("figure.rank svg polyline.front") == 2 and visit.count("table.ranking tbody tr") == 7
    visit.page.select_option("select[name=a]", "pixel")
    visit.page.select_option("select[name=b]", "cpu")
    visit.page.click("form.conditions button")
    visit.page.wait_for_load_state("load")
    assert "Rank changes: pixel against cpu" in visit.page.locator("main").inner_text()
    visit.close(shots / "serve-rank.png")


def test_the_validation_page_draws_every_run_in_its_band(browser, server: str, shots: Path) -> None:
    visit = Visit(browser, f"{server}/validation")
    assert visit.count("figure.validation svg circle.point") == 4 == visit.count("table.validation tbody tr")
    assert visit.count("figure.validation svg polygon.band") == 1
    visit.close(shots / "serve-validation.png")


def test_the_farm_page_refreshes_itself_and_says_why_it_is_empty(browser, server: str, shots: Path) -> None:
    visit = Visit(browser, f"{server}/farm")
    assert "PostgreSQL" in visit.page.locator("p.message").inner_text()
    visit.page.wait_for_function("document.querySelector('main').dataset.refreshedAt !== undefined", timeout=15_000)
    visit.close(shots / "serve-farm.png")


def test_an_unknown_model_is_a_page_with_one_sentence(browser, server: str) -> None:
    visit = Visit(browser, f"{server}/model/dmasking_z9")
    assert visit.response.status == 404
    assert "There is no model 'dmasking_z9'" in visit.page.locator("p.message").inner_text()
    visit.errors = [e for e in visit.errors if "404" not in e]  # the browser logs the page's own status
    visit.close()
