"""Study metrics of the paper's code (``attack.py``, "study" file), computed inside the step.

For a set of ``k`` vectors ``X`` (rows) with average ``x̄``: the norm of the average ``‖x̄‖``, the
deviation ``sqrt(Σ‖x_i - x̄‖² / (k - 1))`` and the maximum absolute coordinate of the average.
The sets are the *sampled* gradient estimates (honest data, clipped, before momentum), the
*honest* submissions as sent and the *attack* rows. The variance-norm ratio of the honest
submissions, ``deviation / norm``, is what the robust rules' guarantees bound (El-Mhamdi et al.
2021, Section 2).

Over a window of the ``P`` past steps (``--nb-for-study-past``), as the paper's code: the cosine
between the sampled mean ``ḡ_t`` and the previous one ``ḡ_{t-1}``, and the "composite curvature"
``β Σ_{i<P} β^i ⟨ḡ_t, ḡ_{t-1-i}⟩`` (terms for steps before the first are absent). The past means
are a ring ``[P, d]`` carried in the simulator's state.

In the step's data flow (:mod:`jaxbyz.simulator`) the metrics read the sampled, honest and
attack rows and the aggregate; they change nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz.rows import HIGHEST, row_mean

Array = jax.Array

NAMES = (
    "loss",
    "l2_from_origin",
    "sampled_norm",
    "sampled_deviation",
    "sampled_max",
    "honest_norm",
    "honest_deviation",
    "honest_max",
    "attack_norm",
    "attack_deviation",
    "attack_max",
    "aggregate_norm",
    "aggregate_max",
    "cos_sampled_honest",
    "cos_sampled_attack",
    "cos_sampled_aggregate",
    "cos_honest_attack",
    "cos_honest_aggregate",
    "cos_attack_aggregate",
    "cos_sampled_prev",
    "sampled_curvature",
    "byzantine_accepted",
    "variance_norm_ratio",
    "learning_rate",
    "byzantine_participants",
    "consensus_distance",
)


def summarize(X: Array) -> tuple[Array, Array, Array, Array]:
    """``(average, norm of the average, deviation, max |coordinate| of the average)`` of ``X``."""
    k = X.shape[0]
    if k == 0:
        nan = jnp.full((), jnp.nan, jnp.float32)
        return jnp.full(X.shape[1:], jnp.nan, X.dtype), nan, nan, nan
    mean = row_mean(X)
    if k > 1:
        deviation = jnp.sqrt(jnp.sum(jnp.square(X - mean[None, :])) / (k - 1))
    else:
        deviation = jnp.full((), jnp.nan, jnp.float32)
    return mean, jnp.linalg.norm(mean), deviation, jnp.max(jnp.abs(mean))


def cosine(a: Array, b: Array, norm_a: Array, norm_b: Array) -> Array:
    """Cosine of the angle between ``a`` and ``b`` given their norms."""
    return jnp.dot(a, b, precision=HIGHEST) / (norm_a * norm_b)


def past_study(
    mean: Array, norm: Array, past: Array, step: Array, beta: Array
) -> tuple[Array, Array, Array]:
    """``(cosine with the previous mean, composite curvature, new ring)`` from the sampled mean
    ``ḡ_t`` (norm ``norm``), the ring ``past`` ``[P, d]`` of earlier means (the mean of step
    ``s`` at row ``s mod P``) and the step ``t``."""
    window = past.shape[0]
    rows = jnp.arange(window)
    age = (step - 1 - rows) % window  # row j holds the mean of step t - 1 - age_j
    present = age < step  # no means before the first step
    dots = jnp.dot(past, mean, precision=HIGHEST)
    curvature = beta * jnp.sum(jnp.where(present, beta**age * dots, 0.0))
    previous = past[(step - 1) % window]
    previous_cos = cosine(mean, previous, norm, jnp.linalg.norm(previous))
    previous_cos = jnp.where(step > 0, previous_cos, jnp.nan)
    curvature = jnp.where(step > 0, curvature, jnp.nan)
    return previous_cos, curvature, jnp.asarray(past).at[step % window].set(mean)


def study(
    *,
    sampled: Array,
    honest: Array,
    byzantine: Array,
    aggregate: Array,
    accepted: Array | None,
    loss: Array,
    l2_from_origin: Array,
    learning_rate: Array,
    past: Array,
    step: Array,
    momentum: Array,
    byzantine_participants: Array | int | None = None,
    consensus_distance: Array | float = 0.0,
) -> tuple[dict[str, Array], Array]:
    """All per-step study metrics (a dict of float32 scalars named as in ``NAMES``) and the
    updated ring of past sampled means.

    ``accepted`` is the rule's ``[n]`` acceptance mask (honest rows first) or None for rules that
    do not select; ``byzantine_accepted`` is then NaN. ``byzantine_participants``: the Byzantine
    rows the rule received (default: the rows of ``byzantine``; with partial participation, the
    Byzantine clients sampled in the round). ``consensus_distance``: ``mean_i ||θ_i - θ̄||²`` over
    the honest nodes' models on a graph (0 with one shared model).
    """
    s_mean, s_norm, s_dev, s_max = summarize(sampled)
    h_mean, h_norm, h_dev, h_max = summarize(honest)
    a_mean, a_norm, a_dev, a_max = summarize(byzantine)
    g_norm = jnp.linalg.norm(aggregate)
    f = byzantine.shape[0]
    if accepted is None or f == 0:
        accepted_share = jnp.full((), jnp.nan, jnp.float32)
    else:
        accepted_share = jnp.sum(accepted[-f:]) / f
    previous_cos, curvature, past = past_study(s_mean, s_norm, past, step, momentum)
    values = {
        "loss": loss,
        "l2_from_origin": l2_from_origin,
        "sampled_norm": s_norm,
        "sampled_deviation": s_dev,
        "sampled_max": s_max,
        "honest_norm": h_norm,
        "honest_deviation": h_dev,
        "honest_max": h_max,
        "attack_norm": a_norm,
        "attack_deviation": a_dev,
        "attack_max": a_max,
        "aggregate_norm": g_norm,
        "aggregate_max": jnp.max(jnp.abs(aggregate)),
        "cos_sampled_honest": cosine(s_mean, h_mean, s_norm, h_norm),
        "cos_sampled_attack": cosine(s_mean, a_mean, s_norm, a_norm),
        "cos_sampled_aggregate": cosine(s_mean, aggregate, s_norm, g_norm),
        "cos_honest_attack": cosine(h_mean, a_mean, h_norm, a_norm),
        "cos_honest_aggregate": cosine(h_mean, aggregate, h_norm, g_norm),
        "cos_attack_aggregate": cosine(a_mean, aggregate, a_norm, g_norm),
        "cos_sampled_prev": previous_cos,
        "sampled_curvature": curvature,
        "byzantine_accepted": accepted_share,
        "variance_norm_ratio": h_dev / h_norm,
        "learning_rate": learning_rate,
        "byzantine_participants": f if byzantine_participants is None else byzantine_participants,
        "consensus_distance": consensus_distance,
    }
    return {name: jnp.asarray(values[name], jnp.float32) for name in NAMES}, past


def divergence(loss: np.ndarray, parameters_finite: bool = True) -> int | None:
    """The step at which a run diverged, from its per-step losses (host side): the first step
    whose loss is not finite; with finite losses but non-finite final parameters, the step after
    the last; None when it did not diverge. The train command and the sweep both use it, and
    neither counts an evaluation taken at or after that step."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(loss)))
    if bad.size:
        return int(bad[0])
    return None if parameters_finite else int(np.asarray(loss).shape[0])
