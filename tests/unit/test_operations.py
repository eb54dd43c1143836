"""Logging checks that need no server. (The Dockerfile is linted by hadolint, a step of CI:
`make lint`.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.core.logs import MASK, JsonFormatter, Redactor

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer sk-tarx-abcdef123456",
        "X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "token=abc123secretvalue",
        "the configured secret is hunter2-hunter2",
    ],
)
def test_redaction_masks_credentials(line: str) -> None:
    redactor = Redactor(["hunter2-hunter2"])
    record = logging.LogRecord("t", logging.INFO, "", 0, line, None, None)
    record.header = line  # extras are redacted too
    redactor.filter(record)
    rendered = JsonFormatter().format(record)
    for secret in ("sk-tarx-abcdef123456", "757107ea0eb2509fc2", "g0hM9SsE+OTPJTGt",
                   "abc123secretvalue", "hunter2-hunter2"):
        assert secret not in rendered
    assert MASK in rendered
