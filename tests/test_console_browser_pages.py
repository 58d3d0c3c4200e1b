"""The Node, Energy and Gateway pages in a real headless Chromium (test_console_browser's
driver), against a real gateway with a month of a school meter's summaries and a waste event
(test_console_pages' town). A screenshot of each page is written under the test's tmp
directory and its path printed (``pytest -s``)."""

import pytest
from test_console import PASSWORDS
from test_console_browser import By, browser, shot, submit  # noqa: F401 (fixture)
from test_console_pages import console, energy_recomputed  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("browser")


def test_a_viewer_reads_a_node_the_energy_and_the_gateway(console, browser, tmp_path):  # noqa: F811
    browser.get(console.url + "/login")
    browser.find_element(By.ID, "name").send_keys("lecteur")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["lecteur"])
    submit(browser, browser.find_element(By.ID, "login"))

    submit(browser, browser.find_element(By.LINK_TEXT, "school-01"))  # from the fleet
    assert browser.find_element(By.TAG_NAME, "h1").text == "Nœud school-01"
    submit(browser, browser.find_element(By.ID, "span-month"))
    chart = browser.find_element(By.CSS_SELECTOR, "#chart-e svg")
    assert chart.size["width"] > 300 and chart.find_elements(By.TAG_NAME, "polyline")
    assert "chauffage allumé un dimanche" in browser.find_element(By.ID, "node-events").text
    shot(browser, tmp_path, "node-month")

    energy_recomputed(console)  # the town's summaries were written after the start
    submit(browser, browser.find_element(By.LINK_TEXT, "Énergie"))
    school = browser.find_element(By.ID, "asset-school").text
    assert "bâtiment" in school and "+100" in school
    assert "2,52" in browser.find_element(By.ID, "waste-total").text
    shot(browser, tmp_path, "energy")

    submit(browser, browser.find_element(By.LINK_TEXT, "Passerelle"))
    assert browser.find_element(By.ID, "version").text.startswith("0.")
    assert "Synchronisation désactivée" in browser.find_element(By.ID, "sync-off").text
    assert "Europe/Paris" in browser.find_element(By.TAG_NAME, "footer").text
    shot(browser, tmp_path, "gateway")
