"""The errors a request can end in: one table of HTTP statuses and Kaltura error codes (SPEC §6).

Every layer raises these; only `app` turns them into responses. The message is one line that is safe to show a
client: it never carries a path on disk, a secret, a KS or a traceback.
"""

from __future__ import annotations


class MediaProxyError(Exception):
    status = 500
    kaltura_code = 0
    kaltura_description = "INTERNAL_ERROR"
    headers: dict[str, str] = {}

    def __init_subclass__(cls, *, status: int | None = None, code: int | None = None,
                          description: str | None = None, **options) -> None:
        super().__init_subclass__(**options)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.kaltura_code = code
        if description is not None:
            cls.kaltura_description = description

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, whatever the cause contained


class BadRequest(MediaProxyError, status=400, code=25, description="INVALID_PARAMETER"):
    """A parameter is malformed or contradictory; the message names it."""


class MethodNotAllowed(MediaProxyError, status=405, code=25, description="METHOD_NOT_ALLOWED"):
    headers = {"Allow": "GET, HEAD, OPTIONS"}


class Forbidden(MediaProxyError, status=403, code=3, description="ACCESS_DENIED"):
    """No KS where the partner needs one, or a KS without the privilege for this."""


class BadKs(Forbidden, code=7, description="INVALID_KS"):
    """A KS that cannot be read, or is signed with none of its partner's secrets."""


class ExpiredKs(Forbidden, code=31, description="EXPIRED_KS"):
    pass


class WrongPartnerKs(Forbidden, code=32, description="INVALID_KS_PARTNER"):
    """A genuine KS of another partner than the URL's."""


class IpRestricted(Forbidden, code=34, description="IP_RESTRICTED"):
    pass


class NotFound(MediaProxyError, status=404, code=1, description="NOT_FOUND"):
    """Nothing answers this path (no such URL service, no such entry or flavor: see the subclasses)."""


class EntryNotFound(NotFound, description="ENTRY_NOT_FOUND"):
    pass


class FlavorNotFound(NotFound, code=6, description="FLAVOR_NOT_FOUND"):
    pass


class TooLarge(MediaProxyError, status=413, code=17, description="PROCESSING_FAILED"):
    """The original is over the configured byte or pixel limits (or a request body over its limit)."""


class RangeNotSatisfiable(MediaProxyError, status=416, code=25, description="INVALID_PARAMETER"):
    """A Range request none of whose bytes exist (RFC 9110 §15.5.17)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


class Unprocessable(MediaProxyError, status=422, code=17, description="PROCESSING_FAILED"):
    """The original cannot be decoded."""


class UpstreamFailed(MediaProxyError, status=502, code=5, description="UPSTREAM_FAILED"):
    pass


class UpstreamTimeout(UpstreamFailed, status=504):
    pass


class ProcessingTimeout(MediaProxyError, status=504, code=17, description="PROCESSING_TIMEOUT"):
    """The answer took longer than the configured per-request limit."""


class Overloaded(MediaProxyError, status=503, code=46, description="SERVICE_OVERLOADED"):
    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}
