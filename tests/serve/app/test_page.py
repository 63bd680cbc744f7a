"""The demo page in headless Chromium: upload a face, see the landmarks and the descriptions."""

from __future__ import annotations

import shutil

import pytest

from emola.labels import EMOTIONS
from tests.serve.app.conftest import API_KEY, ARTIFACTS

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: scripts/setup.sh installs it (apt-get install chromium)"
    return path


def _submit(p, url: str, upload, height: int, **fields):
    """A headless Chromium page at ``url`` with ``upload`` chosen, ``fields`` filled (by element id) and the form
    sent with the API key; returns (browser, page)."""
    browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1100, "height": height})
    page.goto(url + "/")
    page.set_input_files("#file", str(upload))
    for element, value in {**fields, "key": API_KEY}.items():
        page.fill(f"#{element}", value)
    page.click("#submit")
    return browser, page


def test_upload_shows_landmarks_and_descriptions(server, synth_test_images):
    from playwright.sync_api import sync_playwright

    image, _ = synth_test_images[3]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    with sync_playwright() as p:
        browser, page = _submit(p, server.url, image, 800)
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        page.wait_for_function("document.getElementById('canvas').width > 0")
        emotion = page.inner_text("#emotion")
        description = page.inner_text("#emotion-description")
        # A landmark dot is drawn in pure red on the canvas (the face box in green).
        red = page.evaluate("""() => {
            const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 80 && d[i + 2] < 110) n++;
            return n; }""")
        page.screenshot(path=str(shot), full_page=True)
        status = page.inner_text("#status")
        browser.close()
    assert status == "Done."
    assert emotion in EMOTIONS and len(description) > 20
    assert red > 50, "no landmarks drawn"
    assert shot.stat().st_size > 10_000


def test_a_video_upload_shows_the_timelines_and_the_key_moments(server, recording):
    """A video through the same form: the emotion and AU timelines drawn, each key moment with its description."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page-video.png"
    with sync_playwright() as p:
        browser, page = _submit(p, server.url, recording, 1200, fps="5")
        page.wait_for_selector("#video-result:not([hidden])", timeout=180_000)
        colored = page.evaluate("""() => ["emotion-timeline", "au-timeline"].map((id) => {
            const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4)
              if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80) n++;
            return n; })""")
        moments = page.locator("#moments li").all_inner_texts()
        emotions = page.inner_text("#emotion-legend")
        aus = page.inner_text("#au-legend")
        summary = page.inner_text("#video-summary")
        status = page.inner_text("#status")
        image_shown = page.is_visible("#result")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert status == "Done." and not image_shown                  # the photo panel stays out of the way
    assert summary.startswith("8 frames read")                    # 16 frames at 10 fps, sampled at 5
    assert min(colored) > 200, colored                            # a line of colour on each timeline
    assert all(e in emotions for e in EMOTIONS) and aus.count("AU") == 6
    assert moments and all(len(m.split(". ", 1)[-1]) > 20 for m in moments), moments   # each with its description
    assert shot.stat().st_size > 10_000
