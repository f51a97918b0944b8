"""/docs (Swagger UI) and /redoc in headless Chromium with every name but the server's unresolvable (as on an
offline host): each page loads its scripts from the server itself and lists the endpoints."""

from __future__ import annotations

import pytest
from browser_harness import OFFLINE, chromium, console_errors, skip_without_chromium

skip_without_chromium()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ENDPOINTS = ("/inference_zero_shot", "/v1/audio/speech", "/v1/audio/voices", "/v1/models", "/readiness")


@pytest.fixture(scope="module")
def browser():
    with chromium(OFFLINE) as driver:
        yield driver


def loaded_resources(driver) -> list[str]:
    return driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def test_swagger_ui_lists_the_endpoints_offline(browser, server):
    browser.get(server.url + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert set(ENDPOINTS) <= paths, paths
    assert "Speak a text with a saved voice (OpenAI)" in browser.find_element(By.TAG_NAME, "body").text
    resources = loaded_resources(browser)
    assert f"{server.url}/static/docs/swagger-ui-bundle.js" in resources and f"{server.url}/openapi.json" in resources
    assert all(url.startswith(server.url) for url in resources), resources
    assert console_errors(browser) == []


def test_redoc_lists_the_endpoints_offline(browser, server):
    browser.get(server.url + "/redoc")
    WebDriverWait(browser, 60).until(lambda d: "/v1/audio/speech" in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert all(path in text for path in ENDPOINTS), text[:2000]
    resources = loaded_resources(browser)
    assert f"{server.url}/static/docs/redoc.standalone.js" in resources
    assert all(url.startswith(server.url) for url in resources), resources
    assert console_errors(browser) == []
