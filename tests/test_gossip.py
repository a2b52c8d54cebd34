"""Tests of one decentralized communication round (jaxbyz.gossip) against NumPy references
written from the definitions: double loops over recipients and neighbours, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import aggregators, gossip, topology
from jaxbyz.attacks.statistics import mean_std

RTOL, ATOL = 2e-5, 2e-5


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


class Setting:
    """A graph, its tables and MH weights, Byzantine nodes, random models ``x`` ``[n, d]`` and
    the honest recipients' received tensor (Byzantine slots hold a far-away vector)."""

    def __init__(self, spec: str, n: int, f: int = 0, d: int = 6, seed: int = 0, byz=None):
        self.graph = topology.parse(spec, n, seed=seed)
        self.n, self.d = n, d
        self.table, self.mask = topology.neighbour_table(self.graph)
        self.W = topology.metropolis_hastings(self.graph)
        self.byz = topology.byzantine_nodes(n, f, seed)
        if byz is not None:  # these nodes Byzantine (f of them)
            self.byz = np.isin(np.arange(n), byz)
        self.recipients = np.nonzero(~self.byz)[0]
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[self.byz] = 30.0 + rng.normal(size=(f, d)).astype(np.float32)
        self.x = x
        self.table_h = self.table[self.recipients]
        self.mask_h = self.mask[self.recipients]
        self.weights = topology.table_weights(self.W, self.table_h, self.mask_h)
        self.received = gossip.gather(jnp.asarray(x), self.table_h)
        self.own = jnp.asarray(x[self.recipients])
        self.byz_slots = self.byz[self.table_h] & self.mask_h
        self.honest_slots = ~self.byz[self.table_h] & self.mask_h
        self.delta = np.array([self.W[i, self.byz].sum() for i in self.recipients])

    def neighbourhood(self, i: int) -> list[int]:
        return [i, *np.nonzero(self.graph.adjacency[i])[0].tolist()]


def test_gather():
    s = Setting("erdos-renyi:0.4", 9, f=2)
    assert s.received.shape == (len(s.recipients), s.table.shape[1], s.d)
    for r, i in enumerate(s.recipients):
        for k, j in enumerate(s.table[i]):
            np.testing.assert_array_equal(s.received[r, k], s.x[j])


@pytest.mark.parametrize(("spec", "n"), [("ring", 7), ("star", 6), ("erdos-renyi:0.4", 10)])
def test_mix_vs_double_loop(spec, n):
    s = Setting(spec, n, f=2)
    out = jax.jit(gossip.mix)(s.received, s.weights)
    x = s.x.astype(np.float64)
    ref = np.zeros((len(s.recipients), s.d))
    for r, i in enumerate(s.recipients):
        for j in range(n):
            ref[r] += s.W[i, j] * x[j]
    close(out, ref)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_mix_complete_is_average(n):
    s = Setting("complete", n)
    np.testing.assert_allclose(s.W, 1.0 / n, atol=1e-15)
    out = gossip.mix(s.received, s.weights)
    close(out, np.broadcast_to(s.x.astype(np.float64).mean(0), (n, s.d)))


def clip_reference(z: np.ndarray, tau: float) -> np.ndarray:
    norm = np.linalg.norm(z)
    return z if norm <= tau else z * (tau / norm)


def clipped_reference(s: Setting, tau: np.ndarray) -> np.ndarray:
    x = s.x.astype(np.float64)
    out = np.zeros((len(s.recipients), s.d))
    for r, i in enumerate(s.recipients):
        out[r] = x[i]
        for j in s.neighbourhood(i):
            out[r] += s.W[i, j] * clip_reference(x[j] - x[i], tau[r])
    return out


@pytest.mark.parametrize(("spec", "n"), [("ring", 8), ("erdos-renyi:0.4", 10)])
def test_clipped_gossip_vs_loop(spec, n):
    s = Setting(spec, n, f=2, seed=1)
    x = s.x.astype(np.float64)
    # per recipient: the median distance to its neighbours, so that some are clipped, some not
    tau = np.array(
        [
            np.median([np.linalg.norm(x[j] - x[i]) for j in s.neighbourhood(i)[1:]])
            for i in s.recipients
        ]
    )
    out = jax.jit(gossip.clipped_gossip)(s.received, s.weights, s.own, jnp.asarray(tau))
    close(out, clipped_reference(s, tau))
    dists = np.asarray(gossip.distances(s.received, s.own))
    clipped = (dists > tau[:, None] * (1 + 1e-6)) & s.mask_h
    unclipped = (dists < tau[:, None] * (1 - 1e-6)) & s.mask_h
    assert clipped.any() and unclipped[:, 1:].any()
    # a scalar radius, and +inf: plain gossip
    close(
        gossip.clipped_gossip(s.received, s.weights, s.own, 0.5),
        clipped_reference(s, np.full(len(tau), 0.5)),
    )
    close(
        gossip.clipped_gossip(s.received, s.weights, s.own, jnp.inf),
        gossip.mix(s.received, s.weights),
    )


def test_clip_factor_safe_at_zero():
    factors = gossip.clip_factors(jnp.array([[0.0, 2.0, 1.0]]), jnp.array([0.0]))
    np.testing.assert_array_equal(factors, [[1.0, 0.0, 0.0]])
    factors = gossip.clip_factors(jnp.array([[0.0, 4.0]]), jnp.array([jnp.inf]))
    np.testing.assert_array_equal(factors, [[1.0, 1.0]])
    factors = gossip.clip_factors(jnp.array([[4.0, 1.0]]), jnp.array([2.0]))
    np.testing.assert_array_equal(factors, [[0.5, 1.0]])


def adaptive_reference(s: Setting, delta: np.ndarray) -> np.ndarray:
    """tau_i = sqrt(sum of W_ij d_ij^2 over the nearest slots whose cumulative weight stays
    within 1 - delta_i, divided by delta_i); +inf when delta_i = 0."""
    x = s.x.astype(np.float64)
    taus = []
    for r, i in enumerate(s.recipients):
        if delta[r] == 0:
            taus.append(np.inf)
            continue
        pairs = sorted((np.linalg.norm(x[j] - x[i]), s.W[i, j]) for j in s.neighbourhood(i))
        total, acc, cumulative = sum(w for _, w in pairs), 0.0, 0.0
        for dist, w in pairs:
            cumulative += w
            if cumulative > total - delta[r] + 1e-9:
                break
            acc += w * dist**2
        taus.append(np.sqrt(acc / delta[r]))
    return np.array(taus)


@pytest.mark.parametrize(("spec", "n", "f"), [("erdos-renyi:0.5", 12, 3), ("torus:3x4", 12, 2)])
def test_adaptive_tau_vs_reference(spec, n, f):
    s = Setting(spec, n, f=f, seed=2)
    assert (s.delta > 0).any() and (s.delta == 0).any()
    tau = jax.jit(gossip.adaptive_tau)(s.received, s.weights, s.own, s.mask_h, s.delta)
    ref = adaptive_reference(s, s.delta)
    np.testing.assert_array_equal(np.isinf(tau), np.isinf(ref))
    finite = np.isfinite(ref)
    close(np.asarray(tau)[finite], ref[finite])
    # the Byzantine vectors are far: none of them is kept, all of them are clipped
    dists = np.asarray(gossip.distances(s.received, s.own))
    assert (
        dists[s.byz_slots] > np.broadcast_to(np.asarray(tau)[:, None], dists.shape)[s.byz_slots]
    ).all()
    # with the honest slots' weight exactly 1 - delta the rule equals the theorem's radius
    oracle = gossip.oracle_tau(s.received, s.weights, s.own, s.honest_slots, s.delta)
    close(np.asarray(oracle)[finite], np.asarray(tau)[finite])


def test_adaptive_tau_ring_one_byzantine():
    """A ring node with one Byzantine neighbour (weights 1/3 each, delta = 1/3) keeps itself and
    its honest neighbour: tau = sqrt((1/3) d^2 / (1/3)) = d, the honest neighbour's distance."""
    graph = topology.parse("ring", 5)
    table, mask = topology.neighbour_table(graph)
    weights = topology.table_weights(topology.metropolis_hastings(graph), table, mask)
    x = np.zeros((5, 3), np.float32)
    x[1] = [3.0, 4.0, 0.0]  # honest neighbour of node 0, distance 5
    x[4] = [100.0, 0.0, 0.0]  # Byzantine neighbour of node 0
    received = gossip.gather(jnp.asarray(x), table[:1])
    tau = gossip.adaptive_tau(
        received, weights[:1], jnp.asarray(x[:1]), mask[:1], jnp.array([1.0 / 3.0])
    )
    close(tau, [5.0])
    tau0 = gossip.adaptive_tau(
        received, weights[:1], jnp.asarray(x[:1]), mask[:1], jnp.array([0.0])
    )
    assert np.isinf(tau0).all()


def test_oracle_tau_vs_reference():
    s = Setting("erdos-renyi:0.5", 12, f=3, seed=2)
    x = s.x.astype(np.float64)
    ref = []
    for r, i in enumerate(s.recipients):
        honest = [j for j in s.neighbourhood(i) if not s.byz[j]]
        acc = sum(s.W[i, j] * np.linalg.norm(x[j] - x[i]) ** 2 for j in honest)
        ref.append(np.sqrt(acc / s.delta[r]) if s.delta[r] > 0 else np.inf)
    tau = gossip.oracle_tau(s.received, s.weights, s.own, s.honest_slots, s.delta)
    ref = np.array(ref)
    np.testing.assert_array_equal(np.isinf(tau), np.isinf(ref))
    close(np.asarray(tau)[np.isfinite(ref)], ref[np.isfinite(ref)])


def test_neighbourhood_moments():
    s = Setting("erdos-renyi:0.4", 12, f=4, seed=3)
    mu, sigma = jax.jit(gossip.neighbourhood_moments)(s.received, s.honest_slots)
    x = s.x.astype(np.float64)
    counts = s.honest_slots.sum(1)
    for r, i in enumerate(s.recipients):
        rows = x[[j for j in s.neighbourhood(i) if not s.byz[j]]]
        close(mu[r], rows.mean(0))
        close(sigma[r], rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(s.d))
        m_ref, s_ref = mean_std(jnp.asarray(rows, jnp.float32))
        close(mu[r], np.asarray(m_ref, np.float64))
        close(sigma[r], np.asarray(s_ref, np.float64))
    assert counts.min() >= 1
    # one honest slot: sigma 0
    one = np.zeros_like(s.honest_slots)
    one[:, 0] = True
    mu1, sigma1 = gossip.neighbourhood_moments(s.received, one)
    close(mu1, np.asarray(s.own, np.float64))
    assert (np.asarray(sigma1) == 0).all()


@pytest.mark.parametrize("epsilon", [1.0, 1.5])
def test_dissensus_vs_reference(epsilon):
    s = Setting("erdos-renyi:0.4", 12, f=3, seed=4)
    v = jax.jit(gossip.dissensus)(
        s.received, s.weights, s.own, s.honest_slots, s.byz_slots, epsilon
    )
    x = s.x.astype(np.float64)
    attacked = s.delta > 0
    assert attacked.any() and not attacked.all()
    for r, i in enumerate(s.recipients):
        honest = [j for j in s.neighbourhood(i) if not s.byz[j]]
        if s.delta[r] == 0:
            close(v[r], x[i])
            continue
        pull = sum(s.W[i, j] * (x[j] - x[i]) for j in honest)
        close(v[r], x[i] - epsilon * pull / s.delta[r], rtol=1e-4, atol=1e-4)
    if epsilon == 1.0:  # the Byzantine terms cancel the honest pull: plain gossip stands still
        received = jnp.where(s.byz_slots[:, :, None], v[:, None, :], s.received)
        close(
            gossip.mix(received, s.weights)[attacked],
            np.asarray(s.own)[attacked],
            rtol=1e-4,
            atol=1e-4,
        )


def rule_loop(rule, s: Setting, f: int, keys=None, prev=None) -> np.ndarray:
    """The rule on each honest node's neighbourhood, one by one (jitted: one compilation per
    neighbourhood size)."""
    one = jax.jit(lambda X, key, prev: rule(X, f, key=key, prev=prev))
    out = []
    for r, i in enumerate(s.recipients):
        X = jnp.asarray(s.x[s.neighbourhood(i)])
        out.append(one(X, None if keys is None else keys[r], None if prev is None else prev[r]))
    return np.asarray(jnp.stack(out), np.float64)


@pytest.mark.parametrize(
    ("name", "spec", "n", "f"),
    [
        ("median", "ring", 7, 1),
        ("median", "star", 6, 1),
        ("krum", "ring", 7, 0),
        ("krum", "erdos-renyi:0.5", 8, 0),
    ],
)
def test_apply_rule_vs_loop(name, spec, n, f):
    s = Setting(spec, n, f=2, seed=5, byz=[2, 4])  # the star's hub (0) honest
    rule = aggregators.get(name)
    topology.check_neighbourhoods(s.graph, s.byz, rule.check, f, name)
    assert len(topology.degree_groups(s.mask_h)) >= (1 if spec == "ring" else 2)
    out = jax.jit(lambda R: gossip.apply_rule(rule, R, s.mask_h, f, None))(s.received)
    close(out, rule_loop(rule, s, f))


def test_apply_rule_keys_and_prev():
    s = Setting("erdos-renyi:0.5", 8, f=2, seed=6)
    key = jax.random.key(3)
    keys = jax.random.split(key, len(s.recipients))
    bucketing = aggregators.get("average", pre=["bucketing"])
    apply = jax.jit(lambda R, key: gossip.apply_rule(bucketing, R, s.mask_h, 1, key))
    close(apply(s.received, key), rule_loop(bucketing, s, 1, keys=keys))
    cclip = aggregators.get("cclip")
    apply = jax.jit(lambda R, own: gossip.apply_rule(cclip, R, s.mask_h, 0, None, prev=own))
    out = apply(s.received, s.own)
    close(out, rule_loop(cclip, s, 0, prev=s.own), rtol=1e-4, atol=1e-4)


def test_apply_rule_refusals():
    s = Setting("ring", 5)
    with pytest.raises(ValueError, match="rule fltrust weighs the inputs by a server's own"):
        gossip.apply_rule(aggregators.get("fltrust"), s.received, s.mask_h, 0, None)
    with pytest.raises(ValueError, match="draws randomness: pass key"):
        gossip.apply_rule(
            aggregators.get("average", pre=["bucketing"]), s.received, s.mask_h, 0, None
        )
