"""The console as a person uses it: a real Chromium (Debian's chromium + chromium-driver,
headless) through Selenium, against a real gateway (test_console.ConsoleGateway).

An unauthenticated browser sees only the login page; a technician logs in, reads the fleet,
filters it, acknowledges an event with a note, and logs out. A screenshot of each page is
written under the test's tmp directory (their paths are printed: ``pytest -s`` shows them).
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from test_console import PASSWORDS, ConsoleGateway

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver")
By = pytest.importorskip("selenium.webdriver.common.by").By
Select = pytest.importorskip("selenium.webdriver.support.select").Select
WebDriverException = pytest.importorskip("selenium.common.exceptions").WebDriverException
WebDriverWait = pytest.importorskip("selenium.webdriver.support.wait").WebDriverWait

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install, .ci/run does)",
)


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="reverbere-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
        "--lang=fr-FR",
    ):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "fr-FR,fr"})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options
    )
    driver.implicitly_wait(5)  # an element's appearance after a page load, not a sleep
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def console(tmp_path):
    c = ConsoleGateway(tmp_path)
    yield c
    c.stop()


def submit(driver, element) -> None:
    """Click ``element`` and wait for the next page to replace this one (a click returns
    before the browser has loaded what it leads to)."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_driver) -> bool:
        try:
            old.is_enabled()  # raises once the page it belonged to is gone
        except WebDriverException:  # stale, or "does not belong to the document"
            return True
        return False

    WebDriverWait(driver, 10).until(replaced)


def shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_an_unauthenticated_browser_sees_only_the_login_page(console, browser, tmp_path):
    for path in ("/", "/events", "/api/nodes"):
        browser.get(console.url + path)
        if path.startswith("/api/"):
            assert "unauthorized" in browser.page_source
            continue
        assert browser.current_url.startswith(console.url + "/login")
        assert browser.find_element(By.ID, "login").text == "Se connecter"
        assert "lamp-001" not in browser.page_source
    shot(browser, tmp_path, "login")


def test_a_technician_logs_in_reads_the_fleet_acknowledges_an_event_and_logs_out(
    console, browser, tmp_path
):
    browser.get(console.url + "/events")  # sent to the login, then back here
    browser.find_element(By.ID, "name").send_keys("tech")
    browser.find_element(By.ID, "password").send_keys("not the password")
    submit(browser, browser.find_element(By.ID, "login"))
    assert "Nom ou mot de passe incorrect" in browser.find_element(By.ID, "message").text
    shot(browser, tmp_path, "login-refused")
    console.clock.offset += 2  # the login's brake after a failure, passed without sleeping

    browser.find_element(By.ID, "name").send_keys("tech")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["tech"])
    submit(browser, browser.find_element(By.ID, "login"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Événements"
    cookie = browser.get_cookie("reverbere_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    submit(browser, browser.find_element(By.LINK_TEXT, "Parc"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    assert [r.get_attribute("id") for r in rows] == [
        "node-lamp-001",
        "node-lamp-002",
        "node-school-01",
    ]
    lamp = browser.find_element(By.ID, "node-lamp-001").text
    assert "actif" in lamp and "52,2 W" in lamp and "87 %" in lamp
    assert "muet depuis le" in browser.find_element(By.ID, "node-school-01").text
    shot(browser, tmp_path, "fleet")

    Select(browser.find_element(By.ID, "filter-state")).select_by_value("silent")
    submit(browser, browser.find_element(By.ID, "filter"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    assert [r.get_attribute("id") for r in rows] == ["node-school-01"]
    shot(browser, tmp_path, "fleet-silent")

    submit(browser, browser.find_element(By.LINK_TEXT, "Événements"))
    event = browser.find_element(By.ID, "event-1")
    assert "allumé en plein jour" in event.text and "en cours" in event.text
    event.find_element(By.NAME, "note").send_keys("lampe changée, horloge réglée")
    shot(browser, tmp_path, "events")
    submit(browser, event.find_element(By.ID, "ack-1"))
    acked = browser.find_element(By.CSS_SELECTOR, "#event-1 .ack").text
    assert acked.startswith("par tech le") and "lampe changée, horloge réglée" in acked
    shot(browser, tmp_path, "events-acknowledged")
    row = console.db().execute("SELECT ack_by, ack_note FROM anomalies WHERE id = 1").fetchone()
    assert row == ("tech", "lampe changée, horloge réglée")

    submit(browser, browser.find_element(By.ID, "logout"))
    assert browser.current_url == console.url + "/login"
    browser.get(console.url + "/")  # the session is over: back to the login
    assert browser.current_url.startswith(console.url + "/login")
    shot(browser, tmp_path, "logged-out")
