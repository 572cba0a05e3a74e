"""A real Chromium for the browser tests: Debian's package, driven by
Playwright (`playwright install` cannot download here). Missing browser or
package: the tests skip, or fail under AUTOML_TEST_REQUIRE_SERVICES=1 (CI)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Screenshots of every page, kept after the run (gitignored).
ARTIFACTS_DIR = Path(__file__).parent / "artifacts"


def _need(condition: bool, message: str) -> None:
    if condition:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}, and AUTOML_TEST_REQUIRE_SERVICES=1 forbids skipping this test")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _need(sync_playwright is not None, "the playwright package is not installed (make setup-test)")
    _need(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium; make setup-test does it)")
    with sync_playwright() as playwright:  # type: ignore[misc]
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
