"""A random mixture of aggregation rules: the ``--gars`` option of El-Mhamdi, Guerraoui & Rouault
(ICLR 2021).

The paper's code takes ``--gars "NAME[,FREQ[,JSON-ARGS]];NAME[,FREQ[,JSON-ARGS]];..."``: rules
separated by ``;``, each with an optional relative frequency (a float; ``-`` or absent means 1)
and an optional JSON object of rule arguments, e.g. ``krum,2,{"m": 1};median,1``. At every step
one rule is drawn with probability ``freq_i / Σ freq`` and applied; the mixture's check fails as
soon as one component's check fails (zero-frequency components included); with ``--gars`` the
``--gar`` / ``--gar-args`` flags are ignored.

- :func:`parse_gars` parses and validates the text into ``(name, frequency, args)`` triples;
- :func:`mixture` builds the :class:`~jaxbyz.aggregators.base.Rule` from ``(Rule, frequency)``
  pairs;
- :func:`from_gars` does both.

The arguments may also carry pre-aggregators, as :func:`jaxbyz.aggregators.get` takes them:
``krum,1,{"pre": [["bucketing", {"s": 2}]]}``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz.aggregators.base import Rule

Array = jax.Array

__all__ = ["from_gars", "mixture", "parse_gars"]

_FORMAT = (
    '"NAME[,FREQ[,JSON-ARGS]];NAME[,FREQ[,JSON-ARGS]];..." (e.g. "krum,2,{\\"m\\": 1};median")'
)


# --------------------------------------------------------------------------- parsing


def _frequency(text: str, where: str) -> float:
    """The frequency field of one part: ``-`` means 1; a finite float >= 0 otherwise."""
    if text == "-":
        return 1.0
    if not text:
        raise ValueError(
            f"--gars: {where} has an empty frequency; give a float >= 0, or '-' (or omit it) for 1"
        )
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"--gars: {where} has frequency {text!r}, which is not a number; "
            "give a float >= 0, or '-' (or omit it) for 1"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"--gars: {where} has frequency {text!r}; the frequency must be a finite float >= 0"
        )
    return value


def _arguments(text: str, where: str) -> dict[str, Any]:
    """The JSON-ARGS field of one part: a JSON object (``{"m": 1}``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--gars: {where} has arguments that are not valid JSON ({str(err).lower()}); "
            'write a JSON object with double-quoted keys, e.g. {"m": 1}'
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"--gars: {where} has arguments of JSON type {type(value).__name__}; "
            'they must be a JSON object, e.g. {"m": 1}'
        )
    return value


def _parse(text: str) -> list[tuple[str, float, dict[str, Any], Rule]]:
    """``(name, frequency, args, rule)`` per part of ``text``; every rule is built (validated)."""
    from jaxbyz.aggregators import get  # deferred: this module may be imported by the package

    if not isinstance(text, str):
        raise ValueError(f"--gars must be a string in the format {_FORMAT}, got {text!r}")
    if not text.strip():
        raise ValueError(f"--gars is empty; give one or more rules as {_FORMAT}")
    parsed = []
    for index, part in enumerate(text.split(";")):
        where = f"part {index + 1} {part.strip()!r}"
        if not part.strip():
            raise ValueError(
                f"--gars: part {index + 1} of {text!r} is empty; remove the extra ';' "
                f"(format {_FORMAT})"
            )
        fields = part.split(",", maxsplit=2)
        name = fields[0].strip()
        if not name:
            raise ValueError(
                f"--gars: {where} has no rule name; write NAME[,FREQ[,JSON-ARGS]] (e.g. krum,2)"
            )
        frequency = _frequency(fields[1].strip(), where) if len(fields) >= 2 else 1.0
        args = _arguments(fields[2].strip(), where) if len(fields) >= 3 else {}
        try:
            rule = get(name, **args)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--gars: {where}: {err}") from None
        parsed.append((name, frequency, args, rule))
    if not any(frequency > 0 for _, frequency, _, _ in parsed):
        raise ValueError(
            f"--gars: every frequency in {text!r} is zero; give at least one rule a positive "
            "frequency (a missing frequency means 1)"
        )
    return parsed


def parse_gars(text: str) -> list[tuple[str, float, dict[str, Any]]]:
    """Parse the paper's ``--gars`` text into ``(name, frequency, args)`` triples.

    ``"krum,2,{\\"m\\": 1};median"`` gives ``[("krum", 2.0, {"m": 1}), ("median", 1.0, {})]``.
    Names are kept as written (stripped; aliases allowed). Each rule is built once with its
    arguments, so unknown names and bad arguments are reported here.

    Raises:
      ValueError: a one-line message naming ``--gars``, the offending part and the fix, for an
        empty text or part, a missing name, a frequency that is not a finite float >= 0, all
        frequencies zero, arguments that are not a JSON object, an unknown rule or bad arguments.
    """
    return [(name, frequency, args) for name, frequency, args, _ in _parse(text)]


def from_gars(text: str) -> Rule:
    """The :func:`mixture` described by the paper's ``--gars`` text (see :func:`parse_gars`)."""
    return mixture([(rule, frequency) for _, frequency, _, rule in _parse(text)])


# --------------------------------------------------------------------------- the rule


def _validate(components: Sequence[tuple[Rule, float]]) -> list[tuple[Rule, float]]:
    if isinstance(components, (str, bytes)) or not isinstance(components, Sequence):
        raise ValueError(
            "mixture: components must be a sequence of (Rule, frequency) pairs, "
            f"got {type(components).__name__}; for the --gars text use from_gars"
        )
    if not components:
        raise ValueError("mixture: no components; give at least one (Rule, frequency) pair")
    checked = []
    for index, pair in enumerate(components):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(
                f"mixture: component {index + 1} must be a (Rule, frequency) pair, got {pair!r}"
            )
        rule, frequency = pair
        if not isinstance(rule, Rule):
            raise ValueError(
                f"mixture: component {index + 1} is {rule!r}, not a Rule; "
                "build it with jaxbyz.aggregators.get(name, **params)"
            )
        if (
            isinstance(frequency, bool)
            or not isinstance(frequency, numbers.Real)
            or not math.isfinite(frequency)
            or frequency < 0
        ):
            raise ValueError(
                f"mixture: component {index + 1} ({rule.name}) has frequency {frequency!r}; "
                "it must be a finite float >= 0"
            )
        checked.append((rule, float(frequency)))
    if not any(frequency > 0 for _, frequency in checked):
        raise ValueError("mixture: every frequency is zero; give one component a positive one")
    return checked


def mixture(components: Sequence[tuple[Rule, float]]) -> Rule:
    """A rule that, at every call, draws one component with probability ``freq_i / Σ freq``.

    Args:
      components: ``(rule, frequency)`` pairs; frequencies are finite, >= 0, not all zero.

    Returns:
      A :class:`Rule` named ``"mixture"`` whose ``params["components"]`` records each
      component's ``(name, frequency, params)``, so that ``repr`` shows them.

    Behaviour:
      - ``key`` is required (``needs_key``): ``draw, sub = jax.random.split(key)``; the index is
        drawn from ``draw`` by ``jax.random.choice(draw, k, p=freq / Σ freq)`` over the
        components of positive frequency (a zero-frequency component is never drawn), and a
        randomised component (``needs_key``, e.g. behind bucketing) gets ``sub``, independent
        from the draw. The component is applied with ``jax.lax.switch``, so the rule is jittable
        and vmappable; under ``vmap`` over keys the switch becomes a select that evaluates
        *every* branch (the cost is the sum of the components', not one of them).
      - ``needs_prev`` if any component needs it (only those components receive ``prev``).
      - ``reference_size`` the largest of the components' (only the components that read the
        server's gradient receive ``reference``).
      - ``selects`` if any component selects; ``accepted`` is then the drawn component's
        ``[n]`` mask, or an ``[n]`` vector of NaN when the drawn component does not select (the
        "Byzantine accepted" metric is then NaN for that step); ``None`` when none selects.
      - The aggregate is the drawn component's own (jitted) output, bit for bit; outputs are
        only cast to a common dtype when the components disagree on it. The mixture is always
        compiled (one cached ``jax.jit`` per ``f`` and shapes, inlined under an outer jit), so
        it may differ in the last bit from a component run eagerly, op by op.
      - ``check`` fails with the first failing component's constraint, prefixed with its name,
        as the paper's code does (zero-frequency components are checked too).
      - ``upper_bound`` is None: no variance-norm bound is published for a mixture.
    """
    checked = _validate(components)
    active = [(rule, frequency) for rule, frequency in checked if frequency > 0]
    total = sum(frequency for _, frequency in active)
    probabilities = np.asarray([frequency / total for _, frequency in active], np.float32)
    selects = any(rule.selects for rule, _ in checked)

    def run(rule: Rule, G: Array, f: int, key: Array, prev: Array | None, ref: Any) -> tuple:
        return rule.aggregate(
            G,
            f,
            key=key if rule.needs_key else None,
            prev=prev if rule.needs_prev else None,
            reference=ref if rule.needs_reference else None,
        )

    def apply(G: Array, f: int, key: Array, prev: Array | None, ref: Array | None) -> tuple:
        draw, sub = jax.random.split(key)
        shapes = [
            jax.eval_shape(
                lambda G, k, p, r, rule=rule: run(rule, G, f, k, p, r), G, sub, prev, ref
            )
            for rule, _ in active
        ]
        agg_dtype = jnp.result_type(*(shape[0].dtype for shape in shapes))
        masks = [shape[1].dtype for shape in shapes if shape[1] is not None]
        acc_dtype = jnp.result_type(*masks) if masks else jnp.float32
        n = G.shape[0]

        def branch(rule: Rule):
            def call(G: Array, key: Array, prev: Array | None, ref: Array | None) -> tuple:
                aggregate, accepted = run(rule, G, f, key, prev, ref)
                aggregate = aggregate.astype(agg_dtype)
                if not selects:
                    return aggregate, None
                if accepted is None:
                    return aggregate, jnp.full((n,), jnp.nan, acc_dtype)
                return aggregate, accepted.astype(acc_dtype)

            return call

        if len(active) == 1:
            index = jnp.zeros((), jnp.int32)
        else:
            index = jax.random.choice(draw, len(active), p=jnp.asarray(probabilities))
        return jax.lax.switch(index, [branch(rule) for rule, _ in active], G, sub, prev, ref)

    # One jitted program per (f, shapes): eager calls hit the cache instead of retracing every
    # branch; under an outer jit / vmap it is inlined.
    jitted = jax.jit(apply, static_argnums=1)

    def fn(
        G: Array,
        f: int,
        *,
        key: Array,
        prev: Array | None = None,
        reference: Array | None = None,
        **_: Any,
    ) -> tuple:
        return jitted(G, f, key, prev, reference)

    def check_fn(n: int, f: int, **_: Any) -> str | None:
        for rule, _ in checked:
            message = None if rule.check_fn is None else rule.check_fn(n, f, **rule.params)
            if message is not None:
                return f"{rule.name} (mixture component): {message}"
        return None

    return Rule(
        name="mixture",
        fn=fn,
        params={
            "components": tuple(
                (rule.name, frequency, dict(rule.params)) for rule, frequency in checked
            )
        },
        check_fn=check_fn,
        bound_fn=None,
        selects=selects,
        needs_key=True,
        needs_prev=any(rule.needs_prev for rule, _ in checked),
        reference_size=max(rule.reference_size for rule, _ in checked),
    )
