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


def validation_error(message: str) -> ApiError:
    """Girder's ValidationException: 400, type "validation"."""
    return ApiError(400, message, "validation")


def internal_error(message: str) -> ApiError:
    """An uncaught server exception: 500, type "internal"."""
    return ApiError(500, message, "internal")
