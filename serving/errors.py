"""Every HTTP error the service returns has one shape: ``{"error": {"code", "message", ...}}``.

    ApiError            raised by the service's own code: status, code, message, field?, extras
    BodyTooLarge        raised while the request body streams in (413)
    AmbiguousBody       raised when the body has streamed in and repeats a key in one JSON
                        object (400 ``duplicate_key``, `field` names the key)
    RequestValidationError, HTTPException, PromptError, anything else
                        translated by the handlers below; an unexpected exception becomes a 500
                        `internal_error` whose body says nothing about the internals

`field` names the offending request field in the caller's terms (``candidates[2]``,
``messages[0].content``), never the framework's location tuple. Error bodies never echo the
request's values, so prompt text cannot leak through them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.text import PromptError

__all__ = [
    "AmbiguousBody",
    "ApiError",
    "BodyTooLarge",
    "error_body",
    "error_response",
    "install_error_handlers",
    "render_loc",
]

_log = logging.getLogger("promptroute.http")

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


class ApiError(Exception):
    """An error the caller can act on; `extra` keys are added to the error object."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.extra = extra


class BodyTooLarge(StarletteHTTPException):
    """The body outgrew `limits.max_body_bytes` while streaming in.

    An HTTPException, so that FastAPI's body reader re-raises it instead of turning it into a
    generic 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class AmbiguousBody(StarletteHTTPException):
    """A JSON object in the body has the same key twice (``{"a": 1, "a": 2}``).

    An HTTPException for the same reason as `BodyTooLarge`: it is raised from the body reader.
    `field` is the repeated key's path (``metadata.team``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, message)
        self.field = field


def error_body(
    code: str, message: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return {"error": error}


def render_loc(loc: Sequence[int | str]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``"messages[0].role"``; None for the body itself."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _validation_message(error: dict[str, Any]) -> str:
    kind = error.get("type")
    at_body = render_loc(error.get("loc", ())) is None
    if kind == "extra_forbidden":
        return "unknown field"
    if at_body and kind == "missing":
        return "a JSON body is required"
    if at_body and kind in ("model_attributes_type", "dict_type", "model_type"):
        if isinstance(error.get("input"), bytes | bytearray):
            return "the body must be JSON, sent with Content-Type: application/json"
        return "the body must be a JSON object"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def _api_error(exc: ApiError) -> JSONResponse:
    body = error_body(exc.code, exc.message, field=exc.field, **exc.extra)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if errors and errors[0].get("type") == "json_invalid":
        detail = (errors[0].get("ctx") or {}).get("error", "invalid JSON")
        position = errors[0]["loc"][-1] if errors[0].get("loc") else None
        where = f" at character {position}" if isinstance(position, int) else ""
        body = error_body("invalid_json", f"the body is not valid JSON: {detail}{where}")
        return JSONResponse(body, status_code=400)
    problems = [
        {"field": render_loc(e.get("loc", ())), "message": _validation_message(e)} for e in errors
    ]
    first = problems[0] if problems else {"field": None, "message": "invalid request"}
    field = first["field"]
    message = f"{field}: {first['message']}" if field else first["message"]
    body = error_body("invalid_request", message, field=field, errors=problems)
    return JSONResponse(body, status_code=422)


def _prompt_error(exc: PromptError) -> JSONResponse:
    body = error_body("invalid_request", str(exc), field=exc.field)
    return JSONResponse(body, status_code=422)


def _unparsable_body(cause: BaseException | None) -> str | None:
    """Why FastAPI's JSON decoding failed, when it gave up with a bare 400 (None otherwise)."""
    # FastAPI turns every decoding failure except JSONDecodeError into "There was an error
    # parsing the body", with the real one as __cause__; the caller deserves the reason.
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid JSON: it is not UTF-8 (at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: it is nested too deeply"
    if isinstance(cause, ValueError):  # e.g. an integer of more than 4300 digits
        return "the body is not valid JSON: it holds a number that cannot be decoded"
    return None


def _http_error(exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, AmbiguousBody):
        body = error_body("duplicate_key", str(exc.detail), field=exc.field)
        return JSONResponse(body, status_code=exc.status_code)
    code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 400 and (reason := _unparsable_body(exc.__cause__)) is not None:
        code, message = "invalid_json", reason
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # A bug: logged with its traceback here, while the caller learns nothing about internals.
    _log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "internal error; the service log has the details"),
        status_code=500,
    )


def error_response(exc: BaseException) -> JSONResponse | None:
    """The response the installed handlers give `exc`; None when it is unexpected (a 500).

    For code that answers requests outside FastAPI's router (`serving.hot_path`), so that its
    errors come out byte for byte as the router's would.
    """
    if isinstance(exc, ApiError):
        return _api_error(exc)
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, PromptError):
        return _prompt_error(exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_error(exc)
    return None


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    response = error_response(exc)
    assert response is not None  # registered only for the classes error_response knows
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON shape."""
    for kind in (ApiError, RequestValidationError, PromptError, StarletteHTTPException):
        app.add_exception_handler(kind, _handle)
    app.add_exception_handler(Exception, _unexpected)
