"""A headless Chromium driven by Selenium: the admin's browser specs and `./run screenshots`.

It uses Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them where
missing). Selenium is given both paths, so it never tries to download a browser or a
driver of its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import wait_until

# Debian's /usr/bin/chromium is a shell wrapper; the binary behind it starts faster.
BROWSERS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "chromedriver")
WIDTH, HEIGHT = 1600, 1000  # the width the issue found the error column cut at


def _which(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why no browser can be had here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _which(BROWSERS) is None or _which(DRIVERS) is None:
        return (
            "no Chromium and chromedriver on this machine "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    return None


def start(width: int = WIDTH, height: int = HEIGHT) -> Any:
    """A headless Chromium of `width` x `height` CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSERS) or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace to sandbox with
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(_which(DRIVERS) or ""))
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver: Any, find: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """`find()`'s first truthy answer; Selenium's lookups that raise count as not yet."""
    from selenium.common.exceptions import WebDriverException

    def attempt() -> Any:
        try:
            return find()
        except WebDriverException:
            return None

    return wait_until(attempt, timeout, interval=0.05, what=f"{what} at {driver.current_url}")


def log_in(driver: Any, base_url: str, username: str, password: str) -> None:
    """Through the admin's own login form, as a person would."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base_url}/admin/login/?next=/admin/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, lambda: driver.find_element(By.ID, "user-tools"), "the logged-in admin")


def inner_width(driver: Any) -> int:
    return int(driver.execute_script("return window.innerWidth"))


def right_edge(driver: Any, element: Any) -> float:
    return float(
        driver.execute_script("return arguments[0].getBoundingClientRect().right", element)
    )


def screenshot(driver: Any, path: Path, width: int = WIDTH) -> None:
    """The whole page, `width` pixels wide, as a PNG."""
    driver.set_window_size(width, 600)
    chrome = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(height, 4000) + chrome)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
