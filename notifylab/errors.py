"""The errors notifylab raises on purpose, each with a message meant for the user."""

from __future__ import annotations


class NotifylabError(Exception):
    """Base class: ``str(error)`` is safe to show to whoever caused it."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict:
        body = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body


class BadRequest(NotifylabError):
    """Malformed or out-of-range input."""


class Unauthorized(NotifylabError):
    status = 401


class NotFound(NotifylabError):
    status = 404


class Conflict(NotifylabError):
    status = 409


class Unprocessable(NotifylabError):
    """Well-formed, but in conflict with what was asked before (an
    Idempotency-Key reused for a different request)."""

    status = 422


class TooManyRequests(NotifylabError):
    """A limit was reached (failed logins, active operations); the message
    says which, and ``retry_after`` (seconds) when waiting will help."""

    status = 429

    def __init__(self, message: str, field: str | None = None, retry_after: int | None = None):
        super().__init__(message, field)
        self.retry_after = retry_after


class ServiceUnavailable(NotifylabError):
    """RabbitMQ or Redis cannot be reached; the message names the URL."""

    status = 503
