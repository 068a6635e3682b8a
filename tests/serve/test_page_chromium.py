"""The page in real headless Chromium: choose a class, press Generate, the grid shows that class's images.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them). Without them the test
is skipped, unless TRANSGAN_REQUIRE_BROWSER=1 (set by .ci/run), where their absence is a failure.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.serve.browser import chromium_missing, generate_on_page, headless_chromium, wait_for_grid
from transgan.eval.generate import sample
from transgan.eval.sampling import to_uint8

missing = chromium_missing()
if missing and os.environ.get("TRANSGAN_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"TRANSGAN_REQUIRE_BROWSER=1 but {missing}")
pytestmark = pytest.mark.skipif(missing is not None, reason=missing or "")


def test_choose_a_class_press_generate_and_the_grid_shows_its_images(digits_server, digits_model, tmp_path):
    from selenium.webdriver.common.by import By

    shot = tmp_path / "page.png"
    with headless_chromium(tmp_path / "profile") as driver:
        images = generate_on_page(driver, digits_server.url, class_name="7", seed=20, count=6, truncation=2.0,
                                  screenshot=shot)
        assert [img.get_attribute("data-class") for img in images] == ["7"] * 6
        assert [img.get_attribute("data-seed") for img in images] == [str(s) for s in range(20, 26)]
        # The pictures in the page are the model's images for class 7, seeds 20..25, |z| <= 2.
        shown = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(img.get_attribute("src").split(",")[1]))))
                          for img in images])
        expected = to_uint8(sample(digits_model.G, list(range(20, 26)), [7] * 6, 2.0))[:, 0].numpy()
        assert np.array_equal(shown, expected)
        assert driver.find_element(By.ID, "truncation-value").text == "2.00"
        assert "6 images" in driver.find_element(By.ID, "status").text
        assert driver.find_element(By.ID, "error").text == ""

        # A count beyond the server's limit: the page shows the server's 422 message, the grid stays.
        submit_a_count_over_the_limit(driver)
        assert "count: must be at most" in driver.find_element(By.ID, "error").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid img")) == 6
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "422" not in e["message"]]
        assert errors == []  # no script errors, no blocked resources (CSP)
    screenshot = Image.open(shot)
    assert screenshot.size[0] > 500 and screenshot.getextrema() != ((255, 255),) * 3  # a rendered page


def submit_a_count_over_the_limit(driver):
    """Lift the page's own count limit, submit 1000 and wait for the server's error; returns the count box."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.getElementById('count').max = 1000;")
    box = driver.find_element(By.ID, "count")
    box.clear()
    box.send_keys("1000")
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "error").text)
    return box


def shown_pixels(img) -> np.ndarray:
    """The PNG an <img> shows (a data URL), as an array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(img.get_attribute("src").split(",")[1]))))


def test_first_load_new_button_downloads_permalink_viewer_and_stale_error(digits_server, digits_model, tmp_path):
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    G = digits_model.G
    with headless_chromium(tmp_path / "profile") as driver:
        # A permalink: the page restores class, seed, count and truncation from the URL and shows the images at once.
        driver.get(digits_server.url + "?class=4&seed=31&count=3&truncation=1.5")
        images = wait_for_grid(driver, 3, [31, 32, 33])
        assert Select(driver.find_element(By.ID, "class")).first_selected_option.text == "4"
        assert driver.find_element(By.ID, "truncation-value").text == "1.50"
        expected = to_uint8(sample(G, [31, 32, 33], [4] * 3, 1.5))[:, 0].numpy()
        assert np.array_equal(np.stack([shown_pixels(i) for i in images]), expected)

        # Generating writes the request back into the URL; loading that URL shows the same images.
        generate_on_page(driver, digits_server.url, class_name="2", seed=50, count=2, truncation=2.0)
        link = driver.find_element(By.ID, "permalink").get_attribute("href")
        assert link == driver.current_url and "class=2" in link and "seed=50" in link and "truncation=2" in link
        driver.get(link)
        again = wait_for_grid(driver, 2, [50, 51])
        assert np.array_equal(np.stack([shown_pixels(i) for i in again]),
                              to_uint8(sample(G, [50, 51], [2, 2], 2.0))[:, 0].numpy())

        # Downloads: each image's link is its PNG; the grid link is /api/generate.png for the same request.
        one = driver.find_elements(By.CSS_SELECTOR, "#grid a.download-one")[1]
        assert one.get_attribute("download") == "class2-seed51.png"
        assert one.get_attribute("href") == again[1].get_attribute("src")
        grid_link = driver.find_element(By.ID, "download-grid")
        assert grid_link.is_displayed() and grid_link.get_attribute("download") == "grid.png"
        with urllib.request.urlopen(grid_link.get_attribute("href"), timeout=30) as response:
            grid = np.asarray(Image.open(io.BytesIO(response.read())))
        assert np.array_equal(grid[2:18, 2:18, 0], to_uint8(sample(G, [50], [2], 2.0))[0, 0].numpy())

        # A larger view on click, closed by another click.
        again[0].click()
        viewer = driver.find_element(By.ID, "viewer")
        WebDriverWait(driver, 10).until(lambda d: viewer.get_attribute("open") is not None)
        assert driver.find_element(By.ID, "viewer-image").get_attribute("src") == again[0].get_attribute("src")
        assert driver.find_element(By.ID, "viewer-image").size["width"] >= 4 * again[0].size["width"]
        viewer.click()
        WebDriverWait(driver, 10).until(lambda d: viewer.get_attribute("open") is None)

        # "New": a random seed and new images of the same class.
        driver.find_element(By.ID, "new").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "seed").get_attribute("value") != "50")
        seed = int(driver.find_element(By.ID, "seed").get_attribute("value"))
        fresh = wait_for_grid(driver, 2, [seed, seed + 1])
        assert np.array_equal(shown_pixels(fresh[0]), to_uint8(sample(G, [seed], [2], 2.0))[0, 0].numpy())
        assert f"seed={seed}" in driver.current_url
        assert "truncation" in driver.find_element(By.ID, "truncation-hint").text.lower()

        # Stale error: a server error, then a submit the browser blocks (count below 1) clears it.
        box = submit_a_count_over_the_limit(driver)
        box.clear()
        box.send_keys("0")
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "error").text == "")
        assert driver.execute_script("return document.getElementById('count').validity.rangeUnderflow;")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "422" not in e["message"]]
        assert errors == []
