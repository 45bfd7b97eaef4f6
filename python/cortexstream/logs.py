"""The core's structured log records, delivered to Python :mod:`logging`.

Records arrive on the ``cortexstream`` logger's children named after their target
(``cortexstream.request``, ``cortexstream.model``, ``cortexstream.kv``, ``cortexstream.engine``,
and at trace level ``cortexstream.step``: one record per engine step with its decodes, prompt
tokens, token budget and the engine thread's CPU and wall microseconds),
with their fields as attributes of the :class:`logging.LogRecord` (``extra``) and all of them
in ``record.fields``. A request's records carry ``request_id`` (the engine's) and ``tag`` (the
caller's, e.g. the server's request id). Prompt text is never logged unless the engine was
created with ``log_prompts=True``.

Importing :mod:`cortexstream` forwards records at the ``cortexstream`` logger's effective level
then; call :func:`forward_logs` after configuring logging to change it. Records are queued by
the engine and delivered on a log thread, so a slow handler never holds up generation, and a
handler that raises is reported through :func:`sys.unraisablehook`, not to the engine.
"""

from __future__ import annotations

import atexit
import json
import logging
from typing import Any, Dict, Optional

from . import _core

LOGGER = logging.getLogger("cortexstream")

# Core level numbers (the C ABI's) -> logging levels; trace is below DEBUG.
TRACE = 5
_TO_LOGGING = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: TRACE}

# LogRecord attributes a field must not overwrite (logging raises KeyError for them).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "fields", "target"}


def core_level(level: int) -> int:
    """The core level number that forwards records at the logging ``level`` and above."""
    if level <= TRACE:
        return 5
    if level <= logging.DEBUG:
        return 4
    if level <= logging.INFO:
        return 3
    if level <= logging.WARNING:
        return 2
    return 1


def _logger_name(target: str) -> str:
    return target.replace("::", ".")


def _deliver(level: int, target: str, message: str, fields_json: str) -> None:
    fields: Dict[str, Any] = json.loads(fields_json)
    extra = {(f"field_{key}" if key in _RESERVED else key): value for key, value in fields.items()}
    extra["fields"] = fields
    extra["target"] = target
    logging.getLogger(_logger_name(target)).log(_TO_LOGGING.get(level, logging.INFO), message, extra=extra)


def forward_logs(level: Optional[int] = None) -> None:
    """Forwards core records at ``level`` (a :mod:`logging` level; default: the
    ``cortexstream`` logger's effective level) and more severe to :mod:`logging`."""
    effective = LOGGER.getEffectiveLevel() if level is None else level
    _core.set_log_handler(core_level(effective), _deliver)


def stop_forwarding() -> None:
    """Stops forwarding after delivering the records already queued; logging then costs the
    engine nothing."""
    _core.set_log_handler(0, None)


atexit.register(stop_forwarding)
