"""Fixtures: the platform emulator on a real socket, a receiver for callbacks, and `make_bridge`,
which starts the real bridge (in the test process, `tests.support.inprocess`, or as a process,
`tests.support.harness.Bridge`) and checks no secret reached its logs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.devtools.emulator import Emulator, EmulatorServer, Settings
from tests.support import pg
from tests.support.harness import (
    ADMIN_TOKEN,
    ALL_SECRETS,
    API_KEY,
    BASE_CONFIG,
    GITHUB_SECRET,
    ON_POSTGRES,
    STANDARD_SECRET,
    STRIPE_SECRET,
    TRIGGER_KEY,
    Bridge,
    free_port,
)
from tests.support.inprocess import InProcessBridge
from tests.support.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A callback receiver: a real HTTP server on a free port."""
    server = Receiver().start()
    yield server
    server.stop()


@contextlib.contextmanager
def _emulator() -> Iterator[EmulatorServer]:
    """The platform stand-in on a real socket, with the suite's keys."""
    server = EmulatorServer(Emulator(Settings(trigger_key=TRIGGER_KEY, api_key=API_KEY,
                                              execution_delay=0.2))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with _emulator() as server:
        yield server


@contextlib.contextmanager
def _bridges(directory: Path, emulator: EmulatorServer) -> Iterator[Callable[..., Bridge]]:
    """Build bridges from BASE_CONFIG plus extra TOML; each started unless start=False, inside
    the test process unless process=True (kill -9, signals, environment variables). With
    BRIDGE_TEST_STORE=postgres, each store is a PostgreSQL schema of its own instead. On the
    way out: every process stopped, and no configured secret in any of their logs."""
    bridges: list[Bridge] = []
    stack = contextlib.ExitStack()

    def make(extra: str = "", *, start: bool = True, base: str = BASE_CONFIG,
             env: dict[str, str] | None = None, name: str = "bridge",
             admin: bool = True, sqlite: bool = False, postgres: bool = False,
             process: bool = False) -> Bridge:
        port = free_port()
        db = directory / f"{name}.db"
        text = base.format(port=port, db=db, platform=emulator.base_url, trigger_key=TRIGGER_KEY,
                           api_key=API_KEY, github=GITHUB_SECRET, stripe=STRIPE_SECRET,
                           standard=STANDARD_SECRET) + extra
        if admin and "[admin]" not in text:
            text += f'\n[admin]\ntokens = ["{ADMIN_TOKEN}"]\n'
        store_url = None
        if postgres:
            pg.require()
        if (ON_POSTGRES or postgres) and not sqlite and f'path = "{db}"' in text:
            store_url = stack.enter_context(pg.schema())
            text = text.replace(f'path = "{db}"', f'url = "{store_url}"')
        config = directory / f"{name}.toml"
        config.write_text(text)
        kind = Bridge if process or env else InProcessBridge
        bridge = kind(config, port, db, directory / f"{name}.log", env)
        bridge.store_url = store_url
        bridges.append(bridge)
        return bridge.start() if start else bridge

    yield make
    for bridge in bridges:
        if isinstance(bridge, InProcessBridge):
            bridge.stop_quietly()
        elif bridge.proc and bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait(10)
    stack.close()  # the PostgreSQL schemas, once no bridge uses them
    for bridge in bridges:
        logs = bridge.logs()
        for secret in ALL_SECRETS:  # no configured secret may ever reach a log line
            assert secret not in logs, "a secret appeared in the bridge's logs"


@pytest.fixture
def make_bridge(tmp_path: Path, emulator: EmulatorServer) -> Iterator[Callable[..., Bridge]]:
    """Bridges of one test's own."""
    with _bridges(tmp_path, emulator) as make:
        yield make


@pytest.fixture(scope="module")
def module_emulator() -> Iterator[EmulatorServer]:
    with _emulator() as server:
        yield server


@pytest.fixture(scope="module")
def make_module_bridge(tmp_path_factory: pytest.TempPathFactory,
                       module_emulator: EmulatorServer) -> Iterator[Callable[..., Bridge]]:
    """Bridges shared by a module's tests, where each test sends under keys of its own and
    reads back only what it sent (a process start saved per test)."""
    with _bridges(tmp_path_factory.mktemp("shared"), module_emulator) as make:
        yield make


# A busy machine (CI's two cores, or the suite running twice side by side) can be several times
# slower than a quiet one: every wait is stretched by this factor. A condition met returns at
# once, so only a failing test waits longer.


