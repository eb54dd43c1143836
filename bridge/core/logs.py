"""Structured logging: one JSON object per line (or readable text), secrets redacted.

`configure()` installs a filter on the root handler that replaces every configured secret, any
bearer token and any signature header value that reaches a log record with `********`.

Lines are written once per event-loop turn (`LineHandler`), and the per-webhook line skips the
LogRecord machinery (`EventLines`); both format and redact exactly as a logged record would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from bridge.core import codec
from bridge.core.models import iso

MASK = "********"
MAX_PENDING = 256  # lines buffered before a write is forced
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}
# Bearer tokens, `signature=...`-style assignments, and signature values (sha256=<hex>, v1,<b64>).
_PATTERN = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|((?:signature|token|secret|authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)"
    r"[^\s\"';]+"
    r"|(sha(?:1|256|512)=)[0-9a-fA-F]{16,}"
    r"|(v1[,=])[A-Za-z0-9+/=]{16,}"
)
_TRIGGERS = re.compile("earer|ignature|oken|ecret|uthorization|sha1=|sha256=|sha512=|v1,|v1="
                       "|EARER|IGNATURE|OKEN|ECRET|UTHORIZATION")


def _keep_prefix(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g is not None) + MASK


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if _TRIGGERS.search(text):
            text = _PATTERN.sub(_keep_prefix, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return self.line(record.created, record.levelname, record.name, record.getMessage(),
                         _extras(record), record.exc_text)

    @staticmethod
    def line(created: float, level: str, name: str, msg: str, fields: dict[str, Any],
             exc: str | None = None) -> str:
        data: dict[str, Any] = {"ts": iso(created), "level": level.lower(), "logger": name,
                                "msg": msg, **fields}
        if exc:
            data["exc"] = exc
        return codec.dumps(data).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return self.line(record.created, record.levelname, record.name, record.getMessage(),
                         _extras(record), record.exc_text)

    @staticmethod
    def line(created: float, level: str, name: str, msg: str, fields: dict[str, Any],
             exc: str | None = None) -> str:
        when = iso(created)
        line = f"{when} {level:<7} {name}: {msg}"
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if exc:
            line += "\n" + exc
        return line


class LineHandler(logging.StreamHandler):
    """Buffers lines and writes them together at the end of the event-loop turn (at once when
    no loop runs in the calling thread), so a burst of requests costs one write, not one each.
    `flush()`, which logging calls at exit, writes whatever is still buffered."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._lock = threading.RLock()  # ours, so never None (logging's may be)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            count = len(self._pending)
        if count >= MAX_PENDING:
            self.flush()
        elif count == 1:  # otherwise a write is already due
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                lines, self._pending = self._pending, []
                self.stream.write("\n".join(lines) + "\n")
            if hasattr(self.stream, "flush"):
                self.stream.flush()


class EventLines:
    """The line logged for every webhook, without a LogRecord: same format, same redaction,
    same handler as `logging.getLogger(name).info(msg, extra=fields)`, at a fraction of the
    cost. Falls back to that call when logging is not configured by `configure()`."""

    def __init__(self, name: str, trusted: Iterable[str] = ()) -> None:
        self.name = name
        self.logger = logging.getLogger(name)
        self.trusted = frozenset(trusted)  # fields of our own making: not searched for secrets

    def info(self, msg: str, **fields: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handler = _HANDLER
        if handler is None or handler.formatter.__class__ not in _FORMATTERS:
            self.logger.info(msg, extra=fields)
            return
        redact, trusted = REDACTOR.redact, self.trusted
        for key, value in fields.items():
            if isinstance(value, str) and key not in trusted:
                fields[key] = redact(value)
        handler.write_line(handler.formatter.line(time.time(), "INFO", self.name, msg, fields))


REDACTOR = Redactor()
_FORMATTERS = (JsonFormatter, TextFormatter)
_HANDLER: LineHandler | None = None


def configure(fmt: str = "json", secrets: Iterable[str] = (), level: str = "info") -> None:
    global _HANDLER
    REDACTOR.set_secrets(secrets)
    # No caller lookup, thread or process names: nothing here prints them.
    logging._srcfile = None  # private, but in the stubs
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _HANDLER = LineHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    tune_libraries()


def tune_libraries() -> None:
    """uvicorn's lines through the root handler, no access lines, and only warnings from the
    HTTP client and aiosqlite: the same for every handler `configure` (or a test) installs."""
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
