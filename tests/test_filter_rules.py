"""dnc, signguard, clustering and clippedclustering against their NumPy references (and scipy's
average linkage), the accepted masks, finiteness under non-finite rows, checks and parameters."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_filters as ref
from scipy.cluster.hierarchy import fcluster, linkage

from jaxbyz import aggregators
from jaxbyz.aggregators.dnc import coordinate_subsets
from jaxbyz.aggregators.signguard import block_size, block_start

jax.config.update("jax_enable_x64", False)

RTOL = 1e-5
EXTREMES = (np.nan, np.inf, -np.inf, 1e30, -1e30)


def data(n: int, f: int, d: int, seed: int) -> np.ndarray:
    """Honest rows around a common mean with a few zero coordinates, then ``f`` Byzantine rows
    (flipped and scaled, or random): several well-separated groups for the filters."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d) * 0.7
    G = mean + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=(n, 1))
    G[:, rng.random(d) < 0.1] = 0.0
    for i in range(n - f, n):
        G[i] = -2.5 * mean + rng.normal(size=d) * 0.3 if i % 2 else rng.normal(size=d) * 4
    return G.astype(np.float32)


@functools.cache
def compiled(name: str, params: tuple, f: int, jit: bool):
    rule = aggregators.get(name, **dict(params))

    def call(G, key):
        return rule.aggregate(G, f, key=key if rule.needs_key else None)

    return jax.jit(call) if jit else call


def run(name: str, G: np.ndarray, f: int, key=None, jit: bool = True, **params):
    key = jax.random.key(0) if key is None else key
    out, accepted = compiled(name, tuple(sorted(params.items())), f, jit)(jnp.asarray(G), key)
    return np.asarray(out, np.float64), np.asarray(accepted, np.float64)


def with_eager(cases: list) -> list:
    """Every case jitted, and the first one also run eagerly (eager loops are slow)."""
    return [(*case, True) for case in cases] + [(*cases[0], False)]


def batched(rule, G, key):
    return rule.aggregate(G, 2, key=key)


def mask(indices, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[list(indices)] = 1.0
    return out


def assert_close(got, want, G) -> None:
    scale = max(1.0, float(np.max(np.abs(G[np.isfinite(G)]), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


# ---------------------------------------------------------------------------- DnC

DNC_CASES = [  # (n, f, d, params)
    (7, 2, 16, {}),
    (12, 3, 33, {"subsample": 10, "niters": 3}),
    (15, 5, 64, {"subsample": 20, "niters": 2, "c": 1.5}),
    (15, 5, 64, {"subsample": 64, "c": 0.5}),
    (5, 2, 40, {"subsample": 4, "niters": 6}),  # empty intersection: first iteration's set
]


@pytest.mark.parametrize(("n", "f", "d", "params", "jit"), with_eager(DNC_CASES))
def test_dnc_matches_reference(n: int, f: int, d: int, params: dict, jit: bool) -> None:
    for seed in range(2 if jit else 1):
        G = data(n, f, d, seed)
        key = jax.random.key(seed + 10)
        niters = params.get("niters", 1)
        b = min(params.get("subsample", 10000), d)
        subsets = np.asarray(coordinate_subsets(key, d, b, niters))
        want, kept = ref.dnc(G, f, subsets, params.get("c", 1.0))
        got, accepted = run("dnc", G, f, key, jit, **params)
        np.testing.assert_array_equal(accepted, mask(kept, n))
        assert_close(got, want, G)


def test_dnc_subsets_are_distinct_and_keyed() -> None:
    subsets = np.asarray(coordinate_subsets(jax.random.key(3), 50, 20, 4))
    assert subsets.shape == (4, 20)
    assert all(len(set(r)) == 20 and r.min() >= 0 and r.max() < 50 for r in subsets)
    assert not np.array_equal(subsets[0], subsets[1])
    again = np.asarray(coordinate_subsets(jax.random.key(3), 50, 20, 4))
    np.testing.assert_array_equal(subsets, again)
    np.testing.assert_array_equal(coordinate_subsets(jax.random.key(3), 8, 8, 2)[1], np.arange(8))


def test_dnc_removes_floor_cf_rows_and_the_outlier() -> None:
    n, f, d = 11, 3, 32
    G = data(n, 0, d, 5)
    G[4] += 40.0 * np.sign(G[4])  # far along its own direction
    for c, removed in ((1.0, 3), (0.5, 1)):
        _, accepted = run("dnc", G, f, c=c)
        assert accepted.sum() == n - removed
        if removed:
            assert accepted[4] == 0


def test_dnc_empty_intersection_falls_back_to_the_first_iteration() -> None:
    n, f, d = 5, 2, 40
    G = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    key = jax.random.key(7)
    params = {"subsample": 4, "niters": 6}
    subsets = np.asarray(coordinate_subsets(key, d, 4, 6))
    want, kept = ref.dnc(G, f, subsets)
    got, accepted = run("dnc", G, f, key, **params)
    np.testing.assert_array_equal(accepted, mask(kept, n))
    assert_close(got, want, G)
    kept_sets = [set(ref.dnc(G, f, subsets[t : t + 1])[1]) for t in range(6)]
    assert not set.intersection(*kept_sets) and accepted.sum() == n - f


# ---------------------------------------------------------------------------- SignGuard

SIGNGUARD_CASES = [  # (n, f, d, params)
    (7, 2, 40, {"fraction": 1.0}),
    (12, 3, 64, {"fraction": 0.5}),
    (15, 7, 64, {"fraction": 0.75, "quantile": 0.3, "L": 0.5, "R": 1.2}),
    (12, 5, 48, {"fraction": 1.0, "bandwidth": 0.2, "iters": 3}),
]


@pytest.mark.parametrize(("n", "f", "d", "params", "jit"), with_eager(SIGNGUARD_CASES))
def test_signguard_matches_reference(n: int, f: int, d: int, params: dict, jit: bool) -> None:
    for seed in range(2 if jit else 1):
        G = data(n, f, d, seed)
        key = jax.random.key(seed + 20)
        b = block_size(d, params["fraction"])
        start = int(block_start(key, d, b))
        kwargs = {k: v for k, v in params.items() if k != "fraction"}
        want, kept = ref.signguard(G, f, start, b, **kwargs)
        got, accepted = run("signguard", G, f, key, jit, **params)
        np.testing.assert_array_equal(accepted, mask(kept, n))
        assert_close(got, want, G)


def test_signguard_block_and_filters() -> None:
    assert block_size(64, 0.1) == 6 and block_size(5, 0.1) == 1 and block_size(64, 1.0) == 64
    starts = {int(block_start(jax.random.key(k), 64, 6)) for k in range(40)}
    assert min(starts) >= 0 and max(starts) <= 58 and len(starts) > 5
    n, f, d = 7, 2, 40  # the shape of the first reference case: compiled once
    rng = np.random.default_rng(1)
    G = (rng.normal(size=d) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    G[2] *= 10.0  # fails the norm filter (R = 3)
    G[5] *= 0.01  # fails the norm filter (L = 0.1)
    G[6] = np.abs(G[6])  # all positive: its own sign cluster
    _, accepted = run("signguard", G, f, fraction=1.0)
    np.testing.assert_array_equal(accepted, [1, 1, 0, 1, 1, 0, 0])


def test_signguard_clips_to_the_median_norm() -> None:
    n, d = 7, 40
    G = np.tile(np.linspace(1.0, 2.0, d, dtype=np.float32), (n, 1))
    scales = np.array([1.0, 1.1, 1.2, 1.3, 1.5, 2.5, 2.9], np.float32)
    G = G * scales[:, None]
    got, accepted = run("signguard", G, 2, fraction=1.0)
    assert accepted.sum() == n  # identical sign features, norms within [0.1, 3] x median
    want = G[0] * np.mean(np.minimum(scales, 1.3))
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------- clustering


CLUSTER_CASES = [(7, 2, 16), (2, 0, 8), (12, 3, 33), (16, 7, 64)]


def scipy_largest(G: np.ndarray) -> list[int]:
    Z = linkage(G.astype(np.float64), method="average", metric="cosine")
    labels = fcluster(Z, 2, "maxclust")
    clusters = [sorted(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)]
    return ref.largest(clusters)


@pytest.mark.parametrize("name", ["clustering", "clippedclustering"])
@pytest.mark.parametrize(("n", "f", "d", "jit"), with_eager(CLUSTER_CASES))
def test_clustering_matches_reference_and_scipy(
    n: int, f: int, d: int, jit: bool, name: str
) -> None:
    reference = getattr(ref, name)
    for seed in range(3) if jit else (2,):
        G = data(n, f, d, seed) if seed < 2 else np.random.default_rng(seed).normal(size=(n, d))
        G = G.astype(np.float32)
        want, kept = reference(G, f)
        got, accepted = run(name, G, f, jit=jit)
        np.testing.assert_array_equal(accepted, mask(kept, n))
        if n > 2:
            assert kept == scipy_largest(G)
        assert_close(got, want, G)


def test_clippedclustering_clips_and_max_tau() -> None:
    n, f, d = 7, 2, 16
    G = data(n, f, d, 3)
    norms = np.linalg.norm(G.astype(np.float64), axis=1)
    for max_tau in (1e5, 0.5):
        want, kept = ref.clippedclustering(G, f, max_tau=max_tau)
        got, accepted = run("clippedclustering", G, f, max_tau=max_tau)
        np.testing.assert_array_equal(accepted, mask(kept, n))
        assert_close(got, want, G)
        tau = min(np.median(norms), max_tau)
        assert np.linalg.norm(got) <= tau * (1 + 1e-5)


def test_clustering_is_permutation_invariant() -> None:
    n, f, d = 12, 3, 33
    G = data(n, f, d, 4)
    perm = np.random.default_rng(0).permutation(n)
    for name in ("clustering", "clippedclustering"):
        a, ma = run(name, G, f)
        b, mb = run(name, G[perm], f)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ma[perm], mb)


def test_clustering_tie_keeps_cluster_of_row_zero() -> None:
    n, d = 16, 64
    rng = np.random.default_rng(0)
    group = np.arange(n) % 2 == 1  # two groups of eight, row 0 in the second
    rows = np.where(group[:, None], np.eye(d)[0], np.eye(d)[1]) * rng.uniform(1, 3, (n, 1))
    for name in ("clustering", "clippedclustering"):
        _, accepted = run(name, rows.astype(np.float32), 7)
        np.testing.assert_array_equal(accepted, ~group)


# ---------------------------------------------------------------------------- all four


RULES = [
    ("dnc", {"subsample": 12, "niters": 2}),
    ("dnc", {"c": 0.5}),
    ("signguard", {"fraction": 0.5}),
    ("clustering", {}),
    ("clippedclustering", {}),
]


@pytest.mark.parametrize(("name", "params"), RULES)
def test_finite_with_up_to_f_non_finite_rows(name: str, params: dict) -> None:
    n, f, d = 11, 4, 24
    rng = np.random.default_rng(1)
    for trial in range(6):
        G = data(n, 0, d, trial)
        bad = rng.choice(n, size=rng.integers(1, f + 1), replace=False)
        for i in bad:
            if trial % 3 == 0:  # whole rows of one extreme value
                G[i] = EXTREMES[rng.integers(len(EXTREMES))]
            else:  # a few extreme coordinates
                cols = rng.choice(d, size=3, replace=False)
                G[i, cols] = rng.choice(EXTREMES, size=3)
        out, accepted = run(name, G, f, jax.random.key(trial), **params)
        assert np.all(np.isfinite(out)), (name, trial, out)
        assert out.shape == (d,) and accepted.shape == (n,)
        assert set(np.unique(accepted)) <= {0.0, 1.0} and accepted.sum() >= 1
        for i in bad:
            if not np.all(np.isfinite(G[i])):
                assert accepted[i] == 0


@pytest.mark.parametrize(("name", "params"), RULES)
def test_flags(name: str, params: dict) -> None:
    rule = aggregators.get(name, **params)
    assert rule.selects and not rule.needs_prev
    assert rule.needs_key == (name in ("dnc", "signguard"))


def test_vmap_over_batch() -> None:
    keys = jax.random.split(jax.random.key(0), 3)
    for name, d, params in (("dnc", 16, {}), ("signguard", 40, {"fraction": 1.0})):
        Gs = np.stack([data(7, 2, d, s) for s in range(3)])
        rule = aggregators.get(name, **params)
        out, acc = jax.jit(jax.vmap(functools.partial(batched, rule)))(jnp.asarray(Gs), keys)
        for i in range(3):
            one, one_acc = run(name, Gs[i], 2, keys[i], **params)
            np.testing.assert_allclose(out[i], one, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(acc[i], one_acc)


@pytest.mark.parametrize(
    ("name", "params", "n", "f", "message"),
    [
        ("dnc", {}, 3, 3, "dnc needs n - floor(c*f) >= 1 (c=1.0), got n=3, f=3"),
        ("dnc", {"c": 0.5}, 3, 7, "dnc needs n - floor(c*f) >= 1 (c=0.5), got n=3, f=7"),
        ("signguard", {}, 6, 3, "signguard needs n >= 2f+1, got n=6, f=3"),
        ("clustering", {}, 1, 0, "clustering needs n >= 2 and n >= 2f+1, got n=1, f=0"),
        ("clippedclustering", {}, 8, 4, "clippedclustering needs n >= 2 and n >= 2f+1"),
    ],
)
def test_checks_state_constraint(name: str, params: dict, n: int, f: int, message: str) -> None:
    rule = aggregators.get(name, **params)
    with pytest.raises(ValueError, match=re.escape(message)):
        rule.check(n, f)


def test_checks_accept_admissible() -> None:
    aggregators.get("dnc").check(4, 3)
    aggregators.get("dnc", c=0.5).check(3, 5)
    aggregators.get("signguard").check(7, 3)
    aggregators.get("clustering").check(2, 0)
    aggregators.get("clippedclustering").check(9, 4)
    with pytest.raises(ValueError, match="draws randomness"):
        aggregators.get("dnc").aggregate(jnp.ones((4, 3)), 1)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("dnc", {"niters": 0}, "dnc: parameter niters=0 is invalid; pass an integer >= 1"),
        ("dnc", {"c": -1.0}, "dnc: parameter c=-1.0 is invalid; pass a finite number >= 0"),
        ("dnc", {"subsample": 2.5}, "dnc: parameter subsample=2.5 is invalid"),
        ("dnc", {"b": 3}, "dnc has no parameter 'b'"),
        ("signguard", {"L": -0.1}, "signguard: parameter L=-0.1 is invalid"),
        ("signguard", {"L": 2.0, "R": 1.0}, "signguard: parameter R=1.0 is invalid"),
        ("signguard", {"fraction": 1.5}, "parameter fraction=1.5 is invalid; pass a number in"),
        ("signguard", {"fraction": 0}, "parameter fraction=0 is invalid"),
        ("signguard", {"quantile": 2}, "parameter quantile=2 is invalid"),
        ("signguard", {"bandwidth": 0.0}, "parameter bandwidth=0.0 is invalid"),
        ("signguard", {"iters": 0}, "parameter iters=0 is invalid"),
        ("clustering", {"linkage": "single"}, "clustering has no parameter 'linkage'"),
        ("clippedclustering", {"max_tau": 0}, "parameter max_tau=0 is invalid"),
    ],
)
def test_bad_parameters_raise(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregators.get(name, **params)


def test_registry_aliases() -> None:
    assert aggregators.aliases()["divide-and-conquer"] == "dnc"
    assert aggregators.aliases()["clipped-clustering"] == "clippedclustering"
    assert math.isclose(aggregators.get("clippedclustering").params["max_tau"], 1e5)
