"""Logging set-up: human-readable text, or one JSON object per line for log shippers.

``--log-format json`` (or ``DEFECTSCAN_LOG_FORMAT=json``) writes records as JSON with
``time``, ``level``, ``logger`` and ``message``, plus the inspection context when a record
carries it in ``extra``: ``inspection_id``, ``sha256``, ``line``, ``camera``,
``model_version``. Passwords inside URLs (``user:PASSWORD@host``, and secret query parameters
such as ``?password=``) are masked in every message, in both formats::

    logger.info("stored", extra={"inspection_id": 42, "line": "line3", "camera": "cam-1"})
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from defectscan.masking import mask_secrets

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "SecretMaskingFormatter",
    "configure_logging",
    "mask_secrets",
    "resolve_log_format",
]

#: ``extra`` keys copied into JSON records when present.
CONTEXT_FIELDS: tuple[str, ...] = (
    "inspection_id",
    "sha256",
    "line",
    "camera",
    "model_version",
    "flow_run_id",
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "defectscan"


class SecretMaskingFormatter(logging.Formatter):
    """The text formatter, with URL passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, secrets masked."""
        return mask_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, inspection context."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            out["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def resolve_log_format(option: str | None = None) -> str:
    """The format to use: ``option``, else the settings' ``log_format``, else ``text``.

    A broken plant file must not stop ``defectscan config check`` from running, so settings
    that fail to load fall back to ``DEFECTSCAN_LOG_FORMAT`` alone.
    """
    if option:
        return option
    from defectscan.config import get_settings
    from defectscan.errors import DefectscanError

    try:
        return get_settings().log_format
    except (DefectscanError, ValueError):
        return os.environ.get("DEFECTSCAN_LOG_FORMAT", "text")


def configure_logging(
    level: int | str = logging.WARNING, fmt: str | None = "text", *, stream: TextIO | None = None
) -> None:
    """Send the root logger's records to ``stream`` (stderr) as text or JSON; idempotent."""
    if fmt not in (None, "text", "json"):
        from defectscan.errors import ConfigError

        msg = f"log format {fmt!r}: use text or json"
        raise ConfigError(msg)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(SecretMaskingFormatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
