"""The web playground at / in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against
the real server: the page loads without console errors, a synthesis streams and plays through Web Audio, an error
is shown to the user. LIGHTTTS_SCREENSHOT=path saves the screenshot (docs/playground.png was made so)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

import pytest

from server_harness import voice_wav

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install -y chromium "
                "chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (the test extra has selenium; chromium comes from apt)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Chromium's own network use is switched off: this machine reaches nothing outside.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--autoplay-policy=no-user-gesture-required", "--window-size=900,660")


@contextmanager
def chromium():
    """Headless Chromium driven by Selenium, with a profile of its own (removed afterwards)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="lighttts-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def load_playground(driver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert console_errors(driver) == []


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def player_state(driver) -> dict[str, str]:
    return driver.execute_script("return Object.assign({}, document.getElementById('player').dataset)")


@pytest.fixture(scope="module")
def page(browser, server, tmp_path_factory):
    """The playground, loaded, with a prompt file and its transcript filled in."""
    prompt = tmp_path_factory.mktemp("playground") / "prompt.wav"
    prompt.write_bytes(voice_wav(seed=11))
    load_playground(browser, server.url)
    browser.find_element(By.ID, "prompt-wav").send_keys(str(prompt))
    browser.find_element(By.ID, "prompt-text").send_keys("A short prompt.")
    return browser


def set_text(driver, text: str) -> None:
    box = driver.find_element(By.ID, "tts-text")
    box.clear()
    if text:
        box.send_keys(text)


def test_synthesis_streams_and_plays(page):
    set_text(page, "Hello there, from the playground.")
    page.find_element(By.ID, "speak").click()
    WebDriverWait(page, 120).until(lambda d: player_state(d)["state"] in ("playing", "done", "error"))
    state = player_state(page)
    assert state["state"] in ("playing", "done"), (state, page.find_element(By.ID, "error").text)
    assert int(state["bytes"]) > 0 and state["audioContext"] == "running"
    assert int(state["ttfaMs"]) > 0
    assert page.find_element(By.ID, "ttfa").text == f"{state['ttfaMs']} ms"
    assert page.find_element(By.ID, "error").is_displayed() is False
    screenshot = os.environ.get("LIGHTTTS_SCREENSHOT")
    if screenshot:
        page.save_screenshot(screenshot)
    WebDriverWait(page, 120).until(lambda d: player_state(d)["state"] == "done")  # every buffer played to its end
    assert int(player_state(page)["bytes"]) % 2 == 0
    assert console_errors(page) == []


def test_empty_text_shows_the_servers_error(page):
    set_text(page, "")
    page.find_element(By.ID, "speak").click()
    WebDriverWait(page, 30).until(lambda d: player_state(d)["state"] == "error")
    error = page.find_element(By.ID, "error")
    assert error.is_displayed() and "bad_text" in error.text and "HTTP 400" in error.text, error.text


def test_saved_voices_are_managed_on_the_page(page, server):
    if page.find_element(By.TAG_NAME, "body").get_attribute("data-voices-api") != "true":
        pytest.skip("this server has no /v1/audio/voices (the saved-voices API of issue 11); the page falls back "
                    "to the upload form, which the tests above use")
    page.find_element(By.ID, "voice-name").send_keys("playground voice")
    page.find_element(By.ID, "save-voice").click()
    WebDriverWait(page, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#voice-list li"))
    item = page.find_element(By.CSS_SELECTOR, "#voice-list li")
    assert "playground voice" in item.text
    assert page.find_element(By.ID, "voice-select").get_attribute("value") == item.get_attribute("data-voice-id")
    set_text(page, "Spoken with a saved voice.")
    page.find_element(By.ID, "speak").click()
    WebDriverWait(page, 120).until(lambda d: player_state(d)["state"] in ("playing", "done", "error"))
    assert player_state(page)["state"] in ("playing", "done"), page.find_element(By.ID, "error").text
    WebDriverWait(page, 120).until(lambda d: player_state(d)["state"] == "done")
    item.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(page, 30).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#voice-list li"))
