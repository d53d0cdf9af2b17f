"""The web page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven
by Selenium against a real ``sepconv serve``. It submits a model, follows the job, checks that the report renders
with its charts (and that its table sorts inside the sandboxed frame), that the API's errors are shown as they
are, and that the browser logged no error. Screenshots of the page and the report at phone and laptop widths are
written to ``$SEPCONV_TEST_ARTIFACTS`` (default: a folder under pytest's temporary directory).

Nothing is downloaded: the browser and its driver are the Debian packages (``.ci/run`` installs them), given to
Selenium by path, so Selenium Manager never runs. Without them the tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.service.helpers import KEY_ALICE
from tests.service.test_serve import Server
from tests.utils.models import build, export_onnx

CHROMIUM = os.environ.get("SEPCONV_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SEPCONV_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
PHONE, LAPTOP = 390, 1366

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"no Chromium: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.print_page_options import PrintOptions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SEPCONV_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web")
    (root / "data").mkdir()
    srv = Server(root / "data", SEPCONV_API_KEYS=KEY_ALICE)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net, x = build("vgg")
    path = tmp_path_factory.mktemp("web-model") / "vgg.onnx"
    export_onnx(net, x, path, dynamic="batch")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Samples for accuracy recovery, labelled with the original model's own predictions."""
    import torch

    net, _ = build("vgg")
    xs = np.random.default_rng(0).standard_normal((96, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        labels = net.eval()(torch.from_numpy(xs)).argmax(1).numpy().astype(np.int64)
    path = tmp_path_factory.mktemp("web-data") / "samples.npz"
    np.savez(path, x=xs, labels=labels)
    return path


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager may never fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which(CHROMEDRIVER)), options=options)
    driver.set_window_size(LAPTOP, 900)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: webdriver.Chrome, path: Path, width: int) -> None:
    """The whole page at ``width`` CSS pixels."""
    driver.set_window_size(width, 900)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(width, min(int(height) + 40, 8000))
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def wait_visible(driver: webdriver.Chrome, element_id: str, timeout: float) -> None:
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: d.find_element(By.ID, element_id).is_displayed())
    except TimeoutException:
        status = driver.find_element(By.ID, "status").text
        error = driver.find_element(By.ID, "error").text
        pytest.fail(f"#{element_id} not shown in {timeout} s; status: {status!r}; error: {error!r}")


def fill_form(driver: webdriver.Chrome, model: Path, *, key: str, data: Path | None = None) -> None:
    driver.find_element(By.ID, "model").send_keys(str(model))
    if data is not None:
        driver.find_element(By.ID, "data").send_keys(str(data))
    Select(driver.find_element(By.ID, "policy")).select_by_value("rank")
    value = driver.find_element(By.ID, "policy-value")
    value.clear()
    value.send_keys("2")
    driver.find_element(By.ID, "input-shape").send_keys("x=1x3x32x32")
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)


def test_convert_from_the_page_and_read_the_report(browser, server, model, data, artifacts, tmp_path):
    browser.get(server.url + "/")
    assert browser.title.startswith("sepconv")
    # The page asked the server's schema: the data file is sent as samples for recovery, which it offers.
    WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.ID, "recover-box").get_attribute("hidden"))
    assert browser.find_element(By.ID, "data-label").text == "Data"
    screenshot(browser, artifacts / "web-phone.png", PHONE)
    screenshot(browser, artifacts / "web-laptop.png", LAPTOP)
    browser.set_window_size(LAPTOP, 900)

    fill_form(browser, model, key=KEY_ALICE, data=data)
    browser.find_element(By.ID, "submit").click()
    wait_visible(browser, "status", 10)
    wait_visible(browser, "result", 180)
    assert browser.find_element(By.ID, "phase").text == "succeeded"
    assert browser.find_element(By.ID, "job-progress").get_attribute("value") == "1"
    assert browser.execute_script("return sessionStorage.getItem('sepconv.apiKey')") == KEY_ALICE
    assert browser.execute_script("return localStorage.length") == 0  # the key is never kept beyond the session

    # The report, inside its sandboxed frame: header, charts, a table whose script runs under the page's policy.
    screenshot(browser, artifacts / "web-result-phone.png", PHONE)
    screenshot(browser, artifacts / "web-result-laptop.png", LAPTOP)
    frame = browser.find_element(By.ID, "report")
    html = frame.get_attribute("srcdoc")
    assert "<title>vgg.onnx · sepconv report</title>" in html
    browser.switch_to.frame(frame)
    # rank 2 on every layer the measured plan does not find more than 10 % slower (the 3-channel stem may be)
    assert re.match(r"[1-4] of 4 convolutions converted", browser.find_element(By.ID, "verdict").text)
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) >= 6 and all(c.size["width"] > 200 and c.size["height"] > 50 for c in charts)
    assert browser.find_element(By.ID, "plot-accuracy").is_displayed()  # recovery ran on the data
    rank_header = browser.find_element(By.XPATH, "//table[@id='layer-table']//th[text()='params before']")
    rank_header.click()
    assert rank_header.get_attribute("aria-sort") == "ascending"
    values = [float(td.get_attribute("data-v")) for td in browser.find_elements(
        By.CSS_SELECTOR, "#layer-table tbody td.col-params_before")]
    assert values == sorted(values) and len(values) == 4
    browser.switch_to.default_content()

    # The model download is fetched with the key and handed over as a file named by the server.
    link = browser.find_element(By.ID, "download-model")
    link.click()
    WebDriverWait(browser, 30).until(lambda d: link.get_attribute("href").startswith("blob:"))
    assert link.get_attribute("download") == "vgg-sepconv.onnx"
    assert console_errors(browser) == []

    # The report on its own (what "Download the report" saves), at both widths.
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    browser.get(page.as_uri())
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == len(charts)
    screenshot(browser, artifacts / "report-laptop.png", LAPTOP)
    screenshot(browser, artifacts / "report-phone.png", PHONE)
    # Printable: Chromium prints it (A4) with the charts and the whole table.
    pdf = base64.b64decode(browser.print_page(PrintOptions()))
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    (artifacts / "report.pdf").write_bytes(pdf)
    # On a phone the page itself does not scroll sideways; only the wide table does, inside its box.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE
    assert console_errors(browser) == []


@pytest.mark.parametrize(("key", "upload", "code", "message"), [
    ("not-a-key-0123456789", "model", "unauthorized", "missing or unknown API key"),
    (KEY_ALICE, "garbage", "unsupported_model", "not a model sepconv reads"),
])
def test_the_apis_errors_are_shown_as_they_are(browser, server, model, tmp_path, key, upload, code, message):
    path = model
    if upload == "garbage":
        path = tmp_path / "notes.onnx"
        path.write_bytes(b"these are not the weights you are looking for" * 10)
    browser.get(server.url + "/")
    fill_form(browser, path, key=key)
    browser.find_element(By.ID, "submit").click()
    wait_visible(browser, "error", 30)
    assert browser.find_element(By.ID, "error-code").text == code
    assert message in browser.find_element(By.ID, "error-message").text
    assert browser.find_element(By.ID, "submit").is_enabled()
    # The failed request itself is logged by the browser; nothing else (no script error) may be.
    assert [m for m in console_errors(browser) if "/convert" not in m] == []
