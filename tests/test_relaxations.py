"""Tests of the relaxations of DnC, the clustering rules, SignGuard, CAF and SMEA
(jaxbyz/attacks/relaxations.py), the smooth rules the ``optimized`` attack climbs.

Each relaxation must (1) be its exact rule in the zero-temperature limit (CAF's at every
temperature), (2) have a finite gradient, and (3) give the rows the exact rule rejects a
gradient, which the exact rule does not: the signal that lets gradient ascent bring a Byzantine
row back in. Small shapes (n = 11, d = 8) keep the compilations short.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import aggregators, attacks
from jaxbyz.attacks.optimized import START_PARAMS, objective_value
from jaxbyz.attacks.relaxations import RELAXATIONS, soft_membership, soft_selection

H_ROWS, D, F = 9, 8, 2
KEY = jax.random.key(5)

RULES = {
    "dnc": {"subsample": 6},
    "dnc-2": {"niters": 2, "subsample": 5},
    "clustering": {},
    "clippedclustering": {},
    "signguard": {"fraction": 1.0},
    "caf": {},
    "smea": {},
}


def rule_of(label: str):
    return aggregators.get(label.split("-")[0], **RULES[label])


def inputs(seed: int, label: str = "") -> jax.Array:
    """9 honest rows around a common mean of norm ~3 and 2 outliers, which every rule here
    rejects: far along the opposite direction, or (SignGuard, whose sign filter has no
    gradient) along the same direction, rejected by the norm filter alone."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    mean = jax.random.normal(k1, (D,))
    mean = 3.0 * mean / jnp.linalg.norm(mean)
    H = mean + 0.3 * jax.random.normal(k2, (H_ROWS, D))
    outliers = (4.0 if label == "signguard" else -4.0) * mean + 0.3 * jax.random.normal(k3, (F, D))
    return jnp.concatenate([H, outliers])


@functools.cache
def relaxed_and_exact(label: str, temperature: float):
    """Jitted ``G -> (relaxed aggregate, exact aggregate, exact accepted, relaxed gradient of
    the deviation with respect to the outliers, exact gradient of it)``."""
    rule = rule_of(label)
    relax = RELAXATIONS[rule.name]

    def deviation(fn, B, G):
        full = jnp.concatenate([G[:H_ROWS], B])
        return jnp.sum(jnp.square(fn(full) - jnp.mean(G[:H_ROWS], axis=0)))

    def soft(G):
        return relax(rule, G, F, key=KEY, temperature=temperature)

    def exact(G):
        return rule.aggregate(G, F, key=KEY)[0]

    def run(G):
        value, accepted = rule.aggregate(G, F, key=KEY)
        relaxed_grad = jax.grad(lambda B: deviation(soft, B, G))(G[H_ROWS:])
        return soft(G), value, accepted, relaxed_grad

    return jax.jit(run), exact


@pytest.mark.parametrize("label", sorted(RULES))
def test_zero_temperature_is_the_exact_rule(label):
    run, _ = relaxed_and_exact(label, 1e-4)
    for seed in range(2):
        soft, exact, accepted, grad = run(inputs(seed, label))
        assert np.asarray(accepted)[H_ROWS:].max() == 0, "the outliers must be rejected"
        np.testing.assert_allclose(np.asarray(soft), np.asarray(exact), rtol=1e-4, atol=1e-5)
        assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize(
    "label",
    [
        "dnc",
        pytest.param("clustering", marks=pytest.mark.slow),
        pytest.param("signguard", marks=pytest.mark.slow),
        pytest.param("clippedclustering", marks=pytest.mark.slow),
        pytest.param("smea", marks=pytest.mark.slow),
    ],
)
def test_rejected_rows_get_a_gradient(label):
    """At a finite temperature the rejected outliers get a non-zero gradient; through the
    exact rule (where autodiff traces it) they get none."""
    run, exact = relaxed_and_exact(label, 0.5)
    G = inputs(2, label)
    *_, grad = run(G)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.abs(np.asarray(grad)).max() > 1e-6, label
    if label == "smea":
        return  # eigvalsh inside lax.map: its exact gradient is not the point here

    def exact_deviation(B):
        full = jnp.concatenate([G[:H_ROWS], B])
        return jnp.sum(jnp.square(exact(full) - jnp.mean(G[:H_ROWS], axis=0)))

    np.testing.assert_array_equal(np.asarray(jax.grad(exact_deviation)(G[H_ROWS:])), 0.0)


@pytest.mark.parametrize(
    ("n", "f"),
    [
        (7, 1),
        pytest.param(11, 3, marks=pytest.mark.slow),
        pytest.param(12, 5, marks=pytest.mark.slow),
    ],
)
def test_unrolled_caf_is_caf_at_any_temperature(n, f):
    """CAF's relaxation is the exact filter unrolled (a scan): same value, on random rows with
    heavy-tailed outliers, and a finite gradient everywhere."""
    rule = aggregators.get("caf")
    relax = RELAXATIONS["caf"]
    run = jax.jit(
        lambda G: (
            relax(rule, G, f, key=None, temperature=3.0),
            rule.aggregate(G, f)[0],
            jax.grad(lambda G: jnp.sum(relax(rule, G, f, key=None, temperature=3.0)))(G),
        )
    )
    for seed in range(3):
        k1, k2 = jax.random.split(jax.random.key(seed))
        G = jax.random.normal(k1, (n, 6))
        G = G.at[:f].mul(1.0 + 5.0 * jax.random.uniform(k2, (f, 1)))
        soft, exact, grad = run(G)
        np.testing.assert_allclose(np.asarray(soft), np.asarray(exact), rtol=1e-5, atol=1e-6)
        assert np.isfinite(np.asarray(grad)).all()


def test_soft_memberships():
    scores = jnp.asarray([3.0, 1.0, jnp.inf, 2.0, 0.0])
    member = np.asarray(soft_membership(scores, 2, 1e-3))
    np.testing.assert_allclose(member, [0, 1, 0, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(soft_membership(scores, 5, 0.5)), [1, 1, 0, 1, 1])
    for m in (1, 2, 4):
        weights = np.asarray(soft_selection(scores, m, 0.7))
        assert abs(weights.sum() - 1.0) < 1e-6 and weights[2] == 0.0


@pytest.mark.parametrize(
    "label",
    [
        pytest.param("dnc", marks=pytest.mark.slow),
        pytest.param("signguard", marks=pytest.mark.slow),
        pytest.param("clustering", marks=pytest.mark.slow),
        pytest.param("caf", marks=pytest.mark.slow),
        pytest.param("smea", marks=pytest.mark.slow),
    ],
)
def test_optimized_is_never_weaker_than_its_starts(label):
    """Through each new relaxation the attack runs and returns a candidate at least as strong,
    under the exact rule and the same key, as the best of its starts."""
    rule = rule_of(label)
    starts = ("little", "empire")
    atk = attacks.get("optimized", starts=starts, steps=3)
    key = jax.random.key(8)
    key_starts, key_rule = jax.random.split(key)
    H = inputs(3, label)[:H_ROWS]
    B = jax.jit(lambda H, key: atk(H, F, key=key, rule=rule, f_decl=F))(H, key)
    got = float(objective_value("deviation", rule, H, B, F, key_rule))
    best = max(
        float(
            objective_value(
                "deviation", rule, H,
                attacks.get(name, **START_PARAMS.get(name, {}))(
                    H, F, key=jax.random.fold_in(key_starts, i), rule=rule, f_decl=F
                ),
                F, key_rule,
            )
        )
        for i, name in enumerate(starts)
    )  # fmt: skip
    assert np.isfinite(got) and got >= best - 1e-5 * max(1.0, abs(best)), (got, best)
