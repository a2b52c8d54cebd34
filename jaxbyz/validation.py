"""Parameter checks of jaxbyz: every error names the owner, the parameter, its value and the fix.

One message format for every check::

    <owner>: parameter <name>=<value!r> is invalid; <what is required / the fix>

``owner`` names what takes the parameter: a rule or pre-aggregator (``"krum"``, ``"bucketing"``)
or an attack (``"attack little"``). For example::

    krum: parameter m=0 is invalid; pass an integer >= 1 or omit it
    attack little: parameter negative='yes' is invalid; pass True or False

What is checked where:

- rule and pre-aggregator parameters (``jaxbyz.aggregators``), by their factories at
  construction (``aggregators.get(name, **params)``): unknown names, types, ranges, choices;
- attack parameters (``jaxbyz.attacks``), by their factories at construction
  (``attacks.get(name, **params)``) and, for unknown names only, at call time
  (``atk(H, f, **overrides)``). Attack parameters may be overridden at call time with JAX arrays
  (tracers, so that a sweep can ``vmap`` over them); the checkers given ``allow_array=True`` let
  a ``jax.Array`` through unchecked;
- run configuration (``jaxbyz.config.Config``): :func:`check_config`, the section
  "Configuration checks" at the end of this module, before anything compiles; its messages name
  the command-line flag (``--nb-workers must be a positive integer, got 0``).

Constraints that need the number of workers (``n >= 2f + 3``, ...) are not parameter checks:
they live with each rule (``Rule.check``) and attack (``Attack.check``).

Each checker returns the (coerced) value, so a call site reads
``factor = number("attack little", "factor", factor, minimum=0)``; :func:`invalid` builds the
error for the checks that no generic checker covers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Union

import jax


def invalid(owner: str, name: str, value: Any, fix: str) -> ValueError:
    """The error for parameter ``name=value`` of ``owner``; ``fix`` says what is required."""
    return ValueError(f"{owner}: parameter {name}={value!r} is invalid; {fix}")


def is_array(value: Any) -> bool:
    """Whether ``value`` is a JAX array or tracer (a call-time override, not validated)."""
    return isinstance(value, jax.Array)


# ---------------------------------------------------------------------------------------------- #
# Rule, pre-aggregator and attack parameters


def reject_unknown(owner: str, unknown: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Raise if ``unknown`` holds keyword parameters that ``owner`` does not take.

    The message names the first unknown parameter and its value, lists the other unknown ones,
    and lists the accepted parameters.
    """
    if not unknown:
        return
    (name, value), *others = unknown.items()
    also = ", ".join(f"{k}={v!r}" for k, v in others)
    fix = f"{owner} has no parameter {name!r}" + (f" (also unknown: {also})" if also else "")
    fix += f"; accepted parameters: {', '.join(known)}" if known else "; it takes no parameters"
    raise invalid(owner, name, value, fix)


def _range_text(minimum: Any, above: Any, below: Any) -> str:
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if above is not None:
        bounds.append(f"> {above}")
    if below is not None:
        bounds.append(f"< {below}")
    return " and ".join(bounds)


def number(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    allow_array: bool = False,
) -> Any:
    """A finite real number (not a bool), returned as a ``float``.

    ``minimum``: ``value >= minimum``; ``above``: ``value > above``; ``below``: ``value < below``.
    ``allow_array``: a ``jax.Array`` (a traced override) is returned unchecked.
    """
    if allow_array and is_array(value):
        return value
    bounds = _range_text(minimum, above, below)
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (minimum is None or value >= minimum)
        and (above is None or value > above)
        and (below is None or value < below)
    )
    if not ok:
        raise invalid(owner, name, value, "pass a finite number" + (f" {bounds}" if bounds else ""))
    return float(value)


def integer(
    owner: str, name: str, value: Any, *, minimum: int | None = None, optional: bool = False
) -> Any:
    """A Python ``int`` (not a bool), at least ``minimum`` when given (``None`` if ``optional``)."""
    if value is None and optional:
        return None
    ok = (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and (minimum is None or value >= minimum)
    )
    if not ok:
        fix = "pass an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise invalid(owner, name, value, fix + (" or omit it" if optional else ""))
    return int(value)


def boolean(owner: str, name: str, value: Any, *, allow_array: bool = False) -> Any:
    """``True`` or ``False``; with ``allow_array``, a ``jax.Array`` is returned unchecked."""
    if allow_array and is_array(value):
        return value
    if not isinstance(value, bool):
        raise invalid(owner, name, value, "pass True or False")
    return value


def choice(owner: str, name: str, value: Any, options: tuple[str, ...]) -> Any:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise invalid(owner, name, value, f"choose one of {', '.join(options)}")
    return value


# ---------------------------------------------------------------------------------------------- #
# Inputs of rules and attacks (checked at trace time: shapes and dtypes only)


def count(owner: str, name: str, value: Any) -> int:
    """A count of rows (``f``): an integer >= 0, not a bool (``f = 1.7`` is not truncated)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise invalid(owner, name, value, "pass an integer >= 0 (a number of Byzantine rows)")
    return int(value)


def matrix(owner: str, name: str, value: Any) -> jax.Array:
    """``value`` as a ``[k, d]`` array of at least one row and one column: integer and boolean
    arrays promoted to float32; complex, string or object arrays refused."""
    import jax.numpy as jnp

    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None or shape is None:
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: {name} must be a [k, d] array of numbers, got {type(value).__name__}"
            ) from None
        dtype, shape = value.dtype, value.shape
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"{owner}: {name} must be a [k, d] matrix with k >= 1 rows and d >= 1 columns, got "
            f"shape {tuple(shape)}"
        )
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        return jnp.asarray(value, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{owner}: {name} must hold real numbers (float, or integers promoted to float32), "
            f"got dtype {dtype}"
        )
    return value


def vector(owner: str, name: str, value: Any, d: int) -> jax.Array:
    """``value`` as a ``[d]`` array of real numbers (shape and dtype checked, values not)."""
    import jax.numpy as jnp

    value = jnp.asarray(value)
    if value.shape != (d,) or not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(
            f"{owner}: {name} must be a [{d}] float vector (one value per coordinate), got "
            f"shape {tuple(value.shape)} and dtype {value.dtype}"
        )
    return value


# ---------------------------------------------------------------------------------------------- #
# Configuration checks


def _count(flag_name: str, value: Any, minimum: int) -> None:
    """``value`` must be an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{flag_name} must be {need}, got {value!r}")


def _real(flag_name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> None:
    """``value`` must be a finite real number above ``low`` (or at least it)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
    )
    if not ok:
        need = f"a finite number {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{flag_name} must be {need}, got {value!r}")


def _optional(flag_name: str, value: Any, check: Callable[..., None], **kwargs: Any) -> None:
    if value is not None:
        check(flag_name, value, **kwargs)


def _built(flag_name: str, name: str, build: Callable[[], Any]) -> Any:
    """``build()``, its errors reworded to name the flag."""
    try:
        return build()
    except TypeError as err:
        raise ValueError(f"{flag_name} {name}: bad {flag_name}-args: {err}") from None
    except ValueError as err:
        raise ValueError(f"{flag_name} {name}: {err}") from None


MAX_STEPS = 10**8  # steps of one run
MAX_ROWS = 2**24  # workers, or examples in one worker's batch

_KINDS = {
    int: "an integer",
    float: "a finite number",
    str: "a string",
    bool: "true or false",
    dict: "a table of key: value pairs",
}


def type_ok(kind: type, value: Any) -> bool:
    """Whether ``value`` is of the field type ``kind``: no bool for a number, finite floats only,
    string-keyed tables (shared by :func:`check_types` and the grid checks)."""
    if kind is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, kind)


def check_types(config: Any) -> None:
    """Every field of a :class:`jaxbyz.config.Config` of its declared type (an integer where an
    integer is due, a finite number where a float is, ...), before any other check."""
    import types
    import typing

    from jaxbyz.config import FIELD_TYPES, FIELDS

    for name, annotation in FIELD_TYPES.items():
        value = getattr(config, name)
        union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is Union
        members = typing.get_args(annotation) if union else (annotation,)
        kinds = [typing.get_origin(k) or k for k in members]
        optional = type(None) in kinds
        kinds = [k for k in kinds if k is not type(None)]
        if (value is None and optional) or any(type_ok(k, value) for k in kinds):
            continue
        flag_name = FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-"))
        need = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise ValueError(
            f"{flag_name} (field {name}) must be {need}{' or none' if optional else ''}, "
            f"got {value!r} ({type(value).__name__})"
        )


def check_config(config: Any) -> tuple[Any, Any]:
    """Check every field of a :class:`jaxbyz.config.Config` before anything compiles; return the
    built rule and attack. Raises one ValueError naming the flag, the value and the fix."""
    from jaxbyz import aggregators, attacks, initializers, losses, models, transforms
    from jaxbyz.config import CLIP_MODES
    from jaxbyz.data import DATASETS, NUM_CLASSES, resolve_partition
    from jaxbyz.momentum import check_placement
    from jaxbyz.schedules import parse_piecewise

    c = config
    check_types(c)
    if c.nb_steps == -1:
        raise ValueError(
            "--nb-steps -1 (no limit, the paper's default) cannot be honoured: a run is compiled "
            "for its number of steps; fix: give --nb-steps N"
        )
    if c.dataset not in DATASETS:
        raise ValueError(f"--dataset {c.dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    for flag_name, value in (
        ("--batch-size", c.batch_size),
        ("--nb-steps", c.nb_steps),
        ("--nb-workers", c.nb_workers),
        ("--learning-rate-decay-delta", c.learning_rate_decay_delta),
    ):
        _count(flag_name, value, 1)
    for flag_name, value, bound, why in (
        ("--nb-steps", c.nb_steps, MAX_STEPS, "the study writes one row per step"),
        ("--nb-workers", c.nb_workers, MAX_ROWS, "the worker axis is an array axis"),
        ("--batch-size", c.batch_size, MAX_ROWS, "each worker's batch is gathered on the device"),
    ):
        if value > bound:
            raise ValueError(
                f"{flag_name} {value:,} is beyond what a run can hold ({bound:,} at most: {why}); "
                f"fix: a smaller {flag_name}"
            )
    _count("--evaluation-delta", c.evaluation_delta, 0)
    _count("--nb-for-study", c.nb_for_study, -(2**31))
    _count("--nb-for-study-past", c.nb_for_study_past, 0)
    _count("--learning-rate-decay", c.learning_rate_decay, -(2**31))
    _count("--seed", c.seed, -(2**31))  # negative: drawn by the command line
    _optional("--batch-size-test", c.batch_size_test, _count, minimum=1)
    _optional("--batch-size-test-reps", c.batch_size_test_reps, _count, minimum=1)
    _check_rounds(c)
    _built("--model", c.model, lambda: models.get(c.model, NUM_CLASSES[c.dataset], **c.model_args))
    for flag_name, name, args, mono in (
        ("--init-multi", c.init_multi, c.init_multi_args, False),
        ("--init-mono", c.init_mono, c.init_mono_args, True),
    ):
        if name is not None:
            initializers.check_initializer(flag_name, name, args, mono=mono)
        elif args:
            raise ValueError(f"{flag_name}-args {args} given without {flag_name}")
    _built("--loss", c.loss, lambda: losses.get(c.loss, **c.loss_args))
    _built("--criterion", c.criterion, lambda: losses.criterion(c.criterion, **c.criterion_args))
    _real("--l1-regularize", c.l1_regularize)
    _real("--l2-regularize", c.l2_regularize)
    _real("--weight-decay", c.weight_decay)
    check_placement(c.momentum_at)
    if c.learning_rate_schedule is None:
        _real("--learning-rate", c.learning_rate, strict=True)
    else:
        parse_piecewise(c.learning_rate_schedule)
    if not (isinstance(c.momentum, (int, float)) and 0.0 <= c.momentum < 1.0):
        raise ValueError(f"--momentum must be in [0, 1), got {c.momentum!r}")
    if not (isinstance(c.dampening, (int, float)) and 0.0 <= c.dampening <= 1.0):
        raise ValueError(f"--dampening must be in [0, 1], got {c.dampening!r}")
    _built(
        "--server-optimizer",
        c.server_optimizer,
        lambda: transforms.server_optimizer(c.server_optimizer, 0.1, **c.server_optimizer_args),
    )
    _optional("--gradient-clip", c.gradient_clip, _real, strict=True)
    if c.clip_mode not in CLIP_MODES:
        raise ValueError(
            f"--clip-mode {c.clip_mode!r} is unknown; choose one of {', '.join(CLIP_MODES)}"
        )
    _optional("--dirichlet-alpha", c.dirichlet_alpha, _real, strict=True)
    resolve_partition(c.partition, c.dirichlet_alpha)  # --partition, and its alias agrees
    if not 0 <= c.nb_decl_byz < c.nb_workers:
        raise ValueError(
            f"--nb-decl-byz must be in [0, nb-workers), got {c.nb_decl_byz} with --nb-workers "
            f"{c.nb_workers}; fix: declare fewer Byzantine workers or add workers"
        )
    if c.topology is None and not 0 <= c.f_real <= c.nb_decl_byz:
        raise ValueError(
            f"--nb-real-byz must be between 0 and --nb-decl-byz ({c.nb_decl_byz}), got {c.f_real}"
        )
    if c.gars is not None:
        rule = _built("--gars", c.gars, lambda: aggregators.from_gars(c.gars))
    else:
        rule = _built("--gar", c.gar, lambda: aggregators.get(c.gar, **c.gar_args))
    attack = _built("--attack", c.attack, lambda: attacks.get(c.attack, **c.attack_args))
    if c.topology is not None:
        from jaxbyz.decentralized import check_decentralized

        check_decentralized(c, rule, attack)
        return rule, attack
    if c.attack == "dissensus" and c.f_real > 0:
        raise ValueError(
            "--attack dissensus is defined on a graph (each Byzantine node sends each neighbour "
            "its own vector); fix: add --topology GRAPH or choose another attack"
        )
    rows, f_decl = c.participants, c.round_f_decl
    try:
        rule_admits(c, rule)
    except ValueError as err:
        flag_name = "--gars" if c.gars is not None else f"--gar {c.gar}"
        told = (
            f"--nb-workers {c.nb_workers}, --nb-decl-byz {c.nb_decl_byz}"
            if rows == c.nb_workers and f_decl == c.nb_decl_byz
            else f"{rows} clients per round, told {f_decl} Byzantine"
        )
        raise ValueError(
            f"{flag_name}: {err} ({told}); fix: add workers or declare fewer Byzantine ones"
        ) from None
    attack.check(rows, f_decl, min(c.f_real, rows, f_decl))
    if c.clients_per_round is not None and c.f_real > 0:
        _check_partial_attack(c, attack)
    return rule, attack


def rule_admits(config: Any, rule: Any) -> None:
    """Raise the rule's ValueError when it cannot run as ``config`` uses it: on ``n`` rows told
    ``f`` (``rule.check(n, f)``), on the ``M`` clients of a round told ``--round-decl-byz``, or
    on every honest neighbourhood of a graph told ``--nb-decl-byz`` (``--mixing rule``)."""
    c = config
    if c.topology is None:
        rule.check(c.participants, c.round_f_decl)
    elif c.mixing == "rule":
        from jaxbyz.decentralized import build_network
        from jaxbyz.topology import check_neighbourhoods

        network = build_network(c)
        check_neighbourhoods(network.graph, network.byzantine, rule.check, c.nb_decl_byz, c.gar)


def _check_rounds(c: Any) -> None:
    """The federated flags: ``--nb-local-steps K >= 1``, ``1 <= --clients-per-round M <= n``,
    ``0 <= --round-decl-byz < M``, ``--local-state``, ``--server-learning-rate > 0``; local steps
    and partial participation without Nesterov or a graph."""
    _count("--nb-local-steps", c.nb_local_steps, 1)
    if c.clients_per_round is not None:
        _count("--clients-per-round", c.clients_per_round, 1)
        if c.clients_per_round > c.nb_workers:
            raise ValueError(
                f"--clients-per-round {c.clients_per_round} exceeds the {c.nb_workers} clients "
                f"(--nb-workers); fix: --clients-per-round <= {c.nb_workers}"
            )
    elif c.round_decl_byz is not None:
        raise ValueError(
            f"--round-decl-byz {c.round_decl_byz} is for partial participation; fix: add "
            "--clients-per-round M or use --nb-decl-byz"
        )
    if c.round_decl_byz is not None:
        _count("--round-decl-byz", c.round_decl_byz, 0)
        if c.round_decl_byz >= c.participants:
            raise ValueError(
                f"--round-decl-byz {c.round_decl_byz} must be below the {c.participants} clients "
                "per round; fix: declare fewer Byzantine clients"
            )
    if c.local_state not in ("keep", "reset"):
        raise ValueError(f"--local-state {c.local_state!r} is unknown; choose keep or reset")
    _real("--server-learning-rate", c.server_learning_rate, strict=True)
    if c.federated and c.momentum_nesterov:
        raise ValueError(
            "--momentum-nesterov with federated rounds (--nb-local-steps > 1 or "
            "--clients-per-round) is not defined here; fix: drop --momentum-nesterov"
        )
    if c.federated and c.topology is not None:
        raise ValueError(
            f"--topology {c.topology!r} with federated rounds: a graph has no server to run "
            "rounds; fix: drop --nb-local-steps/--clients-per-round or --topology"
        )


def _check_partial_attack(c: Any, attack: Any) -> None:
    """With partial participation the number of Byzantine clients in a round varies: only
    attacks computed from masked statistics (the moment family with a fixed factor) or from the
    attackers' own data (data poisoning) are defined; others need a fixed row count."""
    from jaxbyz.structure import attack_moments

    if attack.poison is not None or attack_moments(attack.name, attack.params) is not None:
        return
    raise ValueError(
        f"--attack {c.attack} {c.attack_args or ''} with --clients-per-round: the honest rows of "
        "a round vary in number, and this attack needs a fixed count; fix: little or empire with "
        "a fixed factor (e.g. --attack-args factor:1.5), or labelflip"
    )
