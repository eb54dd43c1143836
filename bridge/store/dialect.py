"""What differs between SQLite and PostgreSQL, named: the one place a statement meets its database.

Every statement the store runs is written once, as a template whose differences are named slots:
`{p}` a placeholder, `{begin}` a write transaction's start, `{skip_locked}` / `{for_update}` the
row locks PostgreSQL takes while claiming (SQLite has one writer and needs none), `{instr}` and
`{group_concat}` the two functions spelled differently. `Dialect.render` fills the slots
(`str.format`, once per template, cached); nothing in a statement is matched or rewritten. A
statement built at run time takes its list of placeholders from `placeholders(n)`. Schema
differences (types, identity keys) are in each dialect's own migration files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # a parameter's marker: sqlite3's `?`, psycopg's `%s`
    begin: str  # a transaction that will write
    skip_locked: str  # a claim's row lock that skips rows another replica is taking
    for_update: str  # a row lock held to the end of the transaction
    instr: str  # (haystack, needle) -> 1-based position, 0 when absent
    group_concat: str  # (values, separator) -> one text
    # The driver's escape for a literal `%` in a statement sent with parameters (psycopg reads
    # `%` as the start of a placeholder there, and only there); None when `%` is plain.
    percent: str | None = None
    _rendered: dict[tuple[str, bool], str] = field(default_factory=dict, compare=False,
                                                   repr=False)

    def render(self, template: str, bound: bool = True) -> str:
        """The statement for this database; `bound`: it is sent with parameters. The same few
        hundred templates come back again and again: each is rendered once."""
        escape = bound and self.percent is not None
        try:
            return self._rendered[template, escape]
        except KeyError:
            pass
        text = template.replace("%", self.percent) if self.percent and escape else template
        sql = text.format_map(self.slots())
        if len(self._rendered) < 4096:  # templates with runtime lists vary: a bound all the same
            self._rendered[template, escape] = sql
        return sql

    def slots(self) -> dict[str, Any]:
        return {"p": self.placeholder, "begin": self.begin, "skip_locked": self.skip_locked,
                "for_update": self.for_update, "instr": self.instr,
                "group_concat": self.group_concat}


SQLITE = Dialect("sqlite", placeholder="?", begin="BEGIN IMMEDIATE", skip_locked="",
                 for_update="", instr="instr", group_concat="group_concat")
POSTGRES = Dialect("postgres", placeholder="%s", begin="BEGIN",
                   skip_locked=" FOR UPDATE SKIP LOCKED", for_update=" FOR UPDATE",
                   instr="strpos", group_concat="string_agg", percent="%%")


def placeholders(n: int) -> str:
    """`n` placeholders, comma-separated, as a template (`{p},{p},...`)."""
    return ",".join(["{p}"] * n)


class Session(Protocol):
    """A connection as the jobs see it (sqlite3's shape; `SQLiteSession` and the PostgreSQL
    store's `Connection` provide it): each statement a template that the session renders in
    its dialect."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...
