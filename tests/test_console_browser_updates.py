"""A rollout followed in a real headless Chromium (test_console_browser's driver), against a
real gateway: the fleet filtered on the nodes that rolled back, then such a node's page, which
says why (issue 17, item 4). Screenshots under the test's tmp directory (``pytest -s``)."""

import time

import pytest
from test_console import PASSWORDS
from test_console_browser import By, Select, browser, shot, submit  # noqa: F401 (fixture)
from test_console_updates import FILES, console, signed  # noqa: F401 (fixture)

from gateway.ota import rollout
from gateway.ota.updates import Pending

pytestmark = pytest.mark.usefixtures("browser")


def test_a_technician_finds_the_nodes_that_rolled_back_and_why(console, browser, tmp_path):  # noqa: F811
    db = console.db()
    t0 = time.time() - 600
    rollout.start(db, 2, FILES, ["lamp-001", "lamp-002", "school-01"], canary=3,
                  max_failures=5, now=t0)  # fmt: skip
    signed(db, "lamp-001", "fwt", 2, t0 + 60)  # on trial
    signed(db, "lamp-002", "fwx", 2, t0 + 60)  # its boot shim gave version 2 up
    Pending(db).report("lamp-002", 1, 8)  # and it said why when it asked again
    db.close()
    browser.get(console.url + "/login")
    browser.find_element(By.ID, "name").send_keys("tech")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["tech"])
    submit(browser, browser.find_element(By.ID, "login"))
    assert "à l'essai (version 2)" in browser.find_element(By.ID, "node-lamp-001").text
    shot(browser, tmp_path, "fleet-rollout")

    Select(browser.find_element(By.ID, "filter-update")).select_by_value("rolled_back")
    submit(browser, browser.find_element(By.ID, "filter"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    assert [r.get_attribute("id") for r in rows] == ["node-lamp-002"]
    assert "abandonnée (version 2)" in rows[0].text

    submit(browser, browser.find_element(By.LINK_TEXT, "lamp-002"))
    update = browser.find_element(By.ID, "fw-update").text
    assert "abandonnée (version 2)" in update and "n'a pas démarré" in update
    shot(browser, tmp_path, "node-rolled-back")
