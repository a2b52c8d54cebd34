"""Validation of attack parameters at construction: errors name the parameter, value and fix."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax


def is_array(value: Any) -> bool:
    """Whether ``value`` is a JAX array or tracer (a call-time override, not validated)."""
    return isinstance(value, jax.Array)


def number(attack: str, name: str, value: Any, *, minimum: float | None = None) -> float:
    """A finite real (not bool), at least ``minimum`` when given."""
    if is_array(value):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"attack {attack}: {name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(
            f"attack {attack}: {name} must be >= {minimum}, got {value!r}; "
            f"fix: pass {name}={abs(value)!r} or another value >= {minimum}"
        )
    return float(value)


def boolean(attack: str, name: str, value: Any) -> bool:
    """A Python bool (or an array, for call-time overrides)."""
    if is_array(value):
        return value
    if not isinstance(value, bool):
        raise ValueError(f"attack {attack}: {name} must be True or False, got {value!r}")
    return value


def integer(attack: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """A Python int (not bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"attack {attack}: {name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"attack {attack}: {name} must be >= {minimum}, got {value!r}")
    return int(value)
