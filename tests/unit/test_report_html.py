"""The HTML report as a person sees it: rendered in headless Chromium (selenium and chromedriver), checked on
the rendered page (summary rows, an SVG timeline per test with its lanes and marks, the failure message, no
resource fetched), and a full-page screenshot kept as RUN/report.png. Chromium missing: a skip, or a failure
when CI=true."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pytest_plugin import missing_prerequisite
from harness.report_html import write_html_report

from report_helpers import FAILED, FAILURE, PASSED, write_run

CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH = 1300


def _unavailable(reason: str) -> None:
    missing_prerequisite(f"{reason}: apt-get install chromium chromium-driver; pip install selenium", "browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium driven through chromedriver."""
    try:
        from selenium import webdriver
    except ImportError as exc:
        _unavailable(f"selenium is not installed ({exc})")
    chromium = shutil.which("chromium")
    if chromium is None or not CHROMEDRIVER.is_file():
        _unavailable(f"chromium ({chromium or 'not on PATH'}) or {CHROMEDRIVER} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WIDTH},900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


def test_the_rendered_report_shows_the_summary_timelines_and_failure(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    run_dir = write_run(tmp_path)
    report = write_html_report(run_dir)
    browser.get(report.as_uri())

    rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")]
    assert [row[:4] + row[5:6] for row in rows] == [
        ["S01", "test_s01_connect_is_refused", "failed", "ECONNREFUSED", "0"],
        ["S02", "test_s02_connect_times_out", "passed", "ETIMEDOUT", "2"]], rows
    assert [row[4] for row in rows] == ["0.000", "7.000"]

    sections = {s.get_attribute("data-nodeid"): s for s in browser.find_elements(By.CSS_SELECTOR, "section.test")}
    assert list(sections) == [FAILED, PASSED]
    for section in sections.values():
        svg = section.find_element(By.CSS_SELECTOR, "svg.timeline")
        assert svg.is_displayed() and svg.size["width"] > 1000 and svg.size["height"] > 100, svg.size
        assert [t.text for t in svg.find_elements(By.CSS_SELECTOR, "text.lane-name")] == ["client", "server"]

    def count(nodeid: str, selector: str) -> int:
        return len(sections[nodeid].find_elements(By.CSS_SELECTOR, selector))

    assert count(PASSED, "line.packet") == 6 and count(PASSED, "line.packet.retransmission") == 4
    assert count(PASSED, "circle.syscall") == 2 and count(PASSED, "circle.syscall.error") == 1
    assert count(PASSED, "rect.fault") == 1 and count(PASSED, "rect.state") == 2
    assert [t.text for t in sections[PASSED].find_elements(By.CSS_SELECTOR, "text.errname")] == ["ETIMEDOUT"]
    assert count(FAILED, "line.packet") == 4 and count(FAILED, "line.packet.retransmission") == 0
    assert count(FAILED, "rect.fault") == 0 and count(FAILED, "circle.syscall.error") == 1

    message = sections[FAILED].find_element(By.CSS_SELECTOR, "pre.message")
    assert message.is_displayed() and FAILURE in message.text
    assert not sections[PASSED].find_elements(By.CSS_SELECTOR, "pre.message")
    links = {a.text: a.get_attribute("href") for a in sections[FAILED].find_elements(By.CSS_SELECTOR, "p.files a")}
    assert list(links) == ["client-1.pcap", "server-1.pcap", "probe on client: stderr"], links
    assert all(Path(href.removeprefix("file://")).is_file() for href in links.values()), links
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, height + 200)
    screenshot = run_dir / "report.png"
    assert browser.save_screenshot(str(screenshot))
    width, shot_height = _png_size(screenshot.read_bytes())
    assert width >= 1000 and shot_height >= height * 0.9 and screenshot.stat().st_size > 10_000
