"""Checkers for preset values: each turns a TOML value into a ``Preset`` field's value or raises ``Bad``.

``Bad`` carries what is allowed and how to fix it; ``bridge.presets`` turns it into a ``PresetError``
that also names the file, the key and the value received.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable

__all__ = ["Bad", "boolean", "choice", "integer", "list_of", "number", "text", "type_name"]



class Bad(Exception):
    def __init__(self, allowed: str, fix: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed
        self.fix = fix


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def number(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Callable[[Any], float]:
    def check(value: Any) -> float:
        left = "(" if low_open else "["
        allowed = f"a number in {left}{low:g}, {high:g}]{(' ' + unit) if unit else ''}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Bad(allowed, f"write a number without quotes, e.g. {max(low, 0) if not low_open else high:g}")
        v = float(value)
        if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
            raise Bad(allowed, "choose a value inside that range")
        return v
    return check


def integer(low: int, high: int, unit: str = "") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        allowed = f"an integer in [{low}, {high}]{(' ' + unit) if unit else ''}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(allowed, f"write a whole number without quotes or decimals, e.g. {low}")
        if not low <= value <= high:
            raise Bad(allowed, "choose a value inside that range")
        return int(value)
    return check


def choice(options: tuple[str, ...] | list[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        allowed = "one of " + ", ".join(f'"{o}"' for o in options)
        if not isinstance(value, str):
            raise Bad(allowed, f'write it as a quoted string, e.g. "{options[0]}"')
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1)
            raise Bad(allowed, f'did you mean "{close[0]}"?' if close else "pick one of those")
        return value
    return check


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad("a string", 'write it in quotes, e.g. "my preset"')
    return value


def list_of(item: Callable[[Any], Any], what: str, example: str) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or not value:
            raise Bad(f"a non-empty list of {what}", f"write it as a list in brackets, e.g. {example}")
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except Bad as bad:
                raise Bad(f"a list of {what}; item {i} is not {bad.allowed}", bad.fix) from None
        return tuple(out)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad("true or false", "write true or false without quotes")
    return value
