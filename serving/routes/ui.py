"""/ui: the operator's dashboard, static files shipped in the package (no CDN, no build step).

The page reads the service's own JSON endpoints (/activity, /models, /experiments, /artifact)
and calls the admin endpoints with a key the operator types in; it holds no state of its own.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["UI_URL", "install_ui", "ui_dir"]

UI_URL = "/ui"


def ui_dir() -> Path:
    """The installed folder holding index.html, dashboard.js and dashboard.css."""
    return Path(str(files("serving").joinpath("ui")))


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ (``/ui`` and ``/`` redirect there)."""
    app.mount(UI_URL, StaticFiles(directory=ui_dir(), html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{UI_URL}/")
