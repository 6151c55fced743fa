"""/docs and /redoc render every operation in a real headless Chromium with no network beyond
the service itself: Swagger UI and ReDoc come from an installed package, not a CDN."""

from __future__ import annotations

import pytest
from fakes import LiveServer, offline_page

from serving.app import create_app
from serving.config import load_settings


@pytest.fixture(scope="module")
def live_url(tiny_artifact, catalog_path):
    settings = load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path))
    server = LiveServer(create_app(settings, environ={}))
    url = server.start()
    yield url
    server.stop()


def _operations(page, url: str) -> list[tuple[str, str]]:
    spec = page.request.get(f"{url}/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


def test_swagger_ui_renders_every_operation_offline(browser, live_url) -> None:
    page, refused = offline_page(browser, live_url)
    try:
        expected = _operations(page, live_url)
        page.goto(f"{live_url}/docs")
        page.wait_for_selector(".opblock", timeout=20_000)
        shown = sorted(
            (
                block.locator(".opblock-summary-method").inner_text().strip(),
                block.locator(".opblock-summary-path").get_attribute("data-path"),
            )
            for block in page.locator(".opblock").all()
        )
        assert shown == expected
        assert page.locator(".info .title").inner_text().startswith("promptroute")
        assert refused == []
    finally:
        page.close()


def test_swagger_ui_example_request_is_tried_against_the_service(browser, live_url) -> None:
    page, refused = offline_page(browser, live_url)
    try:
        page.goto(f"{live_url}/docs")
        block = page.locator("#operations-routing-route_request_route_post")
        block.locator(".opblock-summary").click()
        block.locator(".try-out__btn").click()
        block.locator(".execute").click()
        status = block.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=20_000)
        assert status.inner_text().strip() == "200"
        assert refused == []
    finally:
        page.close()


def test_redoc_renders_every_operation_offline(browser, live_url) -> None:
    page, refused = offline_page(browser, live_url)
    try:
        expected = _operations(page, live_url)
        page.goto(f"{live_url}/redoc")
        page.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)
        sections = page.locator("[data-section-id^='operation/'] h2").all_inner_texts()
        assert len(sections) == len(expected)
        assert refused == []
    finally:
        page.close()
