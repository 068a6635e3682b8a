"""Driving the page in Debian's headless Chromium through Selenium (chromedriver from the same package)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, no sandbox (containers run as root), and nothing that reaches the network on its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium_missing() -> Optional[str]:
    """Why the browser test cannot run here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install -y chromium chromium-driver)"
    return None


@contextmanager
def headless_chromium(profile_dir: Path, width: int = 1000, height: int = 720) -> Iterator[Any]:
    """A Selenium driver of a fresh headless Chromium profile; quits the browser afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    # Both paths given: Selenium does not run its driver manager (which would go to the network).
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_for_grid(driver: Any, count: int, seeds: Optional[list[int]] = None, timeout_s: float = 30.0) -> list[Any]:
    """The grid's <img>s once it shows ``count`` decoded images (with these seeds, when given) and the
    buttons are enabled again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def grid_ready(d: Any) -> Any:
        images = d.find_elements(By.CSS_SELECTOR, "#grid img")
        loaded = d.execute_script("return Array.from(document.querySelectorAll('#grid img'))"
                                  ".every(i => i.complete && i.naturalWidth > 0) && "
                                  "!document.getElementById('generate').disabled;")
        if len(images) != count or not loaded:
            return False
        if seeds is not None and [int(i.get_attribute("data-seed")) for i in images] != seeds:
            return False
        return images

    return WebDriverWait(driver, timeout_s).until(grid_ready)


def generate_on_page(driver: Any, url: str, class_name: Optional[str], seed: int, count: int,
                     truncation: Optional[float] = None, screenshot: Optional[Path] = None,
                     timeout_s: float = 30.0) -> list[Any]:
    """Open the page, wait for its first-load images, choose the class, type seed and count, press Generate;
    return the grid's <img>s."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout_s).until(
        lambda d: d.execute_script("return document.getElementById('grid').dataset.ready === 'true' && "
                                   "!document.getElementById('generate').disabled;"))
    if class_name is not None:
        Select(driver.find_element(By.ID, "class")).select_by_visible_text(class_name)
    for field, value in (("seed", seed), ("count", count)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    if truncation is not None:  # a range input takes its value from script, as a user's drag would set it
        driver.execute_script("const s = document.getElementById('truncation'); s.value = arguments[0];"
                              "s.dispatchEvent(new Event('input'));", str(truncation))
    driver.find_element(By.ID, "generate").click()
    images = wait_for_grid(driver, count, list(range(seed, seed + count)), timeout_s)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return images
