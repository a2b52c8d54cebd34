"""``minmax`` and ``minsum``: the AGR-agnostic attacks of Shejwalkar & Houmansadr, "Manipulating
the Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning" (NDSS 2021).

Every Byzantine worker sends the same vector ``m = mu - gamma p``, ``mu`` the coordinate-wise
mean of the ``h`` honest rows ``h_i`` and ``p`` the perturbation (``perturbation``):

- ``"std"`` (default): the coordinate-wise unbiased standard deviation of the honest rows;
- ``"unit"``: ``mu / ||mu||`` (the authors' ``unit_vec``; ``p = 0`` when ``mu = 0``);
- ``"sign"``: ``sign(mu)``.

``gamma`` is the largest value the authors' search finds that keeps ``m`` inside the honest
cloud, by the squared Euclidean distances of their code:

- Min-Max (``minmax``): ``max_i ||m - h_i||^2 <= max_{i,j} ||h_i - h_j||^2``;
- Min-Sum (``minsum``): ``sum_i ||m - h_i||^2 <= min_i sum_j ||h_i - h_j||^2``.

The search (``our_attack_dist`` and ``our_attack_score`` in the notebooks of the authors'
repository vrt1shjwlkr/NDSS21-Model-Poisoning, checked line by line), with
``gamma_0 = gamma_init`` (10), ``step_0 = gamma_init``, ``gamma_succ = 0``::

    while |gamma_succ - gamma| > threshold:          # threshold_diff = 1e-5
        if condition(mu - gamma p):  gamma_succ = gamma;  gamma = gamma + step / 2
        else:                        gamma = gamma - step / 2
        step = step / 2
    m = mu - gamma_succ p

The first move is thus ``± gamma_init / 2``. By induction ``|gamma_succ - gamma| = step`` after
every iteration (before any success ``gamma = step = gamma_init 2^-k`` and ``gamma_succ = 0``;
a success sets ``gamma - gamma_succ = step / 2``, the new step; a failure halves the gap with
the step), so the loop is run here as a ``lax.while_loop`` on ``step > threshold``: the same
``K`` iterations (the smallest ``K`` with ``gamma_init 2^-K <= threshold``, 20 by default) for
every input. When no ``gamma`` passes, ``gamma_succ = 0`` and every Byzantine row is ``mu``.

The functions' own default perturbation is ``unit_vec``, but every experiment notebook of the
repository sets ``dev_type = 'std'``, the default here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.distance import pairwise_sq_distances
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.attacks.statistics import mean_std
from jaxbyz.rows import broadcast_row, row_norms
from jaxbyz.validation import choice, number

Array = jax.Array

PERTURBATIONS = ("std", "unit", "sign")
OBJECTIVES = ("minmax", "minsum")
GAMMA_INIT = 10.0
THRESHOLD = 1e-5


def perturbation_vector(H: Array, kind: str) -> tuple[Array, Array]:
    """``(mu, p)``: the honest mean and the perturbation ``"std"``, ``"unit"`` or ``"sign"``."""
    mu, sigma = mean_std(H)
    if kind == "std":
        return mu, sigma
    if kind == "sign":
        return mu, jnp.sign(mu)
    norm = row_norms(mu[None])[0]
    return mu, jnp.where(norm > 0, mu / jnp.where(norm > 0, norm, 1.0), 0.0)


def halving_search(
    accept: Callable[[Array], Array], gamma_init: Any, threshold: Any, dtype: Any
) -> Array:
    """The authors' search for the largest accepted ``gamma`` (module docstring): ``gamma_succ``,
    0 when no tried ``gamma`` is accepted. ``accept(gamma)`` is a scalar bool."""
    gamma0 = jnp.asarray(gamma_init, dtype)
    threshold = jnp.asarray(threshold, dtype)

    def cond(carry: tuple[Array, Array, Array]) -> Array:
        return carry[2] > threshold  # = |gamma_succ - gamma| (module docstring)

    def body(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        gamma, succ, step = carry
        ok = accept(gamma)
        succ = jnp.where(ok, gamma, succ)
        gamma = jnp.where(ok, gamma + step / 2, gamma - step / 2)
        return gamma, succ, step / 2

    return lax.while_loop(cond, body, (gamma0, jnp.zeros_like(gamma0), gamma0))[1]


def agnostic_gamma(
    H: Array, objective: str, perturbation: str, gamma_init: Any, threshold: Any
) -> tuple[Array, Array, Array]:
    """``(gamma_succ, mu, p)`` of Min-Max (``objective="minmax"``) or Min-Sum (``"minsum"``)."""
    mu, p = perturbation_vector(H, perturbation)
    C = H - mu  # distances are translation-invariant; centring keeps the Gram product accurate
    h = H.shape[0]

    def spread(gamma: Array) -> Array:
        """``||m - h_i||^2`` for ``m = mu - gamma p``, ``[h]``."""
        return jnp.sum(jnp.square(-gamma * p - C), axis=1)

    if objective == "minmax":
        bound = jnp.max(pairwise_sq_distances(C))
        accept = lambda gamma: jnp.max(spread(gamma)) <= bound  # noqa: E731
    else:
        # sum_j ||h_i - h_j||^2 = h ||h_i - mu||^2 + sum_j ||h_j - mu||^2 (exact, O(h d))
        centred = jnp.sum(jnp.square(C), axis=1)
        bound = jnp.min(h * centred + jnp.sum(centred))
        accept = lambda gamma: jnp.sum(spread(gamma)) <= bound  # noqa: E731
    return halving_search(accept, gamma_init, threshold, H.dtype), mu, p


def _agnostic_fn(
    H: Array,
    f: int,
    *,
    key: Any,
    rule: Any,
    f_decl: int,
    objective: str,
    perturbation: str,
    gamma_init: Any,
    threshold: Any,
) -> Array:
    if f == 0:
        return jnp.zeros((0, H.shape[1]), H.dtype)
    gamma, mu, p = agnostic_gamma(H, objective, perturbation, gamma_init, threshold)
    return broadcast_row(mu - gamma * p, f)


def _build(objective: str, perturbation: Any, gamma_init: Any, threshold: Any) -> Attack:
    owner = f"attack {objective}"
    perturbation = choice(owner, "perturbation", perturbation, PERTURBATIONS)
    gamma_init = number(owner, "gamma_init", gamma_init, above=0, allow_array=True)
    threshold = number(owner, "threshold", threshold, above=0, allow_array=True)

    def fn(H: Array, f: int, **kwargs: Any) -> Array:
        return _agnostic_fn(H, f, objective=objective, **kwargs)

    return Attack(
        name=objective,
        fn=fn,
        params={"perturbation": perturbation, "gamma_init": gamma_init, "threshold": threshold},
    )


@register("minmax", "min-max")
def minmax(
    perturbation: str = "std", gamma_init: Any = GAMMA_INIT, threshold: Any = THRESHOLD
) -> Attack:
    """Min-Max: ``mu - gamma p`` with ``max_i ||m - h_i||^2 <= max_{i,j} ||h_i - h_j||^2``.

    Args:
      perturbation: ``"std"`` (the authors' experiments), ``"unit"`` or ``"sign"``.
      gamma_init: the search's first ``gamma`` and first step (> 0; the authors' 10).
      threshold: the search stops once the step is at most this (> 0; the authors' 1e-5).
    """
    return _build("minmax", perturbation, gamma_init, threshold)


@register("minsum", "min-sum")
def minsum(
    perturbation: str = "std", gamma_init: Any = GAMMA_INIT, threshold: Any = THRESHOLD
) -> Attack:
    """Min-Sum: ``mu - gamma p`` with ``sum_i ||m - h_i||^2 <= min_i sum_j ||h_i - h_j||^2``.

    Args: as :func:`minmax`.
    """
    return _build("minsum", perturbation, gamma_init, threshold)
