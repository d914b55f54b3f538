"""Errors are types (错误类型); the web shell turns each into an RFC 9457 problem document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldError:
    """One thing wrong with one input field: where it is and why."""

    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


@dataclass(eq=False)
class CityOSError(Exception):
    """Base of every error a service function raises on purpose."""

    detail: str = ""
    errors: list[FieldError] = field(default_factory=list)
    status: int = 400
    title: str = "Bad request"
    type_slug: str = "bad-request"
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail or self.title


class Invalid(CityOSError):
    """Input fails validation; names the field and the reason (422)."""

    def __init__(self, field_name: str, reason: str, *more: FieldError) -> None:
        errs = [FieldError(field_name, reason), *more]
        super().__init__(
            detail=f"{field_name}: {reason}",
            errors=errs,
            status=422,
            title="Invalid input",
            type_slug="invalid",
        )

    @classmethod
    def many(cls, errors: list[FieldError]) -> Invalid:
        first, *rest = errors
        return cls(first.field, first.reason, *rest)


class BadRequest(CityOSError):
    def __init__(self, detail: str, field_name: str | None = None) -> None:
        errs = [FieldError(field_name, detail)] if field_name else []
        super().__init__(detail=detail, errors=errs, status=400, title="Bad request")


class Unauthorized(CityOSError):
    """No or bad credentials (401)."""

    def __init__(self, detail: str = "authentication required / 需要登录") -> None:
        super().__init__(detail=detail, status=401, title="Unauthorized", type_slug="unauthorized")


class Forbidden(CityOSError):
    """Authenticated, but the access decision point says no (403)."""

    def __init__(self, detail: str = "not allowed / 无权访问") -> None:
        super().__init__(detail=detail, status=403, title="Forbidden", type_slug="forbidden")


class NotFound(CityOSError):
    def __init__(self, what: str, key: object) -> None:
        super().__init__(
            detail=f"{what} {key!s} not found / 未找到", status=404, title="Not found",
            type_slug="not-found",
        )


class Conflict(CityOSError):
    def __init__(self, detail: str, field_name: str | None = None) -> None:
        errs = [FieldError(field_name, detail)] if field_name else []
        super().__init__(
            detail=detail, errors=errs, status=409, title="Conflict", type_slug="conflict"
        )


class Locked(CityOSError):
    """Account locked after repeated failed logins (423)."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(
            detail=detail, status=423, title="Locked", type_slug="locked",
            extra={"retry_after": retry_after},
        )


class TooLarge(CityOSError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            detail=f"request body larger than {limit} bytes / 请求体过大",
            status=413, title="Payload too large", type_slug="too-large",
        )
