"""The web playground at / in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against
the real server: the page loads without console errors, a synthesis streams and plays through Web Audio, an error
is shown to the user, the browser parses the Server-Timing header of a synthesis. LIGHTTTS_SCREENSHOT=path saves the
screenshot (docs/playground.png was made so)."""

from __future__ import annotations

import base64
import os

import pytest
from browser_harness import chromium, console_errors, skip_without_chromium
from server_harness import voice_wav

skip_without_chromium()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def load_playground(driver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert console_errors(driver) == []


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
    # the server has the saved-voices API, so the page must show its voice manager (not the upload-only fallback)
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-voices-api") == "true"
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


def test_server_timing_parses_in_the_browser(page):
    """The browser's own Server-Timing parser (PerformanceServerTiming, W3C) reads the stages our header carries,
    with the names and durations the benchmark's parser finds in it."""
    from light_tts.bench.serving.stage_table import TOTAL, parse_server_timing
    from light_tts.server.ipc.stage_trace import STAGES

    page.set_script_timeout(180)
    got = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const wav = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const form = new FormData();
        form.append('tts_text', 'Timing in the browser.');
        form.append('prompt_text', 'A short prompt.');
        form.append('stream', 'true');
        form.append('fixed_speech_tokens', '30');
        form.append('prompt_wav', new Blob([wav], {type: 'audio/wav'}), 'p.wav');
        fetch('/inference_zero_shot', {method: 'POST', body: form}).then(async r => {
            const header = r.headers.get('server-timing');
            await r.arrayBuffer();  // the resource entry is complete once its body is
            const entry = performance.getEntriesByType('resource')
                .filter(e => e.name.endsWith('/inference_zero_shot')).pop();
            done({status: r.status, header, timing: entry.serverTiming.map(t => [t.name, t.duration])});
        }).catch(e => done({error: String(e)}));
    """,
        base64.b64encode(voice_wav(seed=12)).decode(),
    )
    assert got.get("status") == 200, got
    ours = parse_server_timing(got["header"])
    assert [name for name, _ in got["timing"]] == list(ours) == [*STAGES[:-1], TOTAL]
    for name, ms in got["timing"]:
        assert ms == pytest.approx(1000 * ours[name], abs=1e-6) and ms >= 0
