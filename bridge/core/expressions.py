"""JMESPath expressions compiled once, with bounded size and errors that name the position.

Config compiles every route's `filter` and `input` with these at load; `ingest.filters` runs them.

JMESPath has no string functions beyond `contains`, `starts_with`, `ends_with`, `join` and
`to_number`/`to_string`, and it slices only arrays (`body.ref[11:]` is null on a string). Glue
needs a few, so expressions also have these, registered through jmespath's own extension point
(`Functions` with typed signatures: a wrong argument type is a JMESPath error, as for the
built-ins):

    split(text, separator)          -> array of strings   split(body.ref, '/')[-1] == 'main'
    replace(text, old, new)         -> string (every occurrence)
    trim_prefix(text, prefix)       -> string without the prefix, when it has it
    trim_suffix(text, suffix)       -> string without the suffix, when it has it
    lower(text), upper(text)        -> string
    trim(text)                      -> string without surrounding whitespace

Results are bounded: `split` and `replace` refuse to build more than MAX_RESULT characters or
items, so a hostile body cannot make an expression allocate without end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions
from jmespath.parser import ParsedResult

MAX_EXPRESSION = 4096
MAX_RESULT = 1024 * 1024  # characters (or items) a string function may produce


class GlueFunctions(functions.Functions):
    """The string functions documented above; names are `_func_<name>`, as jmespath asks."""

    @functions.signature({"types": ["string"]}, {"types": ["string"]})
    def _func_split(self, text: str, separator: str) -> list[str]:
        if not separator:
            raise jmespath_errors.JMESPathError("split: the separator is empty")
        if text.count(separator) >= MAX_RESULT:
            raise jmespath_errors.JMESPathError("split: too many parts")
        return text.split(separator)

    @functions.signature({"types": ["string"]}, {"types": ["string"]}, {"types": ["string"]})
    def _func_replace(self, text: str, old: str, new: str) -> str:
        if not old:
            raise jmespath_errors.JMESPathError("replace: the text to replace is empty")
        if len(text) + text.count(old) * max(len(new) - len(old), 0) > MAX_RESULT:
            raise jmespath_errors.JMESPathError("replace: the result would be too long")
        return text.replace(old, new)

    @functions.signature({"types": ["string"]}, {"types": ["string"]})
    def _func_trim_prefix(self, text: str, prefix: str) -> str:
        return text.removeprefix(prefix)

    @functions.signature({"types": ["string"]}, {"types": ["string"]})
    def _func_trim_suffix(self, text: str, suffix: str) -> str:
        return text.removesuffix(suffix)

    @functions.signature({"types": ["string"]})
    def _func_lower(self, text: str) -> str:
        return text.lower()

    @functions.signature({"types": ["string"]})
    def _func_upper(self, text: str) -> str:
        return text.upper()

    @functions.signature({"types": ["string"]})
    def _func_trim(self, text: str) -> str:
        return text.strip()


OPTIONS = jmespath.Options(custom_functions=GlueFunctions())


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled expression with its source text (for messages and for `routes test`)."""

    text: str
    parsed: ParsedResult

    def search(self, document: Any) -> Any:
        return self.parsed.search(document, OPTIONS)


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
