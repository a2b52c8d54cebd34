"""Pre-aggregators: maps ``[n, d] -> [n', d]`` composed in front of any rule.

- ``nnm`` — Nearest Neighbour Mixing (Allouah et al., AISTATS 2023, "Fixing by Mixing"): each
  row ``g_i`` becomes the mean of its ``n - f`` nearest rows (itself included; ties: lower
  index first).
- ``bucketing`` (Karimireddy, He & Jaggi, ICLR 2022): a random permutation of the rows, cut into
  ``⌈n/s⌉`` buckets of ``s`` consecutive rows (the last may be smaller), each replaced by its
  mean; the rule then tolerates ``min(f, ⌈n/s⌉)`` Byzantine buckets. Needs a PRNG key.
- ``clip`` — static norm clipping: ``g_i · min(1, c / ‖g_i‖)``.
- ``arc`` — Adaptive Robust Clipping (Allouah et al., 2024): the ``k = ⌊2 (f/n) (n - f)⌋`` rows of
  largest norm are clipped to the norm of the ``(k+1)``-th largest.

``compose(pre, rule)`` returns a :class:`Rule` whose ``accepted`` mask, for a selection rule,
is mapped back onto the original rows (a bucket accepted accepts all its members).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz._registry import Registry
from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.distance import pairwise_sq_distances
from jaxbyz.aggregators.mixing import mix_rows
from jaxbyz.rows import row_norms, scale_rows_to_norm
from jaxbyz.validation import integer, number, reject_unknown

Array = jax.Array

# fn(G, f, *, key, **params) -> (G' [n', d], membership [n', n] 0/1 or None for the identity)
PreFn = Callable[..., tuple[Array, Array | None]]


@dataclasses.dataclass(frozen=True, eq=False)
class PreAggregator:
    """A map of the received rows applied before a rule.

    Attributes:
      name: canonical registry name.
      fn: ``fn(G, f, *, key, **params) -> (G', membership)``; ``membership[j, i] = 1`` when output
        row ``j`` depends on input row ``i`` (None: row ``j`` is input row ``j``).
      params: keyword parameters bound at construction.
      shape_fn: ``(n, f) -> (n', f')``, the rows and the tolerated count the rule then sees.
      check_fn: ``(n, f) -> None`` or the constraint text.
      needs_key: whether it draws randomness.
    """

    name: str
    fn: PreFn
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    shape_fn: Callable[[int, int], tuple[int, int]] = lambda n, f: (n, f)
    check_fn: Callable[..., str | None] | None = None
    needs_key: bool = False

    def __call__(self, G: Array, f: int, *, key: Array | None = None) -> tuple[Array, Any]:
        """``(G', membership)`` for ``G`` ``[n, d]`` tolerating ``f``."""
        return self.fn(G, f, key=key, **self.params)


_PRE_REGISTRY: Registry[PreAggregator] = Registry("pre-aggregator")


# --------------------------------------------------------------------------- nnm


def _nnm(G: Array, f: int, *, key: Any = None) -> tuple[Array, None]:
    n = G.shape[0]
    D = pairwise_sq_distances(G)
    nearest = jnp.argsort(D, axis=1, stable=True)[:, : n - f]
    W = jnp.zeros((n, n), G.dtype).at[jnp.arange(n)[:, None], nearest].set(1.0 / (n - f))
    return mix_rows(W, G), None


@_PRE_REGISTRY.register("nnm")
def nnm(**unknown: Any) -> PreAggregator:
    """Nearest Neighbour Mixing: ``g_i <- mean of the n-f rows nearest to g_i`` (itself too)."""
    reject_unknown("nnm", unknown, ())
    return PreAggregator(name="nnm", fn=_nnm)


# --------------------------------------------------------------------------- bucketing


def _bucketing(G: Array, f: int, *, key: Array, s: int) -> tuple[Array, Array]:
    n = G.shape[0]
    buckets = math.ceil(n / s)
    perm = jax.random.permutation(key, n)
    bucket_of = jnp.zeros((n,), jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32) // s)
    membership = (bucket_of[None, :] == jnp.arange(buckets)[:, None]).astype(G.dtype)
    W = membership / jnp.sum(membership, axis=1, keepdims=True)
    return mix_rows(W, G), membership


@_PRE_REGISTRY.register("bucketing", "bucket")
def bucketing(s: int = 2, **unknown: Any) -> PreAggregator:
    """Random buckets of ``s`` rows averaged (Karimireddy et al., 2022); draws a permutation."""
    reject_unknown("bucketing", unknown, ("s",))
    s = integer("bucketing", "s", s, minimum=1)
    return PreAggregator(
        name="bucketing",
        fn=_bucketing,
        params={"s": s},
        shape_fn=lambda n, f: (math.ceil(n / s), min(f, math.ceil(n / s))),
        needs_key=True,
    )


# --------------------------------------------------------------------------- clipping


def _clip(G: Array, f: int, *, key: Any = None, c: float) -> tuple[Array, None]:
    return scale_rows_to_norm(G, row_norms(G), jnp.asarray(c, G.dtype)), None


@_PRE_REGISTRY.register("clip", "static-clip")
def clip(c: float = 1.0, **unknown: Any) -> PreAggregator:
    """Static norm clipping: ``g_i <- g_i · min(1, c/‖g_i‖)``."""
    reject_unknown("clip", unknown, ("c",))
    c = number("clip", "c", c, above=0)
    return PreAggregator(name="clip", fn=_clip, params={"c": c})


def arc_count(n: int, f: int) -> int:
    """``k = ⌊2 (f/n) (n - f)⌋``, the number of rows ARC clips (in exact integer arithmetic)."""
    return min((2 * f * (n - f)) // n, n - 1)


def _arc(G: Array, f: int, *, key: Any = None) -> tuple[Array, None]:
    n = G.shape[0]
    k = arc_count(n, f)
    if k == 0:
        return G, None
    norms = row_norms(G)
    ranked = jnp.sort(jnp.where(jnp.isnan(norms), jnp.inf, norms))[::-1]
    return scale_rows_to_norm(G, norms, ranked[k]), None


@_PRE_REGISTRY.register("arc")
def arc(**unknown: Any) -> PreAggregator:
    """Adaptive Robust Clipping: clip the ``⌊2(f/n)(n-f)⌋`` largest rows to the next norm."""
    reject_unknown("arc", unknown, ())
    return PreAggregator(name="arc", fn=_arc)


# --------------------------------------------------------------------------- composition


def _build(spec: Any) -> PreAggregator:
    if isinstance(spec, PreAggregator):
        return spec
    if isinstance(spec, str):
        return _PRE_REGISTRY.get(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        name, params = spec
        if not isinstance(params, dict):
            raise ValueError(f"pre-aggregator {name!r}: parameters must be a dict, got {params!r}")
        return _PRE_REGISTRY.get(name, **params)
    raise ValueError(
        f"pre: each entry must be a name or a (name, params) pair, got {spec!r}; "
        f"known pre-aggregators: {', '.join(_PRE_REGISTRY.names())}"
    )


def _normalise(pre: Any) -> list[PreAggregator]:
    if isinstance(pre, (str, PreAggregator)) or (
        isinstance(pre, tuple) and len(pre) == 2 and isinstance(pre[1], dict)
    ):
        pre = [pre]
    return [_build(spec) for spec in pre]


def _shapes(stages: Sequence[PreAggregator], n: int, f: int) -> tuple[int, int, str | None]:
    """The ``(n, f)`` the rule sees after ``stages``, or the first failing stage's constraint."""
    for stage in stages:
        if stage.check_fn is not None:
            message = stage.check_fn(n, f, **stage.params)
            if message is not None:
                return n, f, message
        n, f = stage.shape_fn(n, f)
    return n, f, None


def compose(pre: Any, rule: Rule) -> Rule:
    """``rule`` applied after the pre-aggregators ``pre`` (names, (name, params) pairs)."""
    stages = _normalise(pre)
    needs_key = rule.needs_key or any(stage.needs_key for stage in stages)

    def fn(
        G: Array, f: int, *, key: Any = None, prev: Any = None, reference: Any = None, **_: Any
    ) -> tuple:
        keys = (
            list(jax.random.split(key, len(stages) + 1))
            if needs_key
            else [None] * (len(stages) + 1)
        )
        membership = None
        for stage, k in zip(stages, keys, strict=False):
            n = G.shape[0]
            G, M = stage(G, f, key=k)
            _, f = stage.shape_fn(n, f)
            if M is not None:
                membership = M if membership is None else jnp.dot(M, membership) > 0
                membership = jnp.asarray(membership, G.dtype)
        aggregate, accepted = rule.aggregate(G, f, key=keys[-1], prev=prev, reference=reference)
        if accepted is not None and membership is not None:
            accepted = jnp.minimum(jnp.dot(accepted, membership), 1.0)
        return aggregate, accepted

    def check_fn(n: int, f: int, **_: Any) -> str | None:
        n2, f2, message = _shapes(stages, n, f)
        if message is not None or rule.check_fn is None:
            return message
        inner = rule.check_fn(n2, f2, **rule.params)
        if inner is not None and (n2, f2) != (n, f):
            inner += f" (after {'>'.join(s.name for s in stages)}: n={n2}, f={f2})"
        return inner

    return Rule(
        name=">".join([*(stage.name for stage in stages), rule.name]),
        fn=fn,
        params={**rule.params, "pre": tuple(_describe(stage) for stage in stages)},
        check_fn=check_fn,
        bound_fn=None,
        selects=rule.selects,
        needs_key=needs_key,
        needs_prev=rule.needs_prev,
        reference_size=rule.reference_size,
    )


def _describe(stage: PreAggregator) -> Any:
    return (stage.name, dict(stage.params)) if stage.params else stage.name
