"""One error tree for server, client and CLI (stdlib only).

A domain error raised anywhere becomes an HTTP status with a JSON body
``{"code", "message"}`` in the API; the client raises the same class again from
the code, and the CLI prints one line and exits with ``exit_code``.
"""

from __future__ import annotations


class NcloudError(Exception):
    """Base of every error a user can see."""

    code = "error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(NcloudError):
    """The request itself is wrong: a bad name, a negative number, bad JSON."""

    code, http_status = "invalid_input", 422


class Unauthenticated(NcloudError):
    """No token, or a wrong, unknown or revoked one."""

    code, http_status = "unauthenticated", 401


class Forbidden(NcloudError):
    """A valid token that may not do this (not an admin, not in that tenant)."""

    code, http_status = "forbidden", 403


class NotFound(NcloudError):
    """No such object in this tenant (also for other tenants' objects)."""

    code, http_status = "not_found", 404


class Conflict(NcloudError):
    """The object exists already, or its state does not allow this now."""

    code, http_status = "conflict", 409


class QuotaExceeded(Conflict):
    """The cluster or the tenant's reservation cannot hold what was asked."""

    code = "quota_exceeded"


class PayloadTooLarge(NcloudError):
    """A request body over the configured limit."""

    code, http_status = "payload_too_large", 413


class SchemaMismatch(NcloudError):
    """The metadata store was written by another version of ncloud."""

    code, http_status = "schema_mismatch", 500


class ServerUnreachable(NcloudError):
    """The client could not connect to the API at all."""

    code, http_status = "server_unreachable", 503


class ServerError(NcloudError):
    """The server failed on its side; details are in its log."""

    code, http_status = "server_error", 500


class Unavailable(NcloudError):
    """The service is up but cannot take this now (overloaded, starting)."""

    code, http_status = "unavailable", 503


class StorageFull(NcloudError):
    """The storage a write needs has no space left; nothing of that write was kept."""

    code, http_status = "storage_full", 507


class TooManyRequests(NcloudError):
    """Too many failed attempts from one place: wait `retry_after_s` (sent as Retry-After)."""

    code, http_status = "too_many_requests", 429

    def __init__(self, message: str = "", retry_after_s: int = 60) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UsageError(NcloudError):
    """The command line itself is wrong (exit code 2)."""

    code, http_status, exit_code = "usage", 400, 2


def _all_subclasses(cls: type[NcloudError]) -> list[type[NcloudError]]:
    found: list[type[NcloudError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


_ALL: list[type[NcloudError]] = [NcloudError, *_all_subclasses(NcloudError)]
ERRORS_BY_CODE: dict[str, type[NcloudError]] = {cls.code: cls for cls in _ALL}


def error_from_body(status: int, body: object) -> NcloudError:
    """Rebuild the server's error from an HTTP status and its JSON body."""
    if isinstance(body, dict) and body.get("code") in ERRORS_BY_CODE:
        return ERRORS_BY_CODE[body["code"]](str(body.get("message", "")))
    by_status = {
        401: Unauthenticated,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        413: PayloadTooLarge,
        422: InvalidInput,
        429: TooManyRequests,
        503: Unavailable,
        507: StorageFull,
    }
    cls = by_status.get(status, ServerError)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return cls(body["message"])
    return cls(f"HTTP {status}: {str(body)[:200]}")
