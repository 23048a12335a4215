"""Girder-style REST errors: JSON ``{"message": ..., "type": ...}`` with a status."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client as Girder answers it."""

    def __init__(self, status: int, message: str, kind: str = "rest") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def payload(self) -> dict:
        return {"message": self.message, "type": self.kind}


class NotFoundPage(ApiError):
    """A path under no resource: the web server's own 404 page (HTML), not Girder's JSON."""

    PAGE = ("<h2>404 Not Found</h2>\n<p>Nothing matches the given URI</p>\n"
            '<p><i>Powered by <a href="https://girder.readthedocs.io">Girder</a></i></p>\n')

    def __init__(self) -> None:
        super().__init__(404, "Nothing matches the given URI")


def validation_error(message: str) -> ApiError:
    """Girder's ValidationException: 400, type "validation"."""
    return ApiError(400, message, "validation")


def internal_error(message: str) -> ApiError:
    """An uncaught server exception: 500, type "internal"."""
    return ApiError(500, message, "internal")
