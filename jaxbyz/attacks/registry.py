"""The attack registry, apart from ``__init__`` so that family modules can register themselves."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jaxbyz._registry import Registry
from jaxbyz.attacks.base import Attack
from jaxbyz.validation import reject_unknown

REGISTRY: Registry[Attack] = Registry("attack")

# canonical name -> the keyword parameters its factory accepts
PARAMS: dict[str, tuple[str, ...]] = {}


def register(name: str, *aliases: str) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    """Register an attack factory under ``name`` and ``aliases``, recording its parameters."""
    decorate = REGISTRY.register(name, *aliases)

    def wrapper(factory: Callable[..., Attack]) -> Callable[..., Attack]:
        PARAMS[name] = tuple(inspect.signature(factory).parameters)
        return decorate(factory)

    return wrapper


def build(name: str, **params: object) -> Attack:
    """``REGISTRY.get`` with unknown parameter names reported as a ``ValueError``."""
    canonical = REGISTRY.canonical(name)
    known = PARAMS[canonical]
    unknown = {k: params[k] for k in sorted(set(params) - set(known))}
    reject_unknown(f"attack {canonical}", unknown, known)
    return REGISTRY.get(canonical, **params)
