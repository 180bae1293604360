"""The errors a request can end in, each with its HTTP status and Kaltura error code (SPEC §6).

Every layer raises these; only `app` turns them into responses. The message is one line that is safe to show a
client: it never carries a path on disk, a secret or a traceback.
"""

from __future__ import annotations


class MediaProxyError(Exception):
    status = 500
    kaltura_code = 0
    kaltura_description = "INTERNAL_ERROR"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, whatever the cause contained


class BadRequest(MediaProxyError):
    """A parameter is malformed or contradictory; the message names it."""

    status = 400
    kaltura_code = 25
    kaltura_description = "INVALID_PARAMETER"


class Forbidden(MediaProxyError):
    status = 403
    kaltura_code = 3
    kaltura_description = "ACCESS_DENIED"


class NotFound(MediaProxyError):
    """No such URL service (the path does not name thumbnail, flvclipper or raw)."""

    status = 404
    kaltura_code = 1
    kaltura_description = "NOT_FOUND"


class EntryNotFound(NotFound):
    kaltura_code = 1
    kaltura_description = "ENTRY_NOT_FOUND"


class FlavorNotFound(NotFound):
    kaltura_code = 6
    kaltura_description = "FLAVOR_NOT_FOUND"


class MethodNotAllowed(MediaProxyError):
    status = 405
    kaltura_code = 25
    kaltura_description = "METHOD_NOT_ALLOWED"
    headers = {"Allow": "GET, HEAD, OPTIONS"}


class TooLarge(MediaProxyError):
    """The original is over the configured byte or pixel limits."""

    status = 413
    kaltura_code = 17
    kaltura_description = "PROCESSING_FAILED"


class Unprocessable(MediaProxyError):
    """The original cannot be decoded."""

    status = 422
    kaltura_code = 17
    kaltura_description = "PROCESSING_FAILED"


class UpstreamFailed(MediaProxyError):
    status = 502
    kaltura_code = 5
    kaltura_description = "UPSTREAM_FAILED"


class UpstreamTimeout(UpstreamFailed):
    status = 504


class ProcessingTimeout(MediaProxyError):
    """The answer took longer than the configured per-request limit."""

    status = 504
    kaltura_code = 17
    kaltura_description = "PROCESSING_TIMEOUT"


class RangeNotSatisfiable(MediaProxyError):
    """A Range request none of whose bytes exist (RFC 9110 §15.5.17)."""

    status = 416
    kaltura_code = 25
    kaltura_description = "INVALID_PARAMETER"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


class Overloaded(MediaProxyError):
    status = 503
    kaltura_code = 46
    kaltura_description = "SERVICE_OVERLOADED"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}
