"""structlog configuration: JSON lines in production, pretty output in a terminal.

Context (request id, agency, bill, channel) is bound with contextvars so every line a
request writes carries it without passing a logger around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.settings import LogSettings

# Keys whose values must never reach a log line (personal data, secrets).
_REDACT = frozenset(
    {"id_number", "payer_id_number", "secret", "api_secret", "password", "authorization", "sign"}
)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in _REDACT.intersection(event):
        event[key] = "***"
    return event


class _Stderr:
    """Whatever `sys.stderr` is at write time, not at configure time.

    Binding the stream once breaks when it is swapped later (pytest's per-test capture
    closes the stream that was current when an app configured logging).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(settings: LogSettings) -> None:
    use_json = settings.json if settings.json is not None else not sys.stderr.isatty()
    level = logging.getLevelNamesMapping().get(settings.level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # PrintLogger only calls write() and flush(); it is typed as wanting a full TextIO.
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,  # tests reconfigure per app,
    )
    # Route stdlib logging (uvicorn, alembic, sqlalchemy) through the same renderer.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],  # whose line it is
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our access log line carries the request id; uvicorn's would not.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request line at INFO, query string included (which may carry
    # personal data); our own calls log what matters with context instead.
    # The PDF font subsetter (fontTools, under fpdf2) narrates every table and glyph list at
    # INFO, lines of many kilobytes: longer than a pipe writes atomically, so lines of
    # processes sharing a stderr interleaved into invalid JSON. Only its problems matter.
    for name in ("httpx", "httpcore", "fontTools", "fpdf"):
        logging.getLogger(name).setLevel(logging.WARNING)
