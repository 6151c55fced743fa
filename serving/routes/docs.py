"""/docs (Swagger UI) and /redoc served from an installed package, so they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: blank in a private network, which is
where a router usually runs. The JavaScript and CSS come from the `fastapi-offline` wheel
(its ``static/`` folder ships swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js);
only its files are used, not its app class.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "assets_dir", "install_docs"]

ASSETS_URL = "/docs-assets"

# Nothing on these pages may come from elsewhere: ReDoc's sidebar links an image on its CDN, and
# a page that tries the network from a private one hangs or leaks that the docs were opened.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:"
)
# The image the policy refuses would show as a broken icon.
_HIDE_REDOC_LOGO = "<style>img[src*='redoc.ly'], a[href*='redocly'] img {display:none}</style>"


def assets_dir() -> Path:
    """The installed folder holding Swagger UI's and ReDoc's files."""
    return Path(str(files("fastapi_offline").joinpath("static")))


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the two documentation pages and their assets to `app` (built with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} – API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers["content-security-policy"] = _CSP
        return page

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} – ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        html = bytes(page.body).decode("utf-8").replace("</head>", f"{_HIDE_REDOC_LOGO}</head>", 1)
        return HTMLResponse(html, headers={"content-security-policy": _CSP})
