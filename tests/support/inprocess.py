"""The real bridge inside the test process: the same app, uvicorn server and bounds `bridge
serve` runs (`bridge.cli.main.build_server`), on a thread of its own with its own event loop,
on a real socket. A start costs a few milliseconds instead of a Python process's second.

Each bridge writes its log lines to a file of its own, formatted and redacted as `bridge serve`
does (the same `LineHandler`, formatter and `Redactor` with its config's secrets): one
handler on the root logger hands every record to the bridge whose thread, or task, logged it.

What needs a process stays one (`make_bridge(process=True)`): kill -9, signals, environment
variables, several workers, exit codes. Asking an in-process bridge for those fails loudly.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

from bridge.core.logs import (
    JsonFormatter,
    LineHandler,
    Redactor,
    TextFormatter,
    tune_libraries,
)
from tests.support.harness import Bridge

_CURRENT: contextvars.ContextVar[logging.Handler | None] = contextvars.ContextVar(
    "bridge_log_handler", default=None)


class _ToItsBridge(logging.Handler):
    """The root logger's one handler: a record goes to the log of the bridge that made it
    (the context its thread or task runs in); records of no bridge are dropped."""

    def handle(self, record: logging.LogRecord) -> bool:
        handler = _CURRENT.get()
        if handler is None or record.levelno < handler.level:
            return False
        return bool(handler.handle(record))

    def emit(self, record: logging.LogRecord) -> None:  # handle() does the work
        pass


_ROUTER = _ToItsBridge()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _install_router(level: int) -> None:
    """What `bridge.core.logs.configure` does to the process's loggers, once, with the
    per-bridge router in place of the one stdout handler."""
    root = logging.getLogger()
    if _ROUTER not in root.handlers:
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        root.addHandler(_ROUTER)
        tune_libraries()
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


class NeedsProcess(AssertionError):
    pass


class InProcessBridge(Bridge):
    """A `Bridge` whose server runs on a thread of the test process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._emulator: Any = None
        self._failure: BaseException | None = None

    @property
    def proc(self) -> Any:
        raise NeedsProcess("this test signals or inspects the bridge's process: "
                           "start it with make_bridge(..., process=True)")

    @proc.setter
    def proc(self, value: Any) -> None:
        if value is not None:
            raise NeedsProcess("an in-process bridge has no process")

    def start(self, timeout: float = 120.0) -> Bridge:
        from bridge.cli.main import build_server
        from bridge.config import load

        if self.env or self.args:
            raise NeedsProcess("environment variables and command-line options need "
                               "make_bridge(..., process=True)")
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this bridge is already running")
        config = load(self.config_path)
        level = _LEVELS[config.server.log_level]
        _install_router(level)
        handler = LineHandler(open(self.log_path, "a", encoding="utf-8"))  # noqa: SIM115
        handler.setFormatter(JsonFormatter() if config.server.log_format == "json"
                             else TextFormatter())
        handler.addFilter(Redactor(config.secrets()))
        handler.setLevel(level)
        self._failure = None
        ready = threading.Event()

        def run() -> None:
            _CURRENT.set(handler)
            try:
                self._server, self._emulator = build_server(config)
                ready.set()
                self._server.run()
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop()
                self._failure = exc
            finally:
                ready.set()
                if self._emulator is not None:
                    self._emulator.stop()
                handler.flush()
                handler.stream.close()

        self._thread = threading.Thread(target=run, name=f"bridge-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        ready.wait(timeout)
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError(f"bridge stopped while starting ({self._failure!r}):\n"
                                   f"{self.logs()}")
            time.sleep(0.01)
        raise RuntimeError(f"bridge did not start:\n{self.logs()}")

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def terminate(self, timeout: float = 15.0) -> int:
        """A graceful stop, as SIGTERM asks of `bridge serve`: 0 once it has stopped."""
        assert self._thread is not None and self._server is not None
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(10)
            raise AssertionError("the bridge did not stop in time")
        return 0 if self._failure is None else 1

    def kill(self) -> None:
        raise NeedsProcess("kill -9 needs make_bridge(..., process=True)")

    def stop_quietly(self) -> None:
        """The fixture's end of a test: stopped, whatever state it is in."""
        if self.running():
            self.terminate(30)
