"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium.

The browser may reach loopback only: every host name other than 127.0.0.1 resolves to
nothing, and its background services (updates, sync, safe browsing, metrics) are off.
"""

from __future__ import annotations

import shutil

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        return ("Debian's chromium and chromium-driver are not installed: run scripts/install-root-deps"
                " as root (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install)"
    return None


def chromium(width: int = 1280, height: int = 1800):
    """A headless Chromium under selenium (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=options)
