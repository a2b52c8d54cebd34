"""``optimized``: Byzantine rows optimised by projected gradient ascent through the rule.

The attack maximises, over the ``[f, d]`` Byzantine rows ``B``, an objective of the aggregate
``F(G)`` of ``G = concat(H, B)`` (the honest rows first, as in the simulator), ``F`` the server's
rule told to tolerate ``f_decl``, ``mu_h`` the mean of the honest rows:

- ``objective="deviation"`` (default): ``J(B) = ||F(G) - mu_h||^2``, the deviation objective of
  the adaptive attacks of El-Mhamdi, Guerraoui & Rouault (ICLR 2021) and of the AGR-tailored
  attacks of Shejwalkar & Houmansadr (NDSS 2021);
- ``objective="cosine"``: ``J(B) = -cos(F(G), mu_h)`` (turn the aggregate away from the honest
  direction, as the inner-product manipulation of Xie, Koyejo & Gupta, UAI 2019, aims to);
- ``objective="directed"``: ``J(B) = -<F(G), mu_h> / ||mu_h||``, minus the aggregate's component
  along the honest mean. A descent step ``-lr F`` changes the loss by about ``-lr <mu_h, F>``
  when ``mu_h`` estimates the gradient, so this is the first-order loss increase of the step, up
  to ``lr ||mu_h||``: the "directed deviation" goal of Fang, Cao, Jia & Gong (USENIX Security
  2020), with the honest mean in place of its sign. Unlike ``deviation``, it does not reward an
  aggregate pushed far along ``+mu_h`` or sideways.

Memory (``memory = m``, default 0). With ``m = 0`` every objective is greedy: it scores one
step. Momentum (at the server, ``beta = 0.9``) adds up about ``1 / (1 - beta) = 10`` steps of a
bias that keeps its direction, but only about ``1 / sqrt(1 - beta^2) = 2.3`` of one whose
direction changes from step to step; the fixed-direction attacks (``little``, ``minmax``,
``minsum``: ``mu_h - gamma sigma_h``) can therefore cost more accuracy over a run than a larger
per-step deviation in changing directions (README, "Results: is the optimized attack the
strongest?"). With ``m > 0`` the attack remembers the deviation it has caused,
``e_t = m e_{t-1} + (F_t - mu_t)`` (kept by the simulator, :class:`jaxbyz.attacks.Attack`'s
``drift``), and scores ``F + m e_{t-1}`` in place of ``F``: with ``objective="deviation"``,
``J = ||m e_{t-1} + F - mu_h||^2``. When ``m`` is the server's momentum ``beta`` (and the server
runs heavy-ball momentum without dampening), ``e_t`` is exactly the difference between the
server's momentum buffer and the one honest rows alone would have built, and ``J`` the squared
deviation of the buffer the server steps along. The cross term ``2 m <e_{t-1}, F - mu_h>``
rewards the candidate that keeps the direction of the past deviation, which the greedy objective
is indifferent to where the rule saturates (the median, trmean: many candidates tie). As ``m``
nears 1, ``e_t`` nears the drift the attack has added to the parameters (up to the factor
``lr``, or ``lr / (1 - beta)`` under server momentum), which add up every step's deviation
without decay; on the paper's Fashion-MNIST setting (one seed) ``m = 0.99`` is the strongest
attack against trmean and geomed with server momentum, and weaker than ``m = 0.9`` at the
median (README, same section).

The deviation objective is blind to the side: an aggregate pushed along ``+mu_h`` (a longer
honest step) scores as well as one pushed against it. The search keeps the side
of its starts (ascent lengthens a start's displacement), so every start must be an attack: the
paper's ``empire`` is ``factor=1.1`` (``-0.1 mu_h``); with ``negative=True`` it would send
``2.1 mu_h``, which wins the deviation against Krum and the median by lengthening the honest
step instead of opposing it (README, same section).

Parametrisation (``shared``): ``shared=True`` (default) optimises one row ``b`` sent by every
Byzantine worker (``B = 1_f b``); ``shared=False`` one row per worker.

Direction (``direction``). ``"free"`` (default): the rows move anywhere in the ball below.
``"start"``: each start keeps its direction from ``mu_h`` and only its length is optimised,
``B = mu_h + (1 + t s / r_0) (B_0 - mu_h)`` for a scalar ``t >= -r_0 / s`` (in honest spreads
``s``; ``r_0`` the start's largest distance to ``mu_h``): the gradient version of the
AGR-tailored search of Shejwalkar & Houmansadr (NDSS 2021), which fits the scale ``gamma`` of
``mu_h - gamma p`` to the known rule. Against rules that saturate (the median, trmean, geomed:
beyond some length the aggregate no longer moves) every direction reaches about the same
deviation, so the free search picks among near-ties, often the ascent from ``empire``
(``-mu_h``, which follows the gradient and changes sign with it); ``"start"`` keeps the
fixed ``-sigma_h`` direction of ``little``/``minmax`` and saturates it, at least their
deviation along the same direction. On Gaussian inputs (``d = 2000``, ``h = 39``, ``f = 12``,
memory 0.9) against trmean: free 25.9 with cosine -0.06 to ``-sigma_h``, start 26.0 with cosine
1.00, ``little`` 24.0, ``minmax`` 20.6. Where the rule saturates, the side of the push matters
over a run although no one-step objective sees it: at the median with server momentum on the
paper's Fashion-MNIST setting (8 seeds), ``mu_h - 1.5 sigma_h`` (every coordinate down) leaves
0.674 accuracy, ``mu_h + 1.5 sigma_h`` 0.758; ``"start"`` from ``minmax``/``minsum`` keeps their
side and there gives ``little``'s runs bit for bit, the free search a side of its own
(0.688 by the mean of the last 30 evaluations).

Search. From every starting point at once (``jax.vmap`` over the starts, one ``lax.scan`` over
the steps), ``steps`` steps of an optax optimiser (``optimizer``, by name: ``getattr(optax,
name)(lr)``) ascend the (relaxed, see below) objective. The starting points are the outputs of
the library's attacks named in ``starts`` (default ``little`` with the paper's ``factor=1.5,
negative=True``, ``empire`` with ``factor=1.1``, ``minmax`` and ``minsum`` with
their defaults; any other registered attack with its defaults); with ``shared=True`` a start is
represented by its first row (exact for these starts, which send identical rows).

Step size: ``learning_rate`` is relative to the honest spread ``s = mean_i ||h_i - mu_h||``: the
optimiser gets ``lr = learning_rate * s / sqrt(d)``, so that an Adam step (about ``lr`` per
coordinate) moves a row by about ``learning_rate * s`` in norm (``s`` falls back to the mean
honest row norm, then to 1, when it is zero). With ``direction="start"`` the variable ``t`` is in
spreads and gets ``lr = learning_rate``: the same travel. Default 0.3 (20 steps can travel six
spreads): the best of 0.1 and 0.3 against krum, trmean and geomed on random inputs (h = 12,
d = 16).

Budget (``radius``): after every step each Byzantine row is projected onto the ball
``||b - mu_h|| <= max(radius * max_i ||h_i - mu_h||, r_0)``, ``r_0`` the largest distance of the
start's rows to ``mu_h`` (so that the start itself is feasible and never shrunk; with
``direction="start"``, ``t`` is clipped to the same ball). Default 3: on the paper's
Fashion-MNIST setting a ball of 10 gave the same runs to the last digit against the median and
geomed (where tried), so there the ball of 3 did not bind. ``radius=None`` leaves the search
unbounded (against ``average`` the deviation is then unbounded and grows with the step size).

Relaxations. The ascent follows the gradient of a relaxed rule where the exact one has discrete
choices (:mod:`jaxbyz.attacks.relaxations`: Krum, Bulyan, MDA, SMEA, geomed, CGE, Aksel, MoNNA,
DnC, the two clustering rules, SignGuard, CAF, at relative ``temperature``; for trmean the exact
rule written as a masked mean, whose gradient is cheaper than autodiff's); other rules are
differentiated exactly by JAX, or straight through where reverse-mode autodiff cannot trace
them. Candidates are always SCORED with the exact rule.

Selection: every iterate of every start, the start itself and the final point included, is
scored with the exact objective under the exact rule (NaN counts as ``-inf``) and the best is
returned (first on ties), so the attack is never weaker than its starts on its objective.

Randomised rules are evaluated with one key derived from the attack's key (common random
numbers); the simulator's rule draws its own. Centred clipping is evaluated from ``prev = 0``
(the attack does not see the server's previous aggregate), as by the other adaptive attacks.

Cost: ``len(starts)`` start attacks, then per step and start one gradient of the (relaxed)
objective, plus one exact evaluation where the gradient is not the exact rule's; one more exact
evaluation per start at the end.

Public code checked: none for the search itself (it is this library's own combination); the
starts are the library's attacks, whose modules name the public code they were checked
against (LPD-EPFL/ByzantineMomentum for ``little`` and ``empire``; vrt1shjwlkr/NDSS21-Model-
Poisoning for ``minmax`` and ``minsum``), and the relaxations are written from the rules'
definitions in :mod:`jaxbyz.aggregators`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxbyz.attacks.adaptive import call_rule
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import PARAMS, REGISTRY, register
from jaxbyz.attacks.relaxations import RELAXATIONS, straight_through
from jaxbyz.rows import HIGHEST, broadcast_row, row_mean, row_norms
from jaxbyz.validation import boolean, choice, integer, invalid, is_array, number

Array = jax.Array

OBJECTIVES = ("deviation", "cosine", "directed")
DIRECTIONS = ("free", "start")
DEFAULT_STARTS = ("little", "empire", "minmax", "minsum")
# the fixed settings the starts are built with (the papers' experiments); others: defaults
START_PARAMS: dict[str, dict[str, Any]] = {
    "little": {"factor": 1.5, "negative": True},
    "empire": {"factor": 1.1},
}
_OWNER = "attack optimized"


# ---------------------------------------------------------------------------------------------- #
# Objectives


def deviation(F: Array, mu: Array) -> Array:
    """``||F - mu||^2``."""
    v = F - mu
    return jnp.dot(v, v, precision=HIGHEST)


def cosine(F: Array, mu: Array) -> Array:
    """``-cos(F, mu)`` (0 when either vector is 0)."""
    tiny = jnp.finfo(F.dtype).tiny
    nf = jnp.sqrt(jnp.maximum(jnp.dot(F, F, precision=HIGHEST), tiny))
    nm = jnp.sqrt(jnp.maximum(jnp.dot(mu, mu, precision=HIGHEST), tiny))
    return -jnp.dot(F, mu, precision=HIGHEST) / (nf * nm)


def directed(F: Array, mu: Array) -> Array:
    """``-<F, mu> / ||mu||`` (``-<F, mu>`` when ``mu`` is 0)."""
    nm = jnp.sqrt(jnp.maximum(jnp.dot(mu, mu, precision=HIGHEST), jnp.finfo(F.dtype).tiny))
    return -jnp.dot(F, mu, precision=HIGHEST) / nm


OBJECTIVE_FNS: dict[str, Callable[[Array, Array], Array]] = {
    "deviation": deviation,
    "cosine": cosine,
    "directed": directed,
}


def objective_value(
    objective: str,
    rule: Any,
    H: Array,
    B: Array,
    f_decl: int,
    key: Array | None,
    carried: Array | None = None,
) -> Array:
    """The exact objective of Byzantine rows ``B`` under the exact ``rule`` (NaN -> -inf), of
    ``F + carried`` when the attack remembers (``carried = m e_{t-1}``, module doc)."""
    G = jnp.concatenate([H, B.astype(H.dtype)])
    F = call_rule(rule, G, f_decl, key)
    value = OBJECTIVE_FNS[objective](F if carried is None else F + carried, row_mean(H))
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


# ---------------------------------------------------------------------------------------------- #
# Parameters


def _check_starts(starts: Any) -> tuple[str, ...]:
    if isinstance(starts, str):
        starts = (starts,)
    if not isinstance(starts, (tuple, list)) or not starts:
        raise invalid(_OWNER, "starts", starts, "pass a non-empty tuple of attack names")
    names = []
    for name in starts:
        try:
            canonical = REGISTRY.canonical(name) if isinstance(name, str) else None
        except (KeyError, ValueError):
            canonical = None
        if canonical is None:
            fix = f"each start must be a registered attack, one of {', '.join(REGISTRY.names())}"
            raise invalid(_OWNER, "starts", starts, fix)
        if canonical == "optimized":
            raise invalid(_OWNER, "starts", starts, "optimized cannot start from itself")
        if _start_attack(canonical).poison is not None:
            fix = f"{canonical} poisons data (it has no vector to start from); drop it"
            raise invalid(_OWNER, "starts", starts, fix)
        names.append(canonical)
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _start_attack(name: str) -> Attack:
    """The start ``name`` (canonical) with the settings of :data:`START_PARAMS`."""
    settings = {k: v for k, v in START_PARAMS.get(name, {}).items() if k in PARAMS[name]}
    return REGISTRY.get(name, **settings)


def _check_optimizer(name: Any) -> str:
    factory = getattr(optax, name, None) if isinstance(name, str) else None
    try:
        transform = factory(1.0) if callable(factory) else None
    except (TypeError, ValueError, AttributeError):
        transform = None
    if not (hasattr(transform, "init") and hasattr(transform, "update")):
        raise invalid(
            _OWNER, "optimizer", name, "pass the name of an optax optimizer taking a learning "
            "rate first, e.g. 'adam', 'sgd', 'rmsprop'",
        )  # fmt: skip
    return name


def _settings(
    objective: Any, shared: Any, starts: Any, steps: Any, optimizer: Any, learning_rate: Any,
    temperature: Any, radius: Any, memory: Any, direction: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "objective": choice(_OWNER, "objective", objective, OBJECTIVES),
        "shared": boolean(_OWNER, "shared", shared),
        "starts": _check_starts(starts),
        "steps": integer(_OWNER, "steps", steps, minimum=0),
        "optimizer": _check_optimizer(optimizer),
        "learning_rate": number(_OWNER, "learning_rate", learning_rate, above=0, allow_array=True),
        "temperature": number(_OWNER, "temperature", temperature, above=0, allow_array=True),
        "radius": None
        if radius is None
        else number(_OWNER, "radius", radius, above=0, allow_array=True),
        "memory": number(_OWNER, "memory", memory, minimum=0, below=1, allow_array=True),
        "direction": choice(_OWNER, "direction", direction, DIRECTIONS),
    }


@register("optimized", "optimised", "gradient-ascent")
def optimized(
    objective: str = "deviation",
    shared: bool = True,
    starts: tuple[str, ...] = DEFAULT_STARTS,
    steps: int = 20,
    optimizer: str = "adam",
    learning_rate: Any = 0.3,
    temperature: Any = 0.1,
    radius: Any = 3.0,
    memory: Any = 0.0,
    direction: str = "free",
) -> Attack:
    """Byzantine rows optimised by projected gradient ascent through the rule (module doc).

    Args:
      objective: ``"deviation"`` (``||F - mu_h||^2``), ``"cosine"`` (``-cos(F, mu_h)``) or
        ``"directed"`` (``-<F, mu_h> / ||mu_h||``).
      shared: one row sent by every Byzantine worker (True) or one row each (False).
      starts: names of the attacks whose outputs start the search (``little``, ``empire`` at
        the papers' fixed factors; the others with their defaults).
      steps: optimiser steps from each start (>= 0; 0 picks the best start).
      optimizer: an optax optimiser by name (``getattr(optax, optimizer)(lr)``).
      learning_rate: step size relative to the honest spread (> 0; see module doc).
      temperature: relative temperature of the soft selections of the relaxations (> 0).
      radius: the search ball's radius in maximal honest distances to ``mu_h`` (> 0), or None.
      memory: the decay ``m`` in ``[0, 1)`` of the deviation the attack remembers (module doc;
        0: greedy, one step; the server's momentum, e.g. 0.9: the deviation of its buffer).
      direction: ``"free"`` (the rows move anywhere in the ball) or ``"start"`` (each start
        keeps its direction from ``mu_h``; only its length is optimised, module doc).
    """
    params = _settings(
        objective, shared, starts, steps, optimizer, learning_rate, temperature, radius, memory,
        direction,
    )  # fmt: skip
    remembers = is_array(params["memory"]) or params["memory"] != 0
    return Attack(
        name="optimized",
        fn=_attack_fn,
        params=params,
        needs_key=True,
        needs_rule=True,
        needs_drift=remembers,
    )


# ---------------------------------------------------------------------------------------------- #
# The attack


def _differentiable(fn: Callable[[Array], Array], x: Array) -> bool:
    """Whether reverse-mode autodiff of ``fn`` traces (a ``while_loop`` makes it fail)."""
    try:
        jax.eval_shape(jax.grad(fn), x)
    except (ValueError, TypeError, NotImplementedError):
        return False
    return True


def _project(rows: Array, mu: Array, r: Array) -> Array:
    """Rows ``[k, d]`` projected onto the ball of radius ``r`` around ``mu`` (inf: unbounded)."""
    norms = row_norms(rows - mu)
    factor = jnp.where(norms > r, r / jnp.maximum(norms, jnp.finfo(rows.dtype).tiny), 1.0)
    return mu + (rows - mu) * factor[:, None]


def _attack_fn(
    H: Array,
    f: int,
    *,
    key: Array,
    rule: Any,
    f_decl: int,
    objective: str,
    shared: bool,
    starts: tuple[str, ...],
    steps: int,
    optimizer: str,
    learning_rate: Any,
    temperature: Any,
    radius: Any,
    memory: Any,
    direction: str,
    drift: Array | None = None,
) -> Array:
    s = _settings(
        objective, shared, starts, steps, optimizer, learning_rate, temperature, radius, memory,
        direction,
    )  # fmt: skip
    d = H.shape[1]
    if f == 0:
        return jnp.zeros((0, d), H.dtype)
    key_starts, key_rule = jax.random.split(key)
    mu = row_mean(H)

    # the starting points [S, f, d] (shared: their first rows [S, d])
    outputs = [
        lax.stop_gradient(
            _start_attack(name)(
                H, f, key=jax.random.fold_in(key_starts, i), rule=rule, f_decl=f_decl
            ).astype(H.dtype)
        )
        for i, name in enumerate(s["starts"])
    ]
    BASE = jnp.stack([B[0] if s["shared"] else B for B in outputs])

    def rows_of(x: Array) -> Array:  # the [f, d] Byzantine rows of a free candidate
        return broadcast_row(x, f) if s["shared"] else x

    spread = row_norms(H - mu)
    reach = jnp.stack([jnp.max(row_norms(rows_of(b) - mu)) for b in BASE])  # [S]
    if s["radius"] is None:
        radii = jnp.full_like(reach, jnp.inf)
    else:
        radii = jnp.maximum(s["radius"] * jnp.max(spread), reach)
    scale = jnp.mean(spread)
    scale = jnp.where(scale > 0, scale, jnp.mean(row_norms(H)))
    scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    keep_direction = s["direction"] == "start"
    # free: an Adam step moves each coordinate by about lr, a row by about learning_rate * scale;
    # start: the variable is the displacement added along the start's direction, in spreads
    lr = s["learning_rate"] if keep_direction else s["learning_rate"] * scale / math.sqrt(d)
    transform = getattr(optax, s["optimizer"])(lr)

    def candidate(x: Array, base: Array, base_reach: Array) -> Array:
        """The [f, d] rows of the search variable ``x`` from the start ``base``."""
        if not keep_direction:
            return rows_of(x)
        factor = 1.0 + x * scale / jnp.maximum(base_reach, jnp.finfo(H.dtype).tiny)
        return rows_of(mu + (base - mu) * factor)

    def project(x: Array, base_reach: Array, r: Array) -> Array:
        if keep_direction:  # factor in [0, r / reach]: the side of the start, inside the ball
            return jnp.clip(x, -base_reach / scale, (r - base_reach) / scale)
        return _project(x[None], mu, r)[0] if s["shared"] else _project(x, mu, r)

    carried = None if drift is None else s["memory"] * drift.astype(H.dtype)
    objective_fn = OBJECTIVE_FNS[s["objective"]]

    def score_fn(F: Array, mu: Array) -> Array:
        return objective_fn(F if carried is None else F + carried, mu)

    relax = RELAXATIONS.get(getattr(rule, "name", None))

    def exact(B: Array) -> Array:
        return objective_value(s["objective"], rule, H, B, f_decl, key_rule, carried)

    def exact_surrogate(B: Array) -> Array:
        return score_fn(call_rule(rule, jnp.concatenate([H, B]), f_decl, key_rule), mu)

    if relax is not None:

        def surrogate(B: Array) -> Array:
            F = relax(
                rule, jnp.concatenate([H, B]), f_decl, key=key_rule, temperature=s["temperature"]
            )
            return score_fn(F, mu)

        exact_gradient = False
    elif _differentiable(exact_surrogate, rows_of(BASE[0])):
        surrogate, exact_gradient = exact_surrogate, True
    else:

        def surrogate(B: Array) -> Array:
            return score_fn(straight_through(rule, jnp.concatenate([H, B]), f_decl, key_rule), mu)

        exact_gradient = False

    def search(base: Array, base_reach: Array, r: Array) -> tuple[Array, Array]:
        """The best search variable from one start and its exact objective value."""
        rows = functools.partial(candidate, base=base, base_reach=base_reach)

        def body(carry: tuple, _: Any) -> tuple[tuple, None]:
            x, state, best_x, best_v = carry
            value, grad = jax.value_and_grad(lambda x: surrogate(rows(x)))(x)
            if exact_gradient:
                value = jnp.where(jnp.isnan(value), -jnp.inf, value)
            else:
                value = exact(rows(x))
            better = value > best_v
            best_x = jnp.where(better, x, best_x)
            best_v = jnp.where(better, value, best_v)
            grad = jnp.where(jnp.isfinite(grad), -grad, 0.0)  # optax minimises
            updates, state = transform.update(grad, state, x)
            x = project(optax.apply_updates(x, updates), base_reach, r)
            return (x, state, best_x, best_v), None

        x0 = jnp.zeros((), H.dtype) if keep_direction else base
        start = (x0, transform.init(x0), x0, jnp.asarray(-jnp.inf, H.dtype))
        (x, _, best_x, best_v), _ = lax.scan(body, start, None, length=s["steps"])
        value = exact(rows(x))
        better = value > best_v
        return jnp.where(better, x, best_x), jnp.where(better, value, best_v)

    best_x, best_v = jax.vmap(search)(BASE, reach, radii)
    i = jnp.argmax(best_v)  # rows built for the winner only, not for every start
    return candidate(best_x[i], BASE[i], reach[i]).astype(H.dtype)
