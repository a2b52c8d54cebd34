"""A small name -> factory registry shared by the rule and attack families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps canonical names and aliases to factories; unknown names raise a ValueError."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, Callable[..., T]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering `factory` under `name` and its `aliases`."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            for key in (name, *aliases):
                if key in self._factories or key in self._aliases:
                    raise ValueError(f"{self.what} name {key!r} is registered twice")
            self._factories[name] = factory
            for alias in aliases:
                self._aliases[alias] = name
            return factory

        return decorate

    def canonical(self, name: str) -> str:
        """The canonical name of `name` (an alias resolves to its target)."""
        key = name.strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._factories:
            known = ", ".join(self.names())
            aliases = ", ".join(f"{a}->{t}" for a, t in sorted(self._aliases.items()))
            raise ValueError(
                f"unknown {self.what} {name!r}; known {self.what}s: {known}"
                + (f" (aliases: {aliases})" if aliases else "")
            )
        return key

    def get(self, name: str, **params: object) -> T:
        """Build the registered object `name` with keyword `params`."""
        return self._factories[self.canonical(name)](**params)

    def names(self) -> list[str]:
        """The canonical names, sorted."""
        return sorted(self._factories)

    def aliases(self) -> dict[str, str]:
        """Alias -> canonical name."""
        return dict(self._aliases)
