"""The unsubscribe landing page in a real headless Chromium (Debian's, via its chromedriver).

The browser opens the link a recipient would click, the page is photographed, the one
button is pressed, and the result page must say what happened; only then is the address
suppressed (opening the page alone changes nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from webhelpers import PEOPLE, Service, web_service_fixture  # noqa: F401 (the fixture)

from helpers import wait_for
from helpers.system_packages import require_binary
from raymail.returns.suppression import SuppressionList

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def test_landing_page_button_unsubscribes_in_chromium(web_service: Service, tmp_path: Path) -> None:
    chromium = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    who = PEOPLE[6]
    url = web_service.links(who)["unsubscribe"]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    browser = webdriver.Chrome(options=options, service=DriverService(driver_path))
    try:
        browser.set_page_load_timeout(30)
        browser.get(url)
        assert browser.title == "Unsubscribe"
        shot = tmp_path / "landing.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
        suppressed = SuppressionList(web_service.config.suppression_file)
        assert who not in suppressed.active()["email"].to_list()  # the page alone: nothing
        browser.find_element(By.ID, "unsubscribe").click()
        result = wait_for("the result page", lambda: browser.title == "Unsubscribed", 30)
        assert result
        text = browser.find_element(By.ID, "result").text
        assert re.search(r"not receive messages of webtest", text), text
        browser.save_screenshot(str(tmp_path / "result.png"))
        assert not browser.get_cookies()
    finally:
        browser.quit()
    wait_for("the unsubscribe applied", lambda: who in suppressed.active()["email"].to_list())
