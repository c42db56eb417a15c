"""The web console in a real browser: Debian's headless Chromium driven by Selenium.

A real ``edge-recorder serve`` over a store of 1,000 sessions written by the real session
writer and stored through the real CollectorStore. Each page's screenshot is kept under
``tmp/artefacts/console/`` (or ``$EDGE_RECORDER_ARTEFACTS/console/``); the path is printed.
Skipped, with the reason, only where Chromium or ChromeDriver is not installed
(``scripts/test.sh`` installs them from Debian's packages when missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from edge_recorder.collector.collector import CollectorStore  # noqa: E402
from edge_recorder.storefill import fill, write_session  # noqa: E402
from tests.conftest import cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTEFACTS = Path(os.environ.get("EDGE_RECORDER_ARTEFACTS", REPO / "tmp" / "artefacts")) / "console"
SESSIONS = 1000
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,1000")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                       reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, "
                              f"{CHROMEDRIVER}); scripts/test.sh installs them when it can"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "store"
    fill(root, SESSIONS, seed=11, rate_hz=50)
    return root


@pytest.fixture(scope="module")
def console(store: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "serve", "--store",
                             str(store), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert found, f"serve printed {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    yield found.group(0)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def screenshot(driver: object, name: str) -> Path:
    """A full-page screenshot (the window grown to the page's height) kept as an artefact."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 40, 800), 4000))
    time.sleep(0.3)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    print(f"screenshot: {path}")
    return path


def rows(driver: object) -> list[str]:
    """The table's sessions, read in one step in the page (the live update may replace the
    rows between two WebDriver calls)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll('#rows tr[data-session]'), "
        "(tr) => tr.dataset.session)")


def listed(store: Path, *args: str) -> list[str]:
    out = cli("sessions", "list", "--store", str(store), "--json", *args)
    assert out.returncode == 0, out.stderr
    return [f"{d['device_id']}/{d['session_id']}" for d in map(json.loads, out.stdout.splitlines())]


def test_filtering_by_label_and_journey_shows_what_sessions_list_shows(browser, console,
                                                                       store: Path) -> None:
    driver = browser
    driver.get(console + "/sessions")
    first = rows(driver)
    assert len(first) == 50
    assert driver.find_element(By.ID, "total").get_attribute("data-total") == str(SESSIONS)
    screenshot(driver, "sessions")
    # a journey that has walk sessions and others: the two filters together narrow it
    walk = listed(store, "--label", "walk")
    journeys = json.loads("[" + ",".join(cli("sessions", "list", "--store", str(store),
                                               "--json").stdout.splitlines()) + "]")
    by_key = {f"{d['device_id']}/{d['session_id']}": d for d in journeys}
    journey = next(by_key[k]["journey_id"] for k in walk if by_key[k]["journey_id"] and
                   len(listed(store, "--journey", by_key[k]["journey_id"])) >
                   len(listed(store, "--journey", by_key[k]["journey_id"], "--label", "walk")))
    Select(driver.find_element(By.NAME, "label")).select_by_value("walk")
    driver.find_element(By.NAME, "journey").send_keys(journey)
    driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: "journey=" in d.current_url)
    query = parse_qs(urlparse(driver.current_url).query)
    assert query["label"] == ["walk"] and query["journey"] == [journey]  # shareable URL
    expected = listed(store, "--label", "walk", "--journey", journey)
    assert expected and rows(driver) == expected[::-1]  # the console lists the latest first
    assert rows(driver) != first
    screenshot(driver, "sessions-filtered")
    # the label alone: more than a page; the total is sessions list's count
    driver.get(console + "/sessions?label=walk&per=200&sort=start&order=asc")
    assert driver.find_element(By.ID, "total").get_attribute("data-total") == str(len(walk))
    assert rows(driver) == walk[:200]
    driver.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    WebDriverWait(driver, 10).until(lambda d: "page=2" in d.current_url)
    assert rows(driver) == walk[200:400]


def painted(driver: object) -> list[int]:
    """Per plot canvas, how many pixels carry a series colour (not axes, grid or background)."""
    return driver.execute_script("""
        const colours = [[214,39,40],[44,160,44],[31,119,180],[148,103,189]];
        return Array.from(document.querySelectorAll('.plot canvas'), (c) => {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 200 && colours.some(([r, g, b]) =>
                Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 &&
                Math.abs(d[i + 2] - b) < 40)) { n++; }
          }
          return n;
        });""")


def series_requests(driver: object) -> list[dict[str, list[str]]]:
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => u.includes('/series?'))")
    return [parse_qs(urlparse(u).query) for u in urls]


def test_session_page_draws_zooms_and_downloads(browser, console, store: Path,
                                                tmp_path: Path) -> None:
    driver = browser
    with_gap = next(k for k in listed(store) if json.loads(
        (store / "sessions" / f"{k}.json").read_text())["sensors"][0]["gaps"])
    driver.get(f"{console}/sessions/{with_gap}")
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-plots-ready"))
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-plots-ready") == "5"
    assert driver.find_elements(By.CSS_SELECTOR, "#gaps tbody tr")
    counts = painted(driver)
    assert len(counts) == 5 and min(counts) > 300, counts
    assert len(series_requests(driver)) == 1  # the preloaded request served the first view
    screenshot(driver, "session")
    # zoom: drag across the middle of the first plot; new data for that window is fetched
    before = len(series_requests(driver))
    over = driver.find_element(By.CSS_SELECTOR, ".plot .u-over")
    width = over.size["width"]
    ActionChains(driver).move_to_element_with_offset(over, -width // 10, 0).click_and_hold() \
        .move_by_offset(width // 5, 0).release().perform()
    WebDriverWait(driver, 10).until(lambda d: len(series_requests(d)) > before)
    zoom = series_requests(driver)[-1]
    duration = float(json.loads((store / "sessions" / f"{with_gap}.json").read_text())
                     ["duration_s"])
    a, b = float(zoom["from"][0]), float(zoom["to"][0])
    assert 0.2 * duration < a < b < 0.8 * duration and b - a < 0.35 * duration
    WebDriverWait(driver, 10).until(lambda d: min(painted(d)) > 300)
    screenshot(driver, "session-zoomed")
    # downloads: the stored file as it is, and the CSV the export command writes
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    device, sid = with_gap.split("/")
    for fmt in ("mcap", "csv"):
        driver.find_element(By.CSS_SELECTOR, f"a.download[href$='/download/{fmt}']").click()
        target = downloads / f"{sid}.{fmt}"
        WebDriverWait(driver, 20).until(lambda d, t=target: t.exists() and t.stat().st_size)
    session_file = store / "sessions" / device / f"{sid}.mcap"
    assert (downloads / f"{sid}.mcap").read_bytes() == session_file.read_bytes()
    out = cli("export", str(session_file), "--format", "csv", "-o", str(tmp_path / "ref.csv"))
    assert out.returncode == 0, out.stderr
    assert (downloads / f"{sid}.csv").read_text() == (tmp_path / "ref.csv").read_text()


def test_journeys_page_places_sessions_on_time_lines(browser, console, store: Path) -> None:
    driver = browser
    driver.get(console + "/journeys")
    sections = driver.find_elements(By.CSS_SELECTOR, "section.journey")
    assert len(sections) == 25
    out = cli("journeys", "list", "--store", str(store), "--json")
    journeys = [json.loads(x) for x in out.stdout.splitlines()]
    assert f"{len(journeys):,} journeys" in driver.find_element(By.CSS_SELECTOR, ".pager").text
    latest = journeys[-1]
    first = sections[0]
    assert first.find_element(By.TAG_NAME, "h2").text.startswith(latest["journey_id"])
    bars = first.find_elements(By.CSS_SELECTOR, "svg.lane rect.bar")
    assert len(bars) == latest["sessions"]
    screenshot(driver, "journeys")
    href = first.find_element(By.CSS_SELECTOR, "svg.lane a").get_dom_attribute("href")
    bars[0].click()  # a bar is a link to its session
    WebDriverWait(driver, 10).until(lambda d: d.current_url == console + href)
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-plots-ready"))
    assert latest["journey_id"] in driver.find_element(By.CSS_SELECTOR, "table.facts").text


def test_a_new_session_appears_without_a_reload(browser, console, store: Path) -> None:
    driver = browser
    driver.get(console + "/sessions")
    marker = driver.execute_script("window.__notReloaded = 1; return 1")
    collector = CollectorStore(store)  # stored as the running collector stores one
    m = write_session(collector, device="pi-live", started_ns=time.time_ns(), duration_s=2,
                      labels=["live"], journey="live-demo")
    collector.index.close()
    key = f"pi-live/{m['session_id']}"
    WebDriverWait(driver, 20).until(lambda d: key in rows(d))
    assert driver.execute_script("return window.__notReloaded") == marker
    assert rows(driver)[0] == key
    assert driver.execute_script(
        "return document.querySelector(`#rows tr[data-session='${arguments[0]}']`)"
        ".classList.contains('new')", key)
    assert driver.find_element(By.ID, "total").get_attribute("data-total") == str(SESSIONS + 1)
    screenshot(driver, "sessions-live")


def test_sessions_from_a_fleet_through_a_collector_appear_live(browser, console, store: Path,
                                                               broker, spawn,
                                                               tmp_path: Path) -> None:
    """The whole receiving side: simulated devices publish real sessions through Mosquitto,
    ``edge-recorder collect`` stores them in the console's store, the open page shows them."""
    from edge_recorder.devtools import wait_until
    from edge_recorder.fleet import Fleet

    driver = browser
    driver.get(console + "/sessions?label=fleet&sort=start&order=asc")
    assert rows(driver) == []
    collector = spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store",
                      str(store), name="collector")
    wait_until(lambda: "connected" in collector.log(), 30, "collector up")
    fleet = Fleet(tmp_path / "devices", broker.port, devices=3, part_bytes=4096)
    try:
        fleet.run(every_s=0.5, for_s=1.5, session_s=0.5)
        fleet.wait_stored(timeout_s=60)
    finally:
        fleet.close()
    recorded = sorted(f"{r.device_id}/{r.session_id}" for r in fleet.recorded)
    WebDriverWait(driver, 20).until(lambda d: sorted(rows(d)) == recorded)
    assert rows(driver) == listed(store, "--label", "fleet")  # same order as sessions list
    screenshot(driver, "sessions-fleet")
    assert collector.stop() == 0
    driver.get(f"{console}/sessions/{recorded[0]}")
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-plots-ready"))
    assert min(painted(driver)) > 100
