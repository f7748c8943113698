"""Structured logs: one JSON object per line on stderr.

Call sites pass context as ``extra={"fields": {...}}``; the formatter merges it
into the line, so logs stay greppable and machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["setup_logging", "JsonFormatter", "fields"]


def fields(**kw: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields for one log call."""
    return {"fields": kw}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line.update(extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, **static: Any) -> None:
    """Route every logger to JSON lines on stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "hpack", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
