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

from tests.serve.browser import chromium_missing, generate_on_page, headless_chromium
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
        driver.execute_script("document.getElementById('count').max = 1000;")
        box = driver.find_element(By.ID, "count")
        box.clear()
        box.send_keys("1000")
        driver.find_element(By.ID, "generate").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "error").text)
        assert "count must be at most" in driver.find_element(By.ID, "error").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid img")) == 6
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "422" not in e["message"]]
        assert errors == []  # no script errors, no blocked resources (CSP)
    screenshot = Image.open(shot)
    assert screenshot.size[0] > 500 and screenshot.getextrema() != ((255, 255),) * 3  # a rendered page
