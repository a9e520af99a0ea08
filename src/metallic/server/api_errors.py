"""The HTTP error type of the server and the request-body decoder.

:class:`APIError` is what the client sees, as OpenAI's ``{"error": {...}}`` object;
:func:`api_error_from` maps metallic's typed errors onto it; :func:`parse_json_body` turns the raw
bytes of a request into a dict or a 400/413.
"""

from __future__ import annotations

import json
from typing import Any

from .. import errors

ERROR_TYPES = (
    "invalid_request_error",
    "authentication_error",
    "rate_limit_error",
    "server_error",
    "not_found_error",
)


class APIError(Exception):
    """An error answered to the client as OpenAI's ``{"error": {...}}`` object.

    ``type`` defaults from ``status``: 401 authentication_error, 404 not_found_error, 429
    rate_limit_error, 5xx server_error, any other 4xx invalid_request_error.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        code: str | None = None,
    ) -> None:
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise errors.InvalidArgument(
                f"[server] APIError.status: expected an int in [400, 599], got {status!r}"
            )
        if type is None:
            type = _default_type(status)
        if type not in ERROR_TYPES:
            raise errors.InvalidArgument(
                f"[server] APIError.type: expected one of {', '.join(ERROR_TYPES)}, got {type!r}"
            )
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code

    def body(self) -> dict:
        """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _default_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def api_error_from(exc: BaseException) -> APIError:
    """Maps an exception raised while serving a request to the APIError the client sees.

    metallic's typed errors keep their message (written for users); anything else becomes a 500
    that names only the exception class (the app logs the traceback).
    """
    if isinstance(exc, APIError):
        return exc
    message = str(exc)
    if isinstance(exc, errors.ContextOverflow):
        return APIError(400, message, code="context_length_exceeded")
    if isinstance(exc, errors.NotImplementedFeature):
        return APIError(400, message, code="not_implemented")
    if isinstance(exc, errors.Busy):
        return APIError(429, message, code="server_busy")
    if isinstance(exc, (errors.OutOfMemory, errors.Cancelled, errors.Closed)):
        return APIError(503, message, code="unavailable")
    if isinstance(exc, (errors.InvalidArgument, errors.UnsupportedFormat)):
        return APIError(400, message, code="invalid_value")
    if isinstance(exc, errors.MetallicError):
        return APIError(500, message, code="internal_error")
    return APIError(
        500, f"[server] internal error: {exc.__class__.__name__}", code="internal_error"
    )


def describe(value: Any) -> str:
    """A short JSON-flavoured description of ``value`` for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}" if value.bit_length() <= 128 else "a very large integer"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = json.dumps(value[:60])
        return f"string {text}" + ("..." if len(value) > 60 else "")
    if isinstance(value, list):
        return f"array of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "object"
    return value.__class__.__name__


def parse_json_body(raw: bytes, max_bytes: int | None = None) -> dict:
    """Decodes a request body: 413 when over ``max_bytes``, 400 unless it is a JSON object.

    NaN and Infinity literals are refused (they are not JSON); so are nestings too deep for
    the decoder and integers too long to convert.
    """
    where = "[request] body"
    if max_bytes is not None and len(raw) > max_bytes:
        raise APIError(
            413,
            f"{where}: expected at most {max_bytes} bytes, got {len(raw)}",
            code="request_too_large",
        )
    if not bytes(raw).strip():
        raise APIError(400, f"{where}: expected a JSON object, got an empty body")

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        obj = json.loads(bytes(raw), parse_constant=refuse)
    except RecursionError:
        raise APIError(400, f"{where}: expected valid JSON, got one nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise APIError(400, f"{where}: expected valid JSON, got an error: {exc}") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"{where}: expected a JSON object, got {describe(obj)}")
    return obj
