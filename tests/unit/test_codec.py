"""The hot-path JSON codec reads and writes what the standard library would."""

from __future__ import annotations

import json

import pytest

from bridge.core import codec

DOCUMENTS = [
    b'{"id": 123456789012345678901234567890}',
    b'[-98765432109876543210, 1]',
    b'{"a":\n 12345678901234567890123}',
    b'12345678901234567890123',
    b'{"sha": "ab12345678901234567890123", "n": 18446744073709551615}',
    b'{"s": "x 1234567890123456789012", "f": 1.12345678901234567890123}',
    b'{"nan": NaN, "inf": Infinity}',
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_loads_reads_what_json_reads(document: bytes) -> None:
    got, expected = codec.loads(document), json.loads(document)
    assert json.dumps(got) == json.dumps(expected)  # NaN-safe comparison
    assert type(got) is type(expected)


def test_long_numbers_stay_whole_and_long_strings_stay_strings() -> None:
    assert codec.loads(b'{"id": 123456789012345678901234567890}')["id"] == (
        123456789012345678901234567890)
    assert codec.loads(b'{"sha": "ab12345678901234567890123"}') == {
        "sha": "ab12345678901234567890123"}


def test_dumps_document_matches_json_and_keeps_big_integers() -> None:
    value = {"a": [1, 2.5, "ü✓", None, True, {"x": 1e20, "y": 0.1}], "b": "</script>"}
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    assert codec.dumps_document(value) == compact
    big = {"n": 2 ** 70}
    assert codec.dumps_document(big) == b'{"n":1180591620717411303424}'
