"""optax building blocks of Byzantine-resilient training.

A step of distributed SGD with ``n`` workers, written with optax transformations (the worker
axis is the leading axis of every update below)::

    per-worker gradients [n, ...]
        │  per_worker(clip_by_norm(C))                      the gradient estimate g_i
        │  per_worker(momentum(β, δ))                       worker side (placement "worker")
        │  per_worker(server_momentum(β, δ))                or (placement "server")
        ▼
    submissions [n, ...]  ──  Byzantine rows replaced by an attack
        │  robust_aggregate(rule, f)                        [n, ...] -> one update
        ▼
    aggregate [...]
        │  momentum(β, δ)                                   server side (placement "update")
        │  add_decayed_weights(λ), sgd(γ_t) or any optax optimiser
        ▼
    parameter update

The three momentum placements of El-Mhamdi, Guerraoui & Rouault (ICLR 2021, Section 3) are
three orders of composition of the same parts (``jaxbyz.momentum.compose`` builds them):

=========  ===============================================  =================================
placement  worker side (each row)                           server side (after the rule)
=========  ===============================================  =================================
update     ``per_worker(clip)``                             ``chain(momentum(β, δ), sgd(γ_t))``
worker     ``per_worker(clip)``, ``per_worker(momentum)``   ``sgd(γ_t)``
server     ``per_worker(clip)``, ``per_worker(server_       ``sgd(γ_t)``
           momentum)``: ``(1-δ) g_i + β a_{t-1}``
=========  ===============================================  =================================

where ``momentum(β, δ)`` keeps ``m_t = β m_{t-1} + (1 - δ) u_t`` (``optax.trace`` with
dampening), and the paper's Nesterov variant takes the gradients at :func:`lookahead`
``θ_t - γ_t β m``. Learning-rate schedules are optax schedules (:mod:`jaxbyz.schedules`).

:func:`switch` chooses among transformations by a traced index (every branch computed, the chosen
one kept), which lets runs with different placements share one compiled program
(:func:`jaxbyz.momentum.compose_traced`).

Every factory returns an ``optax.GradientTransformation`` (or ``...ExtraArgs``) whose state is a
NamedTuple, so that they compose with any optax code: ``robust_aggregate`` drops into a user's
own training loop, ``per_worker`` vmaps any optax transformation over the workers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

Array = jax.Array


# ---------------------------------------------------------------------------------------------- #
# Aggregation


class RobustAggregateState(NamedTuple):
    """State of :func:`robust_aggregate`.

    Attributes:
      previous: the last aggregate, with the shape of one worker's update (zeros before the
        first call): the centre of centred clipping, the ``a_{t-1}`` of :func:`server_momentum`.
      accepted: ``[n]`` weights the rule gave each row at the last call (1 accepted, 0 rejected;
        NaN for rules that do not select), or ``[0]`` when ``num_workers`` was not given.
    """

    previous: optax.Updates
    accepted: Array


def robust_aggregate(
    rule: Any,
    f: int,
    *,
    num_workers: int | None = None,
    axis_name: str | None = None,
    **params: Any,
) -> optax.GradientTransformationExtraArgs:
    """Aggregate the workers' updates with a robust rule: ``[n, ...]`` rows -> one update.

    ``update(updates, state, params=None, *, key=None, reference=None)`` takes a pytree whose
    leaves carry a leading worker axis ``[n, ...]``, flattens each worker's update into one row
    of an ``[n, d]`` matrix ``G``, applies the rule ``F(G, f)`` and returns the aggregate with
    the structure of one worker's update. ``key`` feeds randomised rules and pre-aggregators
    (bucketing); ``reference`` (one update's pytree) is the server's own gradient, for rules
    that read it (FLTrust); the state keeps the previous aggregate for stateful rules (centred
    clipping).

    Args:
      rule: a rule name (``jaxbyz.aggregators.names()``, built with ``params``) or a built
        :class:`jaxbyz.aggregators.Rule`.
      f: the number of Byzantine rows the rule tolerates (static).
      num_workers: ``n``, when known: the rule's constraint ``rule.check(n, f)`` is checked now,
        and the state records which rows the rule accepted.
      axis_name: inside ``shard_map`` (or ``pmap``, or a ``vmap`` with an axis name), the
        mapped axis over which the devices hold the rows: each device passes its own rows with
        their leading axis (``[1, ...]`` for one row), the rows are all-gathered, and every
        device computes the same aggregate. The ``key`` must then be the same on every device
        (a randomised rule would otherwise give each device another aggregate). Under
        ``jax.shard_map``, build the map with ``check_vma=False`` (or make the parameters
        varying with ``jax.lax.pcast`` before differentiating): with the check on, ``jax.grad``
        with respect to replicated parameters returns the *sum* of the devices' gradients, so
        every row would be the same sum, and the gathered aggregate cannot leave the map as a
        replicated value. ``jaxbyz.examples.robust_allreduce`` shows the whole pattern.
      **params: the rule's parameters when ``rule`` is a name.
    """
    from jaxbyz import aggregators

    if isinstance(rule, str):
        rule = aggregators.get(rule, **params)
    elif params:
        raise ValueError(
            f"robust_aggregate: parameters {sorted(params)} given with an already built rule "
            f"{rule!r}; pass the rule's name instead, or build it with these parameters"
        )
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"robust_aggregate: f={f!r} must be an integer >= 0")
    if num_workers is not None:
        rule.check(num_workers, f)
    recorded = 0 if num_workers is None else num_workers

    def init_fn(params: optax.Params) -> RobustAggregateState:
        return RobustAggregateState(
            previous=optax.tree.zeros_like(params), accepted=jnp.zeros((recorded,), jnp.float32)
        )

    def update_fn(updates, state, params=None, *, key=None, reference=None, **extra_args):
        del params, extra_args
        if axis_name is not None:
            updates = jax.tree.map(
                lambda u: jax.lax.all_gather(u, axis_name, axis=0, tiled=True), updates
            )
        rows, unravel = flatten_rows(updates)
        if num_workers is not None:
            chex.assert_axis_dimension(rows, 0, num_workers)
        previous, _ = ravel_pytree(state.previous)
        if reference is not None:
            reference = ravel_pytree(reference)[0].astype(rows.dtype)
        aggregate, accepted = rule.aggregate(
            rows, f, key=key, prev=previous.astype(rows.dtype), reference=reference
        )
        if num_workers is None:
            accepted = state.accepted
        elif accepted is None:
            accepted = jnp.full((num_workers,), jnp.nan, jnp.float32)
        out = unravel(aggregate)
        return out, RobustAggregateState(previous=out, accepted=accepted.astype(jnp.float32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def flatten_rows(updates: optax.Updates) -> tuple[Array, Callable[[Array], optax.Updates]]:
    """``([n, d] matrix, unravel)``: each worker's update (leaves ``[n, ...]``) as one row, and
    the map from a ``[d]`` vector back to one worker's pytree."""
    leaves = jax.tree.leaves(updates)
    if not leaves:
        raise ValueError("robust_aggregate: the updates hold no array")
    n = leaves[0].shape[0]
    if any(leaf.ndim == 0 or leaf.shape[0] != n for leaf in leaves):
        raise ValueError(
            "robust_aggregate: every leaf of the updates needs the same leading worker axis, "
            f"got shapes {[leaf.shape for leaf in leaves]}"
        )
    if len(leaves) == 1 and leaves[0].ndim == 2:  # already an [n, d] matrix: no copy
        treedef = jax.tree.structure(updates)
        return leaves[0], lambda v: jax.tree.unflatten(treedef, [v])
    _, unravel = ravel_pytree(jax.tree.map(lambda leaf: leaf[0], updates))
    return jax.vmap(lambda row: ravel_pytree(row)[0])(updates), unravel


# ---------------------------------------------------------------------------------------------- #
# The worker side


def per_worker(
    tx: optax.GradientTransformation, num_workers: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Apply ``tx`` to each worker's update independently: state and updates are vmapped over
    the leading worker axis, so ``per_worker(optax.trace(0.9))`` is worker momentum and
    ``per_worker(optax.clip_by_global_norm(2.0))`` per-worker clipping.

    Args:
      tx: any optax transformation of one worker's update.
      num_workers: ``n``. Given, ``init`` takes the model's parameters (one worker's shape) and
        starts every worker from the same state, and ``update``'s ``params`` are shared by the
        workers; ``None``: ``init`` and ``update`` take parameters stacked per worker
        ``[n, ...]`` (each worker with its own model, as in local training).

    Extra arguments of ``update`` (``previous_aggregate=...``, ...) are passed whole to every
    worker's ``tx``, not split.
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        if num_workers is None:
            return jax.vmap(tx.init)(params)
        state = tx.init(params)
        return jax.tree.map(lambda s: jnp.broadcast_to(s, (num_workers, *jnp.shape(s))), state)

    def update_fn(updates, state, params=None, **extra_args):
        if num_workers is not None:
            chex.assert_tree_shape_prefix(updates, (num_workers,))
        shared = params is None or num_workers is not None

        def one(update, worker_state, worker_params):
            return tx.update(update, worker_state, worker_params, **extra_args)

        return jax.vmap(one, in_axes=(0, 0, None if shared else 0))(updates, state, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class SwitchState(NamedTuple):
    """State of :func:`switch`: every branch's own state."""

    states: tuple[Any, ...]


def switch(
    index: int | Array, *branches: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """Apply ``branches[index]``, ``index`` a traced integer (or a Python int).

    Every branch is computed and the chosen one's updates are kept (``jnp.where``, not
    ``lax.cond``), so that runs with different ``index`` values batch under ``vmap`` into one
    program and the result equals the chosen branch's alone; the states of the branches not
    chosen stay as they were. Extra arguments reach the branches that declare them. An index
    past the last branch chooses the last. Meant for cheap elementwise branches (momentum
    buffers), not for expensive ones.
    """
    if not branches:
        raise ValueError("switch: give at least one branch")
    branches = tuple(optax.with_extra_args_support(b) for b in branches)

    def init_fn(params):
        return SwitchState(tuple(b.init(params) for b in branches))

    def update_fn(updates, state, params=None, **extra_args):
        results = [
            b.update(updates, s, params, **extra_args)
            for b, s in zip(branches, state.states, strict=True)
        ]
        chosen = results[-1][0]
        for i in range(len(results) - 2, -1, -1):
            chosen = _select(jnp.asarray(index) == i, results[i][0], chosen)
        states = tuple(
            _select(jnp.asarray(index) == i, new, old)
            for i, ((_, new), old) in enumerate(zip(results, state.states, strict=True))
        )
        return chosen, SwitchState(states)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _select(pick: Array, a: Any, b: Any) -> Any:
    """``a`` where ``pick`` else ``b``, leaf by leaf."""
    return jax.tree.map(lambda x, y: jnp.where(pick, x, y), a, b)


CLIP_MODES = ("scale", "unit")


def clip_by_norm(max_norm: float | Array, mode: str = "scale") -> optax.GradientTransformation:
    """Rescale an update whose Euclidean norm exceeds ``max_norm`` (stateless).

    ``scale``: ``u · (C / ‖u‖)``, norm ``C`` (the arithmetic of the paper's final code);
    ``unit``: ``u · (1 / ‖u‖)``, norm 1, what the paper's published experiments ran (its code
    divided by the norm before a later fix). Updates with norm at most ``C`` are unchanged.
    Same result as ``optax.clip_by_global_norm`` in ``scale`` mode up to rounding (optax
    computes ``(u / ‖u‖) · C``). Wrap it in :func:`per_worker` to clip each worker's row.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip_by_norm: mode={mode!r} is unknown; choose one of {CLIP_MODES}")
    target = 1.0 if mode == "unit" else max_norm

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm > max_norm, target / norm, 1.0)
        return optax.tree.scale(factor, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def momentum(beta: float | Array, dampening: float | Array = 0.0) -> optax.GradientTransformation:
    """Heavy-ball momentum with dampening: ``m_t = β m_{t-1} + (1 - δ) u_t``, returns ``m_t``.

    ``optax.chain(optax.scale(1 - δ), optax.trace(β))``: ``optax.trace`` alone is the case
    ``δ = 0``. Its buffer is the ``trace`` field of the state (``optax.tree_utils.tree_get``).
    """
    return optax.chain(optax.scale(1.0 - dampening), optax.trace(decay=beta))


def server_momentum(
    beta: float | Array, dampening: float | Array = 0.0
) -> optax.GradientTransformationExtraArgs:
    """The paper's momentum "at the server", applied before the rule: each submission becomes
    ``(1 - δ) u_i + β a_{t-1}`` where ``a_{t-1}`` is the previous aggregate, passed as the extra
    argument ``previous_aggregate`` (``RobustAggregateState.previous``). Stateless."""

    def update_fn(updates, state, params=None, *, previous_aggregate, **extra_args):
        del params, extra_args
        mixed = jax.tree.map(
            lambda u, a: (1.0 - dampening) * u + beta * a, updates, previous_aggregate
        )
        return mixed, state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def lookahead(
    params: optax.Params, velocity: optax.Updates, learning_rate: Array, beta: Array
) -> optax.Params:
    """``θ - γ β m``: where the paper's Nesterov variant takes its gradients (El-Mhamdi et al.,
    2021, after Sutskever et al. 2013), with ``m`` the momentum buffer the update follows
    (per worker ``[n, ...]`` for worker momentum: the result is then one point per worker)."""
    return jax.tree.map(lambda p, m: p - (learning_rate * beta) * m, params, velocity)


def velocity(state: Any) -> optax.Updates | None:
    """The momentum buffer (``trace``) held in an optax state, or None when it keeps none."""
    return optax.tree_utils.tree_get(state, "trace")


# ---------------------------------------------------------------------------------------------- #
# The server side

# optax optimisers that need more than a gradient (the loss function itself)
_NOT_SERVER_OPTIMIZERS = frozenset({"lbfgs"})


def server_optimizer_names() -> list[str]:
    """The optax optimisers usable at the server: every ``optax.NAME(learning_rate, ...)``."""
    names = []
    for name in dir(optax):
        if name.startswith(("_", "scale_by")) or name in _NOT_SERVER_OPTIMIZERS:
            continue
        factory = getattr(optax, name)
        if callable(factory) and not inspect.isclass(factory):
            try:
                parameters = list(inspect.signature(factory).parameters)
            except (TypeError, ValueError):
                continue
            if parameters[:1] == ["learning_rate"]:
                names.append(name)
    return sorted(names)


def server_optimizer_parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters of optax optimiser ``name`` besides its learning rate."""
    if name not in server_optimizer_names():
        raise ValueError(
            f"--server-optimizer {name!r} is not an optax optimiser taking a learning rate; "
            f"choose one of {', '.join(server_optimizer_names())}"
        )
    parameters = inspect.signature(getattr(optax, name)).parameters
    return tuple(p for p in parameters if p != "learning_rate")


def server_optimizer(
    name: str, learning_rate: float | optax.Schedule, **args: Any
) -> optax.GradientTransformation:
    """``optax.<name>(learning_rate, **args)``: the optimiser that turns the aggregate into the
    parameter update (``sgd`` without momentum is the paper's ``θ -= γ_t a``)."""
    known = server_optimizer_parameters(name)
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(
            f"--server-optimizer-args: optax.{name} takes no parameter {', '.join(unknown)}; "
            f"its parameters: {', '.join(known)}"
        )
    return getattr(optax, name)(learning_rate, **args)
