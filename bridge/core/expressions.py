"""JMESPath expressions compiled once, with bounded size and errors that name the position.

Config compiles every route's `filter` and `input` with these at load; `ingest.filters` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.parser import ParsedResult

MAX_EXPRESSION = 4096


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled expression with its source text (for messages and for `routes test`)."""

    text: str
    parsed: ParsedResult

    def search(self, document: Any) -> Any:
        return self.parsed.search(document)


class ExpressionError(ValueError):
    pass


def compile_expression(text: str) -> Expression:
    """Compile, or raise ExpressionError with what is wrong and where (0-based position)."""
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"longer than {MAX_EXPRESSION} characters")
    try:
        return Expression(text, jmespath.compile(text))
    except jmespath_errors.EmptyExpressionError:
        raise ExpressionError("empty expression") from None
    except jmespath_errors.IncompleteExpressionError as exc:
        raise ExpressionError(f"incomplete expression at {exc.lex_position}") from None
    except jmespath_errors.LexerError as exc:
        raise ExpressionError(f"{exc.message.lower()} at {exc.lexer_position}") from None
    except jmespath_errors.ParseError as exc:
        token = f" {exc.token_value!r}" if exc.token_value is not None else ""
        raise ExpressionError(f"unexpected token{token} at {exc.lex_position}") from None
    except (jmespath_errors.JMESPathError, RecursionError) as exc:
        raise ExpressionError(str(exc).splitlines()[0][:200]) from None


def compile_mapping(value: Any, path: str, problems: list[str]) -> dict[str, Any]:
    """An `input` table: keys to expressions, or to tables of them."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}"
        if isinstance(item, dict):
            out[key] = compile_mapping(item, where, problems)
        elif isinstance(item, str):
            try:
                out[key] = compile_expression(item)
            except ExpressionError as exc:
                problems.append(f"{where}: {exc}")
        else:
            problems.append(f"{where}: expected a JMESPath expression (a string) or a table")
    return out
