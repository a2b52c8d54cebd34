"""The optax building blocks (``jaxbyz.transforms``, ``jaxbyz.schedules``, the placements of
``jaxbyz.momentum``) against NumPy written from the paper's update rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_aggregators as ref

from jaxbyz import aggregators, schedules, transforms
from jaxbyz.momentum import PLACEMENTS, compose

RNG = np.random.default_rng(0)


def rows(n: int, d: int, steps: int = 1) -> np.ndarray:
    return RNG.standard_normal((steps, n, d)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- #
# Worker side


def test_per_worker_trace_is_the_papers_worker_momentum():
    """``per_worker(optax.trace(β))`` keeps ``m_i = β m_i + g_i`` for each worker, as the paper's
    ``gmtm.mul_(β).add_(grad)``."""
    beta, G = 0.9, rows(5, 7, steps=6)
    tx = transforms.per_worker(optax.trace(beta), num_workers=5)
    state = tx.init(jnp.zeros(7))
    m = np.zeros((5, 7), np.float64)
    for g in G:
        sent, state = jax.jit(tx.update)(g, state)
        m = beta * m + g
        np.testing.assert_allclose(sent, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(transforms.velocity(state), m, rtol=1e-5, atol=1e-6)


def test_momentum_with_dampening_and_its_special_case():
    beta, damp, G = 0.8, 0.3, rows(1, 9, steps=5)[:, 0]
    tx, plain = transforms.momentum(beta, damp), transforms.momentum(beta)
    state, plain_state, trace_state = tx.init(G[0]), plain.init(G[0]), optax.trace(beta).init(G[0])
    m = np.zeros(9)
    for g in G:
        out, state = tx.update(g, state)
        m = beta * m + (1 - damp) * g
        np.testing.assert_allclose(out, m, rtol=1e-5, atol=1e-6)
        # dampening 0 is optax.trace, bit for bit
        a, plain_state = plain.update(g, plain_state)
        b, trace_state = optax.trace(beta).update(g, trace_state)
        np.testing.assert_array_equal(a, b)


def test_server_momentum_mixes_the_previous_aggregate():
    beta, damp = 0.9, 0.2
    G, prev = rows(4, 6)[0], RNG.standard_normal(6).astype(np.float32)
    tx = transforms.per_worker(transforms.server_momentum(beta, damp), num_workers=4)
    out, _ = tx.update(G, tx.init(jnp.zeros(6)), previous_aggregate=prev)
    np.testing.assert_allclose(out, (1 - damp) * G + beta * prev, rtol=1e-6)


@pytest.mark.parametrize("mode", ["scale", "unit"])
def test_clip_by_norm_per_worker(mode):
    G = rows(6, 5)[0] * np.array([[0.1], [1.0], [3.0], [10.0], [0.0], [2.0]], np.float32)
    tx = transforms.per_worker(transforms.clip_by_norm(2.0, mode), num_workers=6)
    out, _ = jax.jit(tx.update)(G, tx.init(jnp.zeros(5)))
    norms = np.linalg.norm(G.astype(np.float64), axis=1, keepdims=True)
    target = 2.0 if mode == "scale" else 1.0
    expected = np.where(norms > 2.0, G * target / np.maximum(norms, 1e-30), G)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    if mode == "scale":  # optax's own clipping, up to rounding
        optax_clip = transforms.per_worker(optax.clip_by_global_norm(2.0), num_workers=6)
        np.testing.assert_allclose(
            out, optax_clip.update(G, optax_clip.init(jnp.zeros(5)))[0], rtol=1e-6
        )


def test_per_worker_with_stacked_parameters():
    """Without ``num_workers`` the parameters are per worker: ``add_decayed_weights`` reads each
    worker's own."""
    params, G = rows(3, 4)[0], rows(3, 4)[0]
    tx = transforms.per_worker(optax.add_decayed_weights(0.5))
    out, _ = tx.update(G, tx.init(params), params)
    np.testing.assert_allclose(out, G + 0.5 * params, rtol=1e-6)


def test_lookahead_point():
    theta, m = RNG.standard_normal(5), RNG.standard_normal((3, 5))
    np.testing.assert_allclose(
        transforms.lookahead(theta, m, 0.1, 0.9), theta[None] - 0.1 * 0.9 * m, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------- #
# Aggregation


def test_robust_aggregate_flattens_a_pytree_and_records_acceptance():
    n, f = 9, 2
    tree = {"w": rows(n, 3 * 2)[0].reshape(n, 3, 2), "b": rows(n, 4)[0]}
    flat = np.concatenate([tree["b"], tree["w"].reshape(n, -1)], axis=1)  # ravel order: b, w
    tx = transforms.robust_aggregate("krum", f, num_workers=n)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(4)}
    out, state = jax.jit(tx.update)(tree, tx.init(params))
    expected, chosen = ref.krum(flat, f)
    np.testing.assert_allclose(out["b"], expected[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["w"], expected[4:].reshape(3, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.flatnonzero(state.accepted), chosen)
    np.testing.assert_array_equal(state.previous["b"], out["b"])


def test_robust_aggregate_keeps_the_centre_of_centred_clipping():
    f, G = 1, rows(7, 5, steps=3)
    tx = transforms.robust_aggregate("cclip", f, tau=0.5)
    state, prev = tx.init(jnp.zeros(5)), jnp.zeros(5)
    rule = aggregators.get("cclip", tau=0.5)
    for g in G:
        out, state = tx.update(g, state)
        prev = rule(jnp.asarray(g), f, prev=prev)
        np.testing.assert_allclose(out, prev, rtol=1e-6)
    assert state.accepted.shape == (0,)  # num_workers not given: nothing recorded


def test_robust_aggregate_refusals_and_keys():
    with pytest.raises(ValueError, match="bulyan needs n >= 4f\\+3, got n=9, f=2"):
        transforms.robust_aggregate("bulyan", 2, num_workers=9)
    with pytest.raises(ValueError, match="f=-1"):
        transforms.robust_aggregate("median", -1)
    with pytest.raises(ValueError, match="already built"):
        transforms.robust_aggregate(aggregators.get("krum"), 1, m=1)
    tx = transforms.robust_aggregate("krum", 1, pre=[("bucketing", {"s": 2})])
    G = rows(10, 4)[0]  # 5 buckets: krum with f = 1 needs 5
    with pytest.raises(ValueError, match="pass key"):
        tx.update(G, tx.init(jnp.zeros(4)))
    a, _ = tx.update(G, tx.init(jnp.zeros(4)), key=jax.random.key(1))
    b, _ = tx.update(G, tx.init(jnp.zeros(4)), key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)


def test_robust_aggregate_in_a_chain_under_vmap():
    """``chain(robust_aggregate, sgd)`` is an ordinary optax optimiser: vmapped over 3
    independent problems it gives each one ``-lr * median``."""
    tx = optax.chain(transforms.robust_aggregate("median", 1, num_workers=5), optax.sgd(0.1))
    G = rows(5, 4, steps=3)
    out, _ = jax.vmap(lambda g: tx.update(g, tx.init(jnp.zeros(4)), jnp.zeros(4)))(G)
    lower_median = np.sort(G, axis=1)[:, 2]
    np.testing.assert_allclose(out, -0.1 * lower_median, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- #
# Schedules and server optimisers


def test_hyperbolic_decay_recomputed_every_delta():
    schedule = schedules.hyperbolic_decay(0.5, decay=100, decay_delta=30)
    for t in (0, 29, 30, 61, 300):
        expected = 0.5 / (1 + (t - t % 30) / 100)
        assert float(schedule(jnp.int32(t))) == pytest.approx(expected, rel=1e-6)
    assert float(schedules.hyperbolic_decay(0.5, 0, 1)(jnp.int32(1000))) == pytest.approx(0.5)


def test_piecewise_schedule_and_its_rescaling():
    points = schedules.parse_piecewise("0.1,10,0.01,20,0.001")
    got = [float(schedules.piecewise_constant(points)(jnp.int32(t))) for t in (0, 9, 10, 20, 99)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-6)
    scaled = schedules.piecewise_constant(points, init_value=0.2)
    assert float(scaled(jnp.int32(15))) == pytest.approx(0.02, rel=1e-6)
    with pytest.raises(ValueError, match="strictly increasing"):
        schedules.parse_piecewise("0.1,10,0.01,5,0.001")


def test_sgd_reads_the_schedule_at_each_step():
    schedule = schedules.hyperbolic_decay(1.0, decay=2, decay_delta=2)
    tx, g = optax.sgd(schedule), jnp.ones(3)
    state = tx.init(g)
    for t in range(5):
        update, state = tx.update(g, state)
        np.testing.assert_allclose(update, -(1.0 / (1 + (t - t % 2) / 2)) * np.ones(3), rtol=1e-6)


def test_server_optimizers_resolve_from_optax():
    names = transforms.server_optimizer_names()
    assert {"sgd", "adam", "adamw", "lion", "rmsprop"} <= set(names) and "lbfgs" not in names
    tx = transforms.server_optimizer("adam", 0.01, b1=0.5)
    ref = optax.adam(0.01, b1=0.5)
    g = jnp.arange(4.0)
    np.testing.assert_array_equal(tx.update(g, tx.init(g))[0], ref.update(g, ref.init(g))[0])
    with pytest.raises(ValueError, match="takes no parameter bogus"):
        transforms.server_optimizer("adam", 0.01, bogus=1)
    with pytest.raises(ValueError, match="'nope' is not an optax optimiser"):
        transforms.server_optimizer("nope", 0.01)


# ---------------------------------------------------------------------------------------------- #
# The three placements as compositions


def paper_placement(placement: str, grads: np.ndarray, beta: float, damp: float, lr: float):
    """The parameter trajectory of the paper's update rules with the average as the rule
    (``attack.py``: worker, server and update momentum), from the definitions."""
    n, d = grads.shape[1:]
    theta, workers, server = np.zeros(d), np.zeros((n, d)), np.zeros(d)
    out = []
    for g in grads.astype(np.float64):
        if placement == "worker":
            workers = beta * workers + (1 - damp) * g
            theta = theta - lr * workers.mean(0)
        elif placement == "server":
            server = ((1 - damp) * g + beta * server).mean(0)  # server holds a_{t-1}
            theta = theta - lr * server
        else:
            server = beta * server + (1 - damp) * g.mean(0)
            theta = theta - lr * server
        out.append(theta)
    return np.array(out)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_placements_follow_the_papers_update_rules(placement):
    beta, damp, lr, G = 0.9, 0.25, 0.1, rows(4, 6, steps=5)
    comp = compose(placement, beta=beta, dampening=damp, optimizer=optax.sgd(lr), num_workers=4)
    aggregate = transforms.robust_aggregate("average", 0, num_workers=4)
    theta = jnp.zeros(6)
    ws, ags, ss = comp.worker.init(theta), aggregate.init(theta), comp.server.init(theta)
    got = []
    for g in G:
        sent, ws = comp.worker.update(g, ws, theta, previous_aggregate=ags.previous)
        a, ags = aggregate.update(sent, ags)
        update, ss = comp.server.update(a, ss, theta)
        theta = optax.apply_updates(theta, update)
        got.append(theta)
    expected = paper_placement(placement, G, beta, damp, lr)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-4, atol=1e-6)
    # with a linear rule the three placements are one algorithm (the paper, Section 3)
    np.testing.assert_allclose(expected, paper_placement("update", G, beta, damp, lr), atol=1e-9)
    velocity = comp.velocity(ws, ags, ss)
    assert velocity.shape == ((4, 6) if placement == "worker" else (6,))
