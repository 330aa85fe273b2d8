"""The page of `python -m export --web` in headless Chromium, through Playwright: for the tests and the benchmark.

    >>> from export import web, web_browser
    >>> httpd = web.server("artifacts", port=0)              # export.page_server, served by web_browser.serving
    >>> with web_browser.chromium() as browser:              # Unavailable, with the reason, when absent
    ...     tab = web_browser.open_tab(browser, "http://127.0.0.1:8000/")
    ...     tab.page.locator("#digit").text_content(); tab.outside, tab.errors

It drives the system's Chromium (Debian: `apt-get install chromium`; elsewhere $MNIST_ZOO_CHROMIUM), since
`playwright install` cannot download browsers on an offline machine. Every request a tab makes outside
127.0.0.1 is refused and listed in `tab.outside`: the page must work with the network unplugged.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from export.page_server import HOST, Server

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "Debian: apt-get install chromium; elsewhere set MNIST_ZOO_CHROMIUM to a Chromium or Chrome"


class Unavailable(Exception):
    """No Chromium or no Playwright here; the message says which and how to get it (a skip reason)."""


def executable() -> str:
    """The Chromium to drive: $MNIST_ZOO_CHROMIUM, else the first of BROWSERS on the PATH."""
    path = os.environ.get("MNIST_ZOO_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not path:
        raise Unavailable(f"no Chromium here ({INSTALL})")
    return path


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (playwright.sync_api.Browser), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise Unavailable("Playwright is not installed (pip install 'mnist-zoo[web]')") from None
    path = executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    page: object  # playwright.sync_api.Page
    outside: list[str] = field(default_factory=list)  # requests refused: not to 127.0.0.1
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and console errors of the page


def open_tab(browser, url: str, **context) -> Tab:
    """A new tab (in its own context) on `url`, refusing requests outside 127.0.0.1."""
    ctx = browser.new_context(**context)
    tab = Tab(ctx.new_page())

    def guard(route) -> None:
        if urlsplit(route.request.url).hostname == HOST:
            route.continue_()
        else:
            tab.outside.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.page.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
    tab.page.goto(url)
    return tab


@contextmanager
def serving(httpd: Server) -> Iterator[str]:
    """Serve `httpd` (export.web.server) in a thread; yields its URL."""
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
