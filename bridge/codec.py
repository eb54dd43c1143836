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
# run of 19 digits (the edge of that range) sends the document to `json`, which keeps them all.
# Found by mapping digits to 1 and the rest to 0, then a substring search: both run in C.
_DIGITS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_RUN = b"1" * 19


def loads(data: bytes) -> Any:
    """Parse JSON; raises ValueError (or RecursionError) when it is not JSON."""
    try:
        if _LONG_RUN not in data.translate(_DIGITS):
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
