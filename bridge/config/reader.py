"""The strict reader: `${VAR}` substitution, durations, and `Section`, which takes typed keys out
of one TOML table and records each problem with its key path."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bridge.config.model import DAY, Secret

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(text: str) -> float:
    """'300s', '5m', '72h', '7d', '250ms' -> seconds. Raises ValueError."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a duration like '300s', '5m', '72h' or '7d', got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Substituted(str):
    """A string that took a value from the environment: where the key wants a number or a
    boolean, its text is read as one (`port = "${PORT}"`), since TOML cannot put a variable
    anywhere but in a string."""


def interpolate(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Substitute ${VAR} and ${VAR:-default} in every string; `$$` is a literal `$`. A string
    with a variable in it comes back `Substituted`."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if environ.get(name):
                return environ[name]
            if default is not None:  # unset or empty, as a shell's ${VAR:-default}
                return default
            if name in environ:
                return ""
            problems.append(f"{path}: environment variable {name} is not set")
            return ""

        result, count = _VAR.subn(replace, value)
        if count and any(m.group(0) != "$$" for m in _VAR.finditer(value)):
            return Substituted(result)
        return result
    if isinstance(value, dict):
        return {k: interpolate(v, environ, _join(path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _from_text(text: str, kinds: tuple[type, ...]) -> Any:
    """An environment value read as the number or boolean a key wants; None if it is not one."""
    text = text.strip()
    if bool in kinds:
        return {"true": True, "false": False}.get(text.lower())
    try:
        return int(text)
    except ValueError:
        pass
    if float in kinds:
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Section:
    """Reads typed keys out of one TOML table, recording problems with their key paths."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{path}: expected a table")
            data = {}
        self.data = dict(data)
        self.asked: set[str] = set()  # every key read, for "did you mean"

    def where(self, key: str) -> str:
        return _join(self.path, key)

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {message}")

    def _take(self, key: str, kinds: tuple[type, ...], kind_name: str, default: Any) -> Any:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if isinstance(value, Substituted):
            if str in kinds:
                return str(value)
            parsed = _from_text(value, kinds)
            if parsed is None:
                self.fail(key, f"expected {kind_name}, and the environment gave {str(value)!r}")
                return default
            return parsed
        if isinstance(value, bool) and bool not in kinds:
            self.fail(key, f"expected {kind_name}")
            return default
        if not isinstance(value, kinds):
            self.fail(key, f"expected {kind_name}")
            return default
        return value

    def string(self, key: str, default: Any = None, required: bool = False) -> Any:
        if required and key not in self.data:
            self.fail(key, "required")
        return self._take(key, (str,), "a string", default)

    def integer(self, key: str, default: Any = None, minimum: int | None = None) -> Any:
        value = self._take(key, (int,), "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}")
            return default
        return value

    def number(self, key: str, default: float) -> float:
        value = self._take(key, (int, float), "a number", default)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._take(key, (bool,), "true or false", default))

    def duration(self, key: str, default: Any) -> Any:
        raw = self._take(key, (str,), "a duration string such as '5m'", None)
        if raw is None:
            return default
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.fail(key, str(exc))
            return default

    def secret(self, key: str, required: bool = False) -> Secret | None:
        value = self.string(key, required=required)
        if value is None:
            return None
        if required and not value:
            self.fail(key, "must not be empty")
        return Secret(value) if value else None

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "expected a list of strings")
            return default
        return tuple(value)

    def ports(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value):
            self.fail(key, "expected a list of port numbers (1-65535)")
            return default
        return tuple(value)

    def url(self, key: str, default: str = "") -> str:
        value = self.string(key, default) or ""
        if value and not is_http_url(value):
            self.fail(key, "expected an http:// or https:// URL")
        return str(value)

    def finish(self, known: tuple[str, ...] = ()) -> None:
        for key in self.data:
            self.fail(key, "unknown key" + did_you_mean(key, known or tuple(self.asked)))

    def rest(self) -> dict[str, Any]:
        rest, self.data = self.data, {}
        return rest


def did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)



def tables(value: Any, path: str, problems: list[str], build: Any) -> list[Any]:
    if not isinstance(value, list):
        problems.append(f"{path}: expected an array of tables ([[{path}]])")
        return []
    return [build(Section(item, f"{path}[{i}]", problems), i) for i, item in enumerate(value)]
