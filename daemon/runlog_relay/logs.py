"""Logging set-up: the only place handlers are added.

``configure(level, fmt)`` is called once by the CLI. ``plain`` is for people; ``json``
writes one JSON object per line with stable keys (``ts``, ``level``, ``logger``, ``msg``
and any of ``run_id``, ``key``, ``bucket``, ``attempt``, ``path`` passed through
``extra=``) for log pipelines in the cluster.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["STRUCTURED_KEYS", "JsonFormatter", "configure"]

#: Keys callers may pass in ``extra=`` that end up as JSON fields.
STRUCTURED_KEYS = ("run_id", "key", "bucket", "attempt", "path", "store", "namespace", "reason")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in STRUCTURED_KEYS:
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "plain", stream: TextIO | None = None) -> None:
    """Replace the root handlers with one that writes to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs every retry and pool event at DEBUG/WARNING; the relay reports those
    # itself with context. Quiet even when debugging: its DEBUG lines carry full request
    # URLs, and STS's AssumeRoleWithWebIdentity puts the web identity token in the URL.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
