"""The promptroute HTTP service: `create_app(settings)` for ASGI servers and tests, `serve()`.

Holds the request path (routes → pipeline → filters, breakers, rules, experiments → the
`models.Router`), live health, decision bookkeeping and the OpenAI-compatible gateway. Imports
`models` and `features`; never `training` or `promptroute`.
"""

from serving.app import create_app
from serving.config import Settings, load_settings
from serving.server import serve

__all__ = ["Settings", "create_app", "load_settings", "serve"]
