"""Parameter validation shared by the rule factories: errors name the parameter, value and fix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def reject_unknown(rule: str, unknown: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Raise ValueError if `unknown` holds keyword parameters the factory does not take."""
    if unknown:
        names = ", ".join(f"{k}={v!r}" for k, v in unknown.items())
        accepted = ", ".join(known) if known else "none"
        raise ValueError(f"{rule}: unknown parameter(s) {names}; accepted parameters: {accepted}")


def integer(rule: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """`value` must be an int >= `minimum` (or None when `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fix = f"pass an integer >= {minimum}" + (" or omit it" if optional else "")
        raise ValueError(f"{rule}: parameter {name}={value!r} is invalid; {fix}")


def positive(rule: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """`value` must be a finite real number > 0 (>= 0 when `allow_zero`)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{rule}: parameter {name}={value!r} is invalid; pass a finite number {bound}"
        )


def boolean(rule: str, name: str, value: Any) -> None:
    """`value` must be a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{rule}: parameter {name}={value!r} is invalid; pass True or False")


def choice(rule: str, name: str, value: Any, options: tuple[str, ...]) -> None:
    """`value` must be one of `options`."""
    if value not in options:
        raise ValueError(
            f"{rule}: parameter {name}={value!r} is invalid; choose one of {', '.join(options)}"
        )
