"""The `Rule` object every aggregation rule is wrapped in.

A rule is a pure function of the ``[n, d]`` matrix ``G`` of received vectors and the
declared number ``f`` of Byzantine workers (static), returning the aggregate ``[d]``.
Selection rules (Krum, Bulyan, MDA, ...) also return an ``[n]`` float mask of the inputs
they accepted (1 accepted, 0 rejected; fractional weights allowed), which the simulator turns
into the study metric "fraction of Byzantine vectors accepted".

A rule that trusts the server's own gradient (FLTrust) declares ``reference_size``, the number
of clean "root" training examples the server holds: the simulator computes its gradient on them
at every step and passes it as ``reference`` ``[d]``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.validation import count, matrix

Array = jax.Array

# fn(G, f, *, key, prev, **params) -> (aggregate [d], accepted [n] or None)
AggregateFn = Callable[..., tuple[Array, Array | None]]
# check(n, f, **params) -> None, or a message such as "bulyan needs n >= 4f+3"
CheckFn = Callable[..., str | None]
# bound(n, f, d, **params) -> published variance-norm bound, or None
BoundFn = Callable[..., float | None]


@dataclasses.dataclass(frozen=True, eq=False)
class Rule:
    """A gradient aggregation rule (GAR).

    Attributes:
      name: canonical registry name.
      fn: ``fn(G, f, *, key, prev, **params) -> (aggregate, accepted)``.
      params: keyword parameters bound at construction (`aggregators.get(name, **params)`).
      check_fn: returns ``None`` when ``(n, f)`` is admissible, else the constraint text.
      bound_fn: published variance-norm upper bound, or ``None`` when none is published.
      selects: whether ``accepted`` is meaningful (selection rules).
      needs_key: whether the rule draws randomness (bucketing).
      needs_prev: whether the rule is centred on the previous aggregate (cclip).
      reference_size: the number of clean root examples on which the server computes its own
        gradient, passed as ``reference`` (FLTrust); 0 for rules that need none.
    """

    name: str
    fn: AggregateFn
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    check_fn: CheckFn | None = None
    bound_fn: BoundFn | None = None
    selects: bool = False
    needs_key: bool = False
    needs_prev: bool = False
    reference_size: int = 0

    @property
    def needs_reference(self) -> bool:
        """Whether the rule reads the server's own gradient (``reference``)."""
        return self.reference_size > 0

    def aggregate(
        self,
        G: Array,
        f: int,
        *,
        key: Array | None = None,
        prev: Array | None = None,
        reference: Array | None = None,
    ) -> tuple[Array, Array | None]:
        """Aggregate ``G`` ``[n, d]`` tolerating ``f``: (``[d]``, accepted ``[n]`` or None).

        Refused with a ValueError naming the rule and the values, before anything is computed
        (at trace time under ``jit``: the checks read shapes and dtypes only): ``G`` not a
        two-dimensional numeric array with at least one row and one column, ``f`` not an
        integer ``>= 0``, ``(n, f)`` outside the rule's constraint (:meth:`check`). Integer and
        boolean matrices are promoted to float32 (the aggregate of counts is a real number).
        """
        G, f = matrix(f"rule {self.name}", "G", G), count(f"rule {self.name}", "f", f)
        self.check(G.shape[0], f)
        if self.needs_key and key is None:
            raise ValueError(f"rule {self.name} draws randomness: pass key=jax.random.key(...)")
        if self.needs_prev and prev is None:
            prev = jnp.zeros(G.shape[1], G.dtype)
        if not self.needs_reference:
            return self.fn(G, f, key=key, prev=prev, **self.params)
        if reference is None:
            raise ValueError(
                f"rule {self.name} weighs the inputs by the server's own gradient: pass "
                "reference=g0 (a [d] vector), or bind it with rule.with_reference(g0)"
            )
        reference = jnp.asarray(reference, G.dtype)
        if reference.shape != G.shape[1:]:
            raise ValueError(
                f"rule {self.name}: reference has shape {reference.shape}, the rows have "
                f"{G.shape[1]} coordinates; fix: one [d] vector, d = {G.shape[1]}"
            )
        return self.fn(G, f, key=key, prev=prev, reference=reference, **self.params)

    def with_reference(self, reference: Array) -> Rule:
        """This rule with the server's gradient ``reference`` bound (a rule that needs none, as
        attacks that evaluate the server's rule see it); itself when it needs none."""
        if not self.needs_reference:
            return self
        rule = self

        def fn(G: Array, f: int, *, key: Any = None, prev: Any = None, **_: Any) -> tuple:
            return rule.aggregate(G, f, key=key, prev=prev, reference=reference)

        return dataclasses.replace(self, fn=fn, reference_size=0)

    def __call__(
        self,
        G: Array,
        f: int,
        *,
        key: Array | None = None,
        prev: Array | None = None,
        reference: Array | None = None,
    ) -> Array:
        """The aggregate ``[d]`` of ``G`` (``[n, d]``) tolerating ``f`` Byzantine rows."""
        return self.aggregate(G, f, key=key, prev=prev, reference=reference)[0]

    def check(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming the constraint and values if ``(n, f)`` is not allowed."""
        integers = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, f))
        if not integers or n < 1 or f < 0:
            raise ValueError(f"{self.name} needs integers n >= 1 and f >= 0, got n={n!r}, f={f!r}")
        n, f = int(n), int(f)
        message = None if self.check_fn is None else self.check_fn(n, f, **self.params)
        if message is not None:
            raise ValueError(f"{message}, got n={n}, f={f}")

    def upper_bound(self, n: int, f: int, d: int) -> float | None:
        """The published variance-norm bound under which the rule is proven robust, or None."""
        return None if self.bound_fn is None else self.bound_fn(n, f, d, **self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Rule({self.name}{', ' if args else ''}{args})"
