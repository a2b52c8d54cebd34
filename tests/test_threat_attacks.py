"""Tests of ``minmax``, ``minsum`` (Shejwalkar & Houmansadr, NDSS 2021), ``fang-krum`` and
``fang-trmean`` (Fang et al., USENIX Security 2020) against the NumPy references of
tests/reference_threat_attacks.py."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_threat_attacks as ref

from jaxbyz import aggregators, attacks
from jaxbyz.attacks.fang import krum_lambda, trmean_rows
from jaxbyz.attacks.minmax import agnostic_gamma, halving_search
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation

ATOL = 1e-4


def honest(seed: int, h: int, d: int, offset: float = 0.5) -> jax.Array:
    """A random ``[h, d]`` honest matrix around a common random mean."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (h, d)) + offset * jax.random.normal(k2, (d,))


def close(a, b, rtol=1e-4, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------- #
# Registry and parameters


def test_names_aliases_parameters():
    assert {"minmax", "minsum", "fang-krum", "fang-trmean"} <= set(attacks.names())
    assert attacks.get("min-max").name == "minmax" and attacks.get("Min-Sum").name == "minsum"
    assert attacks.get("full-krum").name == "fang-krum"
    assert attacks.get("full-trim").name == "fang-trmean"
    assert attacks.parameters("minmax") == ("perturbation", "gamma_init", "threshold")
    assert attacks.parameters("fang-krum") == ("threshold",)
    assert attacks.parameters("fang-trmean") == ("b",)
    assert attacks.get("minmax").params["perturbation"] == "std"  # the authors' experiments
    assert attacks.get("fang-trmean").needs_key and not attacks.get("fang-krum").needs_key
    assert not any(attacks.get(a).needs_rule for a in ("minmax", "minsum", "fang-krum"))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("minmax", {"perturbation": "gauss"}, "parameter perturbation='gauss' is invalid; choose"),
        (
            "minsum",
            {"gamma_init": 0},
            "parameter gamma_init=0 is invalid; pass a finite number > 0",
        ),
        ("minmax", {"threshold": -1.0}, "parameter threshold=-1.0 is invalid"),
        ("minmax", {"gamma": 3}, "attack minmax has no parameter 'gamma'"),
        ("fang-krum", {"threshold": float("nan")}, "parameter threshold=nan is invalid"),
        ("fang-trmean", {"b": 0.5}, "parameter b=0.5 is invalid; pass a finite number >= 1"),
        ("fang-trmean", {"b": True}, "parameter b=True is invalid"),
    ],
)
def test_parameters_refused(name, params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        attacks.get(name, **params)


@pytest.mark.parametrize("name", ["minmax", "minsum", "fang-krum", "fang-trmean"])
def test_no_byzantine(name):
    out = attacks.get(name)(honest(0, 7, 5), 0, key=jax.random.key(0), f_decl=1)
    assert out.shape == (0, 5)


# ------------------------------------------------------------------------------------------- #
# Min-Max and Min-Sum


def test_halving_search_extremes():
    # always accepted: 10 + 5 + 2.5 + ... (20 moves), as the authors' loop
    always = halving_search(lambda g: jnp.asarray(True), 10.0, 1e-5, jnp.float32)
    never = halving_search(lambda g: jnp.asarray(False), 10.0, 1e-5, jnp.float32)
    H = np.ones((2, 1))
    ref_always, iterations = ref.agnostic_search(H, "minmax", "std")  # std = 0: always accepted
    assert iterations == 20
    np.testing.assert_allclose(float(always), ref_always, rtol=1e-6)
    assert float(never) == 0.0


AGNOSTIC = [  # (objective, perturbation, seed, h, d): every perturbation, several shapes
    ("minmax", "std", 0, 9, 16),
    ("minmax", "unit", 1, 12, 40),
    ("minmax", "sign", 2, 5, 64),
    ("minsum", "std", 3, 12, 40),
    ("minsum", "unit", 4, 5, 64),
    ("minsum", "sign", 5, 9, 16),
]


@pytest.mark.parametrize(("objective", "kind", "seed", "h", "d"), AGNOSTIC)
def test_agnostic_matches_reference(objective, kind, seed, h, d):
    H = honest(seed, h, d)
    atk = attacks.get(objective, perturbation=kind)
    rows, (gamma, _, _) = jax.jit(
        lambda X: (atk(X, 3), agnostic_gamma(X, objective, kind, 10.0, 1e-5))
    )(H)
    want, _ = ref.agnostic_search(np.asarray(H), objective, kind)
    assert want > 0
    np.testing.assert_allclose(float(gamma), want, rtol=1e-4)
    expected = ref.agnostic(np.asarray(H), 3, objective, kind)
    close(rows, expected)
    assert ref.condition(np.asarray(H), np.asarray(rows[0], np.float64), objective)
    if kind == "std":  # without jit too
        close(atk(H, 3), expected)


@pytest.mark.parametrize("objective", ["minmax", "minsum"])
def test_agnostic_other_search_parameters(objective):
    H = honest(3, 8, 24, offset=2.0)
    atk = attacks.get(objective, perturbation="unit", gamma_init=50.0, threshold=1e-3)
    # the bound values, then traced overrides (a sweep vmaps over them)
    swept = jax.jit(jax.vmap(lambda g: atk(H, 2, gamma_init=g)))(jnp.asarray([50.0, 3.0]))
    for row, gamma_init in zip(swept, (50.0, 3.0), strict=True):
        close(row, ref.agnostic(np.asarray(H), 2, objective, "unit", gamma_init, 1e-3))


def test_minsum_nothing_accepted_gives_mean():
    # h_3 is the mean: min_i sum_j ||h_i - h_j||^2 = sum_j ||h_j - mu||^2, so no gamma > 0 passes
    a = np.linspace(-1.0, 1.0, 6) + 0.25
    H = np.stack([a, -a, np.zeros(6)])
    want, _ = ref.agnostic_search(H, "minsum", "std")
    assert want == 0.0
    out = attacks.get("minsum")(jnp.asarray(H, jnp.float32), 2)
    close(out, np.zeros((2, 6)), atol=1e-3)  # float32 rounding may accept gamma ~ 1e-5


# ------------------------------------------------------------------------------------------- #
# Fang et al.: Krum


@pytest.mark.parametrize(
    ("seed", "h", "f", "f_decl", "d"), [(0, 12, 3, 3, 16), (1, 10, 2, 4, 40), (3, 8, 1, 2, 20)]
)
def test_fang_krum_matches_reference(seed, h, f, f_decl, d):
    H = honest(seed, h, d)
    want_lam, want_ok, want_rows = ref.fang_krum(np.asarray(H), f, f_decl)
    atk = attacks.get("fang-krum")
    rows, (lam, ok) = jax.jit(
        lambda X: (atk(X, f, f_decl=f_decl), krum_lambda(X, f, f_decl, 1e-5))
    )(H)
    assert bool(ok) == want_ok
    np.testing.assert_allclose(float(lam), want_lam, rtol=1e-4)
    close(rows, want_rows)
    if want_ok:  # our Krum (m=1) selects one of the crafted rows
        G = jnp.concatenate([H, rows])
        assert float(aggregators.get("krum", m=1).aggregate(G, f_decl)[1][h:].sum()) == 1.0
    if seed == 0:  # without jit too
        close(atk(H, f, f_decl=f_decl), want_rows)


def test_fang_krum_search_fails_far_cluster():
    # one Byzantine row near 0 against a tight cluster around 5: Krum never picks it
    H = 5.0 + 0.01 * jax.random.normal(jax.random.key(5), (9, 12))
    want_lam, want_ok, want_rows = ref.fang_krum(np.asarray(H), 1, 1)
    assert not want_ok and want_lam <= 1e-5
    atk = attacks.get("fang-krum")
    rows, (lam, ok) = jax.jit(lambda X: (atk(X, 1, f_decl=1), krum_lambda(X, 1, 1, 1e-5)))(H)
    assert not bool(ok)
    np.testing.assert_allclose(float(lam), want_lam, rtol=1e-4)
    close(rows, want_rows)


def test_fang_krum_needs_krum_admissible():
    with pytest.raises(ValueError, match=re.escape("attack fang-krum: its Krum needs n >= 2")):
        attacks.get("fang-krum")(honest(0, 5, 4), 2, f_decl=3)


# ------------------------------------------------------------------------------------------- #
# Fang et al.: trimmed mean


@pytest.mark.parametrize(("seed", "h", "f", "d", "b"), [(0, 9, 3, 40, 2.0), (1, 6, 5, 17, 3.5)])
def test_fang_trmean_matches_reference(seed, h, f, d, b):
    H = honest(seed, h, d)
    key = jax.random.key(seed + 10)
    atk = attacks.get("fang-trmean", b=b)
    out = jax.jit(lambda X, k, b: atk(X, f, key=k, b=b))(H, key, jnp.float32(b))  # traced b
    u = jax.random.uniform(key, (f, d), jnp.float32)  # the draws the attack makes
    expected = ref.fang_trmean(np.asarray(H), np.asarray(u), b)
    close(out, expected, rtol=1e-5, atol=1e-5)
    close(atk(H, f, key=key), expected, rtol=1e-5, atol=1e-5)
    close(trmean_rows(H, u, b), expected, rtol=1e-5, atol=1e-5)
    # each value in its coordinate's interval, beyond the honest extreme against mu's sign
    Hn, outn = np.asarray(H, np.float64), np.asarray(out, np.float64)
    for j in range(d):
        lo, hi = ref.fang_trmean_interval(Hn[:, j], b)
        assert np.all((outn[:, j] >= lo - 1e-6) & (outn[:, j] <= hi + 1e-6))
        mu = Hn[:, j].mean()
        if mu > 0:
            assert np.all(outn[:, j] <= Hn[:, j].min() + 1e-6)
        elif mu < 0:
            assert np.all(outn[:, j] >= Hn[:, j].max() - 1e-6)


def test_fang_trmean_interval_cases():
    # columns: mu > 0 with g_min > 0 / g_min < 0; mu < 0 with g_max > 0 / g_max < 0; mu = 0
    H = np.array([[1.0, 3.0, -3.0, -1.0, 1.0], [2.0, -1.0, 1.0, -2.0, -1.0]])
    u = np.array([[0.0] * 5, [0.999] * 5])
    out = np.asarray(trmean_rows(jnp.asarray(H, jnp.float32), jnp.asarray(u, jnp.float32), 2.0))
    expected_lo = [0.5, -2.0, 1.0, -1.0, 0.0]
    expected_hi = [1.0, -1.0, 2.0, -0.5, 0.0]
    close(out[0], expected_lo, atol=1e-6)
    close(out[1], np.array(expected_lo) + 0.999 * (np.array(expected_hi) - expected_lo))
    close(out, ref.fang_trmean(H, u, 2.0), atol=1e-6)


def test_fang_trmean_needs_key():
    with pytest.raises(ValueError, match="draws randomness"):
        attacks.get("fang-trmean")(honest(0, 5, 4), 2)


# ------------------------------------------------------------------------------------------- #
# One simulator step each


DATA = make_synthetic(n_train=128, n_test=32, shape=(4, 4, 1), seed=0)


@pytest.mark.slow  # each attack also runs a step in tests/test_step_matrix.py
@pytest.mark.parametrize("attack", ["minmax", "minsum", "fang-krum", "fang-trmean"])
def test_simulator_step(attack):
    config = Config(
        dataset="synthetic",
        nb_workers=15,
        nb_decl_byz=3,
        gar="krum",
        attack=attack,
        batch_size=4,
        nb_steps=1,
        evaluation_delta=1,
    )
    sim = make_simulation(config, DATA)
    state = sim.init(jax.random.key(0))
    new_state, study = jax.jit(sim.step)(state, sim.default_hparams(), sim.arrays)
    assert int(new_state.step) == 1
    assert np.isfinite(np.asarray(new_state.theta)).all()
    assert set(study) >= {"loss", "byzantine_accepted"}
