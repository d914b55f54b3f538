"""Logging that never prints a secret or an ID number (日志脱敏)."""

from __future__ import annotations

import logging
import re

from cityos.core.audit import scrub

_BEARER = re.compile(r"(?i)(bearer\s+|cos_[0-9a-f]{12}_)[A-Za-z0-9._~+/=-]+")
_PASSWORD = re.compile(r"(?i)(password|passwd|secret|token)(['\"]?\s*[:=]\s*['\"]?)[^\s'\"&,}]+")


def redact(text: str) -> str:
    """Mask ID numbers, phones, bearer tokens, API keys and password=... in free text."""
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _PASSWORD.sub(r"\1\2[redacted]", text)
    return str(scrub(text))


class RedactingFilter(logging.Filter):
    """Applied to every handler, so no library's log line can leak what ours would not."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup(level: str = "INFO") -> None:
    """Configure the root logger once, with redaction on every handler."""
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
