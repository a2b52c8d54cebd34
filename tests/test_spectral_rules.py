"""CAF and SMEA against their NumPy references; exact eigenpairs; checks; non-finite rows."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_spectral as ref

from jaxbyz import aggregators
from jaxbyz.aggregators.spectral import dominant_eigenpair

jax.config.update("jax_enable_x64", False)

RTOL = 1e-4
# (n, f, d) with d < n and d > n; nojit runs the second one only (the shapes are reused below)
CASES = {
    "caf": [(5, 1, 3), (7, 2, 17), (10, 3, 4), (10, 3, 40)],
    "smea": [(5, 1, 3), (7, 2, 17), (9, 3, 20)],
}
EXTREMES = np.array([1e30, -1e30, np.nan, np.inf, -np.inf], np.float32)


def data(n: int, d: int, f: int, seed: int) -> np.ndarray:
    """Gaussian rows, the last ``f`` of them moved by 4 along one random direction (scaled per
    row, so that they are not all alike)."""
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(n, d))
    direction = rng.normal(size=d)
    G[n - f :] += 4.0 * rng.uniform(0.5, 1.5, size=(f, 1)) * direction / np.linalg.norm(direction)
    return G.astype(np.float32)


@functools.cache
def compiled(name: str, f: int, jit: bool):
    rule = aggregators.get(name)
    fn = lambda G: rule.aggregate(G, f)  # noqa: E731
    return jax.jit(fn) if jit else fn


def run(name: str, G: np.ndarray, f: int, jit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    out, accepted = compiled(name, f, jit)(jnp.asarray(G))
    assert out.shape == (G.shape[1],) and out.dtype == jnp.float32
    assert accepted.shape == (G.shape[0],) and accepted.dtype == jnp.float32
    return np.asarray(out, np.float64), np.asarray(accepted, np.float64)


def assert_close(got: np.ndarray, want: np.ndarray, G: np.ndarray) -> None:
    scale = max(1.0, float(np.max(np.abs(G[np.isfinite(G) & (np.abs(G) < 1e20)]), initial=0)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


def indicator(indices, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[list(indices)] = 1.0
    return out


# ------------------------------------------------------------------------------ references


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_caf_matches_reference(jit: bool) -> None:
    cases = CASES["caf"] if jit else CASES["caf"][1:2]
    for n, f, d in cases:
        for seed in range(3 if jit else 1):  # eager: the while loop is compiled at each call
            G = data(n, d, f, seed)
            got, weights = run("caf", G, f, jit)
            want, c = ref.caf(G, f)
            assert_close(got, want, G)
            np.testing.assert_allclose(weights, c, atol=2e-4)
            assert np.all((weights >= 0) & (weights <= 1))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_smea_matches_reference(jit: bool) -> None:
    cases = CASES["smea"] if jit else CASES["smea"][1:2]
    for n, f, d in cases:
        for seed in range(3):
            G = data(n, d, f, seed)
            got, accepted = run("smea", G, f, jit)
            want, chosen = ref.smea(G, f)
            assert_close(got, want, G)
            np.testing.assert_array_equal(accepted, indicator(chosen, n))


def test_caf_zeroes_far_outliers() -> None:
    # far outliers: the first passes zero them, the chosen mean is the honest rows' mean
    n, f, d = 10, 3, 40
    G = data(n, d, 0, 0)
    G[n - f :] += 50.0
    got, weights = run("caf", G, f)
    np.testing.assert_array_equal(weights[n - f :], 0.0)
    assert_close(got, ref.caf(G, f)[0], G)
    honest = G[: n - f].astype(np.float64)
    assert np.linalg.norm(got - honest.mean(0)) < 0.5 * np.linalg.norm(honest.std(0))


def test_f_zero_is_the_average() -> None:
    G = data(6, 5, 0, 3)
    for name in ("caf", "smea"):
        got, accepted = run(name, G, 0)
        assert_close(got, G.astype(np.float64).mean(0), G)
        np.testing.assert_array_equal(accepted, 1.0)
    assert_close(ref.caf(G, 0)[0], G.astype(np.float64).mean(0), G)


# ------------------------------------------------------------------------ exact eigenpair


def test_eigenpair_is_exact_where_one_power_step_is_not() -> None:
    # rows ±a e_1 and ±b e_j (j = 2..6), a² = 1.2 b²: Σ = diag(2a², 2b², ..., 2b², 0, ...) / n,
    # the top eigenvalue barely separated from five others. One power step from a random start
    # (ByzFL) keeps the start's other components scaled by b²/a² ≈ 0.83, far from e_1.
    d, a, b = 24, np.sqrt(1.2), 1.0
    rows = [sign * (a if j == 0 else b) * np.eye(d)[j] for j in range(6) for sign in (1, -1)]
    X = np.asarray(rows) + 0.3  # a common offset: the covariance does not see it
    sigma = ref.covariance(X)[1]
    lam, e1 = ref.top_eigenpair(sigma)
    assert abs(e1[0]) > 1 - 1e-12
    rng = np.random.default_rng(0)
    cosines = [abs(ref.one_power_step(sigma, rng.normal(size=d)) @ e1) for _ in range(20)]
    assert max(cosines) < 0.95 and np.median(cosines) < 0.6
    got_lam, got_v = jax.jit(dominant_eigenpair)(jnp.asarray(X, jnp.float32))
    assert abs(float(np.asarray(got_v, np.float64) @ e1)) > 1 - 1e-5
    np.testing.assert_allclose(float(got_lam), lam, rtol=1e-5)


def test_weighted_eigenpair_matches_numpy_eigh() -> None:
    rng = np.random.default_rng(1)
    for n, d in ((8, 5), (6, 30)):
        X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
        c = rng.uniform(0, 1, size=n)
        c[0] = 0.0
        lam, v = ref.top_eigenpair(ref.covariance(X, c)[1])
        got_lam, got_v = jax.jit(dominant_eigenpair)(jnp.asarray(X, jnp.float32), c)
        np.testing.assert_allclose(float(got_lam), lam, rtol=1e-5)
        assert abs(float(np.asarray(got_v, np.float64) @ v)) > 1 - 1e-5


# ------------------------------------------------------------------------------ robustness


@pytest.mark.parametrize("name", ["caf", "smea"])
def test_finite_with_at_most_f_non_finite_rows(name: str) -> None:
    n, f, d = 7, 2, 17
    rng = np.random.default_rng(2)
    for trial in range(6):
        G = data(n, d, 0, trial)
        bad = rng.choice(n, size=1 + trial % f, replace=False)
        for row in bad:
            G[row] = EXTREMES[rng.integers(0, len(EXTREMES), size=d)] if trial % 2 else 1e30
        got, accepted = run(name, G, f)
        assert np.all(np.isfinite(got)), (trial, got)
        np.testing.assert_array_equal(accepted[bad], 0.0)
        if not trial % 2 or name == "smea":  # non-finite rows (the references agree), or SMEA
            want = ref.caf(G, f) if name == "caf" else ref.smea(G, f)
            assert_close(got, want[0], G)


@pytest.mark.parametrize("name", ["caf", "smea"])
def test_invariant_to_row_order_and_equivariant_to_translation(name: str) -> None:
    n, f, d = 7, 2, 17
    G = data(n, d, f, 5)
    got, accepted = run(name, G, f)
    perm = np.random.default_rng(5).permutation(n)
    got_perm, accepted_perm = run(name, G[perm], f)
    assert_close(got_perm, got, G)
    np.testing.assert_allclose(accepted_perm, accepted[perm], atol=2e-4)
    shifted, _ = run(name, G + np.float32(3.0), f)
    assert_close(shifted, got + 3.0, G)


@pytest.mark.parametrize("name", ["caf", "smea"])
def test_vmap(name: str) -> None:
    n, f, d = 7, 2, 17
    rule = aggregators.get(name)
    Gs = jnp.asarray(np.stack([data(n, d, f, s) for s in range(3)]))
    out, accepted = jax.jit(jax.vmap(lambda G: rule.aggregate(G, f)))(Gs)
    for b in range(3):
        single, single_accepted = run(name, np.asarray(Gs[b]), f)
        np.testing.assert_allclose(out[b], single, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(accepted[b], single_accepted, atol=1e-5)


# ---------------------------------------------------------------------- checks, parameters


def test_checks_and_parameters() -> None:
    for name in ("caf", "smea"):
        rule = aggregators.get(name)
        assert rule.selects and not rule.needs_key and not rule.needs_prev
        rule.check(5, 2)
        rule.check(1, 0)
        with pytest.raises(ValueError, match=rf"^{name} needs n >= 2f\+1, got n=4, f=2$"):
            rule.check(4, 2)
        with pytest.raises(ValueError, match=rf"^{name} needs n >= 2f\+1"):
            rule(jnp.zeros((4, 3)), 2)
    rule = aggregators.get("smea", max_subsets=20)
    rule.check(6, 1)
    with pytest.raises(ValueError, match=r"smea needs C\(n, f\) <= max_subsets=20 .*=21\)"):
        rule.check(7, 2)
    with pytest.raises(ValueError, match=r"C\(n, f\)=21"):
        rule.fn(jnp.zeros((7, 2)), 2, max_subsets=20)
    with pytest.raises(ValueError, match=r"^smea: parameter max_subsets=0 is invalid; pass an"):
        aggregators.get("smea", max_subsets=0)
    with pytest.raises(ValueError, match=r"^caf: parameter tau=1 is invalid; caf has no param"):
        aggregators.get("caf", tau=1)
    with pytest.raises(ValueError, match=r"^smea: parameter m=1 is invalid; smea has no param"):
        aggregators.get("smea", m=1)
