"""JSON on the hot path.

orjson parses and writes JSON several times faster than the standard library, which matters on
the one path every webhook takes. `loads` falls back to `json` for what orjson refuses
(`NaN`, lone surrogate escapes) and for integers past 64 bits, so what counts as JSON, and
what it says, is unchanged;
`dumps` writes compact UTF-8 exactly as `json.dumps(..., ensure_ascii=False,
separators=(",", ":"))` would for the plain values we give it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson reads an integer outside 64 bits as a float, which would round a long numeric id; any
# number of 19 digits or more (the edge of that range) sends the document to `json`, which keeps
# them all. A number is never preceded by a letter, a digit or a quote, so runs inside strings (a
# commit SHA, a hex token) do not count. Found by mapping digits to 1, what may come before a
# number (`:` `[` `,` `-` white space) to 0 and the rest to x, then a substring search: both run
# in C, in one pass each.
_CLASSES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 if b in b":[,- \t\r\n" else 0x78
                 for b in range(256))
_LONG_RUN = b"1" * 19
_LONG_NUMBER = b"0" + _LONG_RUN


def loads(data: bytes) -> Any:
    """Parse JSON; raises ValueError (or RecursionError) when it is not JSON."""
    try:
        classes = data.translate(_CLASSES)
        if _LONG_NUMBER not in classes and not classes.startswith(_LONG_RUN):
            return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    return json.loads(data.decode("utf-8"))  # never guess UTF-16/32 from NUL bytes


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; anything orjson cannot write natively is written as `str(value)`."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def dumps_document(value: Any) -> bytes:
    """Compact UTF-8 JSON of a document that holds values parsed from others' JSON: as `dumps`,
    except that integers past 64 bits (which orjson refuses) are written whole by `json`. Not a
    number (which only `json` reads) is written as `null`, which every JSON reader accepts."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def without_nul(text: str) -> str:
    """`text` with each NUL as U+FFFD: PostgreSQL's text cannot hold a NUL, so both stores keep
    what a sender or receiver sent this way (SQLite would, but the two must not differ)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
