"""Typed knob values: what the CLI parsed (or a Python caller passed) as the type the strategy declares.

A knob is a dataclass field of a strategy; its annotation (``int``, ``float``, ``bool``, ``str`` or a
``Literal`` of choices) is the contract. Values are converted where the conversion loses nothing (``"4"`` or
``4.0`` for an int, ``3`` for a float, ``"true"`` / ``1`` for a bool) and refused otherwise, with an error
that names the strategy, the knob, the value and the expected type.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from rmtdeploy.errors import RmtdeployError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _Refused(Exception):
    pass


def coerce_knob(strategy: str, knob: str, value: Any, expected: Any) -> Any:
    """``value`` as the type ``expected`` (a knob's resolved annotation), or RmtdeployError."""
    try:
        if typing.get_origin(expected) is Literal:
            return _choice(value, typing.get_args(expected))
        converter = _CONVERTERS.get(expected)
        return value if converter is None else converter(value)
    except _Refused as refused:
        raise RmtdeployError(f"strategy '{strategy}' knob {knob}={value!r}: expected {refused}") from None


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Refused("an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Refused("an integer")


def _to_float(value: Any) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise _Refused("a finite number")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
        return value.strip().lower() in _TRUE
    raise _Refused("true or false")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Refused("text")


def _choice(value: Any, choices: tuple[Any, ...]) -> Any:
    if value in choices and type(value) in {type(choice) for choice in choices}:
        return value
    raise _Refused(f"one of {', '.join(map(str, choices))}")


_CONVERTERS = {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str}
