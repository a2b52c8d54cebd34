"""The `Attack` object every Byzantine attack is wrapped in.

An attack is a pure function of the ``[h, d]`` matrix ``H`` of honest submissions (as sent,
momentum included where it applies), returning the ``[f, d]`` Byzantine vectors, where ``f``
is the number of Byzantine workers that really attack (static). It may use a PRNG ``key``,
the aggregation ``rule`` the server runs, and ``f_decl``, the number of Byzantine workers the
rule is told to tolerate (``f_decl >= f``; defaults to ``f``).

Numeric parameters (factors, scales) are bound at construction and may be overridden at call
time by keyword, with traced values, so that a sweep can ``vmap`` over them.

An attack with a memory (``needs_drift``) also reads ``drift``, the ``[d]`` deviation it has
caused so far, ``e_t = m e_{t-1} + (F_t - mu_t)`` (``F_t`` the server's aggregate, ``mu_t`` the
honest rows' mean, ``m`` the attack's ``memory`` parameter), which the simulator keeps across
steps; without it (a call outside a run) the drift is zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.validation import count, matrix, reject_unknown, vector

Array = jax.Array

# fn(H, f, *, key, rule, f_decl, **params) -> [f, d]
AttackFn = Callable[..., Array]
# poison(x [f, b, ...], y [f, b], *, key, num_classes, **params) -> (x, y)
PoisonFn = Callable[..., tuple[Array, Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class Attack:
    """A Byzantine attack.

    Attributes:
      name: canonical registry name.
      fn: ``fn(H, f, *, key, rule, f_decl, **params) -> [f, d]``.
      params: keyword parameters bound at construction (`attacks.get(name, **params)`).
      needs_key: whether the attack draws randomness.
      needs_rule: whether the attack evaluates the rule (adaptive attacks, anti-rule attacks).
      poison: data poisoning (the hook of the simulator's gradient stage):
        ``poison(x, y, *, key, num_classes, **params) -> (x, y)`` maps the Byzantine workers'
        batches ``[f, b, ...]``, ``[f, b]`` to poisoned ones; those workers then compute real
        gradients on them, and their submissions (through the honest workers' stage when the
        attack's ``momentum`` parameter is true, else the raw clipped gradients) are the
        Byzantine rows: ``fn`` is never called. None for attacks on the submitted vectors.
      needs_drift: whether the attack reads the deviation it has caused so far (``drift``,
        module doc), decayed by its ``memory`` parameter.
      min_workers: ``(a, b)`` when the attack itself needs ``n >= a f_decl + b`` workers to
        attack (``fang-krum`` runs Krum: ``(2, 3)``); checked by :meth:`check` before anything
        compiles.
    """

    name: str
    fn: AttackFn
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    needs_key: bool = False
    needs_rule: bool = False
    poison: PoisonFn | None = None
    needs_drift: bool = False
    min_workers: tuple[int, int] | None = None  # (a, b): it needs n >= a f_decl + b to attack

    def __call__(
        self,
        H: Array,
        f: int,
        *,
        key: Array | None = None,
        rule: Any = None,
        f_decl: int | None = None,
        drift: Array | None = None,
        **overrides: Any,
    ) -> Array:
        """The ``[f, d]`` Byzantine vectors against honest submissions ``H`` (``[h, d]``).

        ``drift`` (``[d]``, zero when None) is read by an attack with a memory only.

        Refused before anything is computed (shapes and dtypes only, so at trace time under
        ``jit``): ``H`` not a two-dimensional numeric array with at least one honest row and one
        column (integers promoted to float32), ``f`` or ``f_decl`` not integers with
        ``0 <= f <= f_decl``.
        """
        owner = f"attack {self.name}"
        H, f = matrix(owner, "H (the honest rows)", H), count(owner, "f", f)
        f_decl = f if f_decl is None else count(owner, "f_decl", f_decl)
        if f_decl < f:
            raise ValueError(
                f"{owner}: f_decl={f_decl} (the count the rule tolerates) is below f={f} (the "
                "attackers); fix: f_decl >= f"
            )
        if self.needs_key and key is None:
            raise ValueError(f"attack {self.name} draws randomness: pass key=jax.random.key(...)")
        if self.needs_rule and rule is None:
            raise ValueError(
                f"attack {self.name} evaluates the rule: pass rule=aggregators.get(...)"
            )
        unknown = {k: overrides[k] for k in sorted(set(overrides) - set(self.params))}
        reject_unknown(f"attack {self.name}", unknown, tuple(self.params))
        params = {**self.params, **overrides}
        if self.needs_drift:
            zero = jnp.zeros(H.shape[1:], H.dtype)
            params["drift"] = zero if drift is None else vector(owner, "drift", drift, H.shape[1])
        return self.fn(H, f, key=key, rule=rule, f_decl=f_decl, **params)

    def check(self, n: int, f_decl: int, f_real: int, rule: Any = None) -> None:
        """Raise ``ValueError`` naming the parameter and value when the setting is inadmissible."""
        if f_real < 0 or f_real > f_decl:
            raise ValueError(
                f"attack {self.name}: the real Byzantine count (nb-real-byz={f_real}) must be "
                f"between 0 and the declared count (nb-decl-byz={f_decl})"
            )
        if f_decl >= n:
            raise ValueError(
                f"attack {self.name}: nb-decl-byz={f_decl} must be below nb-workers={n}"
            )
        if self.min_workers is not None and f_real > 0:
            a, b = self.min_workers
            if n < a * f_decl + b:
                raise ValueError(
                    f"attack {self.name}: needs nb-workers >= {a} nb-decl-byz + {b}, got "
                    f"nb-workers={n} and nb-decl-byz={f_decl}; fix: add workers or declare fewer "
                    "Byzantine"
                )
        if rule is not None:
            rule.check(n, f_decl)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Attack({self.name}{', ' if args else ''}{args})"
