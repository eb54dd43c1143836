"""The store core: every role's jobs over the engine, written once for both databases.

`SQLiteStore` and `PostgresStore` each add only what is their database's own (connections,
reads, notification, PostgreSQL's pipelined fast paths); neither subclasses the other.
"""

from __future__ import annotations

from bridge.store.callbacks import CallbackJobs
from bridge.store.channels import ChannelJobs
from bridge.store.console import ConsoleJobs
from bridge.store.executions import ExecutionJobs
from bridge.store.ingest import IngestJobs
from bridge.store.operations import AdminJobs
from bridge.store.outbox import OutboxJobs


class SQLStore(IngestJobs, OutboxJobs, ChannelJobs, ExecutionJobs, CallbackJobs, AdminJobs,
               ConsoleJobs):
    """Every role of `bridge.store.roles`, on a database the subclass opens."""
