"""How the service's log lines look: uvicorn's text format, or one JSON object per line.

JSON lines carry ``ts``, ``level``, ``logger``, ``message`` and, where the line is about one
request, ``request_id`` (and the other fields passed with ``extra=``), so a log pipeline can
join them with the decision log and the response headers.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

from serving.config import LogFormat

__all__ = ["JsonFormatter", "log_config"]

# LogRecord's own attributes; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; exceptions as a ``exception`` string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_config(fmt: LogFormat = "text") -> dict[str, Any]:
    """uvicorn's logging config plus the service's "promptroute.*" loggers, in `fmt`."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["promptroute"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    if fmt == "json":
        for name in ("default", "access"):
            config["formatters"][name] = {"()": "serving.log_format.JsonFormatter"}
    return config
