"""The promptroute HTTP service: `create_app(settings)` for ASGI servers and tests, `serve()`."""

from serving.app import create_app
from serving.config import Settings, load_settings
from serving.server import serve

__all__ = ["Settings", "create_app", "load_settings", "serve"]
