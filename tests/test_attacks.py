"""Tests of the Byzantine attacks against plain NumPy references (tests/reference_attacks.py)."""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_attacks as ref

from jaxbyz import aggregators, attacks
from jaxbyz.aggregators.base import Rule
from jaxbyz.attacks import adaptive
from jaxbyz.attacks.statistics import mean_std

RTOL, ATOL = 2e-5, 2e-5


def honest(seed: int = 0, h: int = 9, d: int = 40, scale: float = 1.0) -> jax.Array:
    """A random ``[h, d]`` honest matrix with a common mean."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return scale * jax.random.normal(k1, (h, d)) + jax.random.normal(k2, (d,))


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------- #
# Registry


def test_names_and_aliases():
    expected = {"little", "empire", "empire-strict", "nan", "inf", "signflip", "gaussian", "mimic"}
    assert expected | {"bulyan", "anticge", "labelflip"} <= set(attacks.names())
    assert attacks.get("alie").name == "little" and attacks.get("IPM").name == "empire"
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        attacks.get("nope")
    message = "attack little: parameter foo=1 is invalid; attack little has no parameter 'foo'"
    with pytest.raises(ValueError, match=re.escape(message)):
        attacks.get("little", foo=1)


# ------------------------------------------------------------------------------------------- #
# Formulas


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("factor", "negative"), [(1.5, True), (0.7, False), (0.0, False)])
def test_little_fixed(seed, factor, negative):
    H = honest(seed)
    byz = attacks.get("little", factor=factor, negative=negative)(H, 3)
    chex.assert_shape(byz, (3, H.shape[1]))
    close(byz, ref.little(np.asarray(H), 3, factor, negative))


def test_little_auto_uses_n_and_declared_f():
    """``z_max`` uses ``n = h + f`` (rows the rule sees) and the *declared* count ``f_decl``."""
    H = honest(h=8)
    atk = attacks.get("little", factor="auto", negative=True)
    for f, f_decl in [(3, 3), (2, 3), (1, 4)]:
        z = ref.z_max(8 + f, f_decl)
        close(atk(H, f, f_decl=f_decl), ref.little(np.asarray(H), f, z, negative=True))
    with pytest.raises(ValueError, match="floor"):
        atk(H, 2, f_decl=7)


@pytest.mark.parametrize(("factor", "negative"), [(1.1, False), (0.5, True)])
def test_empire_fixed(factor, negative):
    H = honest(2)
    byz = attacks.get("empire", factor=factor, negative=negative)(H, 4)
    close(byz, ref.empire(np.asarray(H), 4, factor, negative))
    strict = attacks.get("empire-strict", epsilon=factor)(H, 2)
    close(strict, ref.empire_strict(np.asarray(H), 2, factor))


def test_simple_formulas():
    H = honest(3)
    Hn = np.asarray(H)
    close(attacks.get("signflip", scale=2.0)(H, 2), ref.signflip(Hn, 2, 2.0))
    close(attacks.get("mimic", index=4)(H, 3), np.tile(Hn[4], (3, 1)), 0, 0)
    close(attacks.get("bulyan", factor=3.0)(H, 2), ref.bulyan(Hn, 2, 3.0, -1))
    close(attacks.get("bulyan", factor=2.0, target_idx=5, negative=True)(H, 2),
          ref.bulyan(Hn, 2, 2.0, 5, negative=True))  # fmt: skip
    close(attacks.get("bulyan", factor=0.5, target_idx="all")(H, 1), ref.bulyan(Hn, 1, 0.5, "all"))
    assert np.isnan(np.asarray(attacks.get("nan")(H, 2))).all()
    assert np.isposinf(np.asarray(attacks.get("inf")(H, 2))).all()
    assert np.isneginf(np.asarray(attacks.get("inf", negative=True)(H, 2))).all()


def test_statistics_match_numpy():
    H = honest(4, h=13, d=300, scale=3.0)
    mu, sigma = mean_std(H)
    mu_ref, sigma_ref = ref.mean_std(np.asarray(H))
    close(mu, mu_ref)
    close(sigma, sigma_ref)


def test_gaussian_noise_per_worker():
    H = honest(5, d=2000)
    key = jax.random.key(7)
    atk = attacks.get("gaussian", scale=3.0)
    byz = np.asarray(atk(H, 4, key=key))
    z = (byz - ref.mean_std(np.asarray(H))[0]) / 3.0
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert not np.allclose(byz[0], byz[1])
    np.testing.assert_array_equal(byz, atk(H, 4, key=key))
    assert not np.allclose(byz, atk(H, 4, key=jax.random.key(8)))
    with pytest.raises(ValueError, match="key"):
        atk(H, 4)


def test_mimic_random():
    H = honest(6)
    atk = attacks.get("mimic", index="random")
    rows = {int(np.argmin(np.abs(np.asarray(H) - np.asarray(atk(H, 2, key=jax.random.key(s))[0]))
                          .sum(1))) for s in range(20)}  # fmt: skip
    assert len(rows) > 3
    byz = np.asarray(atk(H, 3, key=jax.random.key(1)))
    assert (byz == byz[0]).all() and any((byz[0] == np.asarray(H)).all(1))
    with pytest.raises(ValueError, match="index=9"):
        attacks.get("mimic", index=9)(H, 2)


@pytest.mark.parametrize(("f", "f_decl"), [(3, 3), (2, 4), (1, 1)])
def test_anticge_formula_and_selection(f, f_decl):
    H = honest(7, h=12, d=30) * jnp.linspace(0.5, 2.0, 12)[:, None]
    byz = attacks.get("anticge")(H, f, f_decl=f_decl)
    close(byz, ref.anticge(np.asarray(H), f, f_decl, 1e-5), rtol=1e-4, atol=1e-5)
    # CGE keeps the n - f_decl shortest rows: every Byzantine row is among them
    norms = np.linalg.norm(np.concatenate([np.asarray(H), np.asarray(byz)]), axis=1)
    kept = np.argsort(norms, kind="stable")[: len(norms) - f_decl]
    assert set(range(12, 12 + f)) <= set(kept.tolist())


def test_custom_direction_attack():
    """``direction_attack``: ``mu + s x direction(H, f, key)``, fixed or searched factor."""
    H = honest(11)
    away = lambda H, f, key: -H[0]  # noqa: E731
    fixed = attacks.direction_attack("away", away, factor=2.0, negative=True)
    mu = ref.mean_std(np.asarray(H))[0]
    close(fixed(H, 2), np.tile(mu + 2.0 * np.asarray(H[0]), (2, 1)))
    searched = attacks.direction_attack("away", away, factor="adaptive")
    assert searched.needs_rule and not fixed.needs_rule
    byz = jax.jit(lambda H: searched(H, 2, rule=aggregators.get("average")))(H)
    close(byz, np.tile(mu - (2.0**15 - 1) * np.asarray(H[0]), (2, 1)), rtol=1e-4, atol=1e-2)


def test_zero_byzantine_and_labelflip():
    H = honest()
    for name in ("little", "empire", "bulyan", "nan", "signflip", "anticge"):
        chex.assert_shape(attacks.get(name, **({} if name in ("nan", "signflip", "anticge")
                                                else {"factor": 1.0}))(H, 0), (0, 40))  # fmt: skip
    lf = attacks.get("labelflip", momentum=False)
    assert lf.poison is not None and lf.params == {"momentum": False}
    with pytest.raises(ValueError, match="data poisoning"):
        lf(H, 2)


# ------------------------------------------------------------------------------------------- #
# Adaptive search


def _bump_rule(c: float) -> Rule:
    """A toy rule: ``mu_hat + u s exp(-s / c)``, ``s = ||byz - mu_hat||`` (last row is Byzantine).

    With ``byz = mu + x v`` the objective is ``(x ||v|| exp(-x ||v|| / c))² ||u||²``, concave
    near its maximiser ``x* = c / ||v||``.
    """

    def fn(G, f, key=None, prev=None):
        mu_hat = jnp.mean(G[:-f], 0)
        s = jnp.linalg.norm(G[-1] - mu_hat)
        return mu_hat + jnp.ones_like(mu_hat) * s * jnp.exp(-s / c), None

    return Rule(name="bump", fn=fn)


@pytest.mark.parametrize("c", [0.37, 4.0, 23.0, 300.0])
def test_adaptive_finds_known_maximiser(c):
    H = honest(8, h=6, d=10)
    sigma_norm = float(np.linalg.norm(ref.mean_std(np.asarray(H))[1]))
    x_star = c / sigma_norm
    atk = attacks.get("little", factor=-16)
    byz = jax.jit(lambda H: atk(H, 2, rule=_bump_rule(c)))(H)
    x = float(np.linalg.norm(np.asarray(byz[0]) - ref.mean_std(np.asarray(H))[0]) / sigma_norm)
    J = lambda x: (x * sigma_norm * np.exp(-x * sigma_norm / c)) ** 2  # noqa: E731
    assert J(x) >= 0.98 * J(x_star) and x == pytest.approx(x_star, rel=0.15)


def test_adaptive_keeps_expanding_like_the_paper():
    """With an objective that always grows (the average), both searches reach 2^15 - 1."""
    grow = lambda xs: xs**2  # noqa: E731
    assert float(adaptive.maximize(grow, 16, 4)[0]) == 2.0**15 - 1
    assert ref.paper_line_maximize(lambda x: x**2)[0] == 2.0**15 - 1


def _objective(H, v, xs, *, f, rule):
    mu = mean_std(H)[0]
    return adaptive.deviation_objective(H, mu, mu, v, f, f, rule, None)(xs)


_paper_J = jax.jit(_objective, static_argnames=("f", "rule"))


@functools.partial(jax.jit, static_argnames=("f", "rule"))
def _ours(H, v, *, f, rule):
    return adaptive.maximize(functools.partial(_objective, H, v, f=f, rule=rule), 16, 4)[1]


@pytest.mark.parametrize("rule_name", [pytest.param("krum", marks=pytest.mark.slow), "median"])
def test_adaptive_against_paper_search(rule_name):
    """Our vectorised search vs. a faithful re-implementation of the paper's sequential one.

    "Same inputs": for each case, the same honest matrix ``H``, attack direction ``v`` (``sigma``
    for little, ``-mu`` for empire, each sign), counts ``f = f_decl`` and rule, hence the same
    objective ``J(x) = ||rule(H ∪ f copies of mu + x v, f) - mu||²`` evaluated by the same jitted
    code; both searches get 16 evaluations of ``J`` over ``x >= 0``.

    No search that evaluates other points than the paper's can beat it on *every* input: with a
    Krum-like ``J`` that grows until the rule drops the Byzantine vectors and then falls, the paper
    wins whenever that cliff happens to lie just after one of its points, and 4 rounds of 4
    candidates resolve the cliff less finely than 16 sequential evaluations can. What we check,
    with the default 4 stages: ours is higher on average, higher or equal on most inputs and never
    more than 5% below (measured on these 32 Krum inputs: mean ratio 1.05, 72% wins, worst 0.98;
    with 8 stages of 2: 1.06, 91%, 0.999). Median's ``J`` saturates: both reach its plateau.
    """
    rule = aggregators.get(rule_name)
    ratios = []
    for h, f in [(39, 12), (15, 7)]:
        for seed in range(4):
            H = honest(seed, h=h, d=64, scale=1.0 + seed)
            mu, sigma = mean_std(H)
            for v in (sigma, -sigma, -mu, mu):
                J = functools.partial(_paper_J, H, v, f=f, rule=rule)
                _, paper = ref.paper_line_maximize(lambda x, J=J: float(J(jnp.array([x]))[0]))
                ours = _ours(H, v, f=f, rule=rule)
                ratios.append(float(ours) / paper)
    ratios = np.array(ratios)
    assert ratios.mean() >= 1.0
    assert (ratios >= 1 - 1e-6).mean() >= 0.6
    assert ratios.min() >= 0.95


# ------------------------------------------------------------------------------------------- #
# Transformations


@pytest.mark.parametrize("factor", [1.5, -16])
def test_jit_vmap_and_keys(factor):
    rule = aggregators.get("median")
    atk = attacks.get("little", factor=factor, negative=True)
    Hs = jnp.stack([honest(s) for s in range(3)])
    run = jax.jit(lambda H: atk(H, 3, key=jax.random.key(0), rule=rule))
    batched = jax.vmap(run)(Hs)
    chex.assert_shape(batched, (3, 3, 40))
    for i in range(3):
        close(batched[i], run(Hs[i]), 1e-5, 1e-5)
    gauss = attacks.get("gaussian")
    one = jax.jit(lambda H, k: gauss(H, 2, key=k))
    np.testing.assert_array_equal(one(Hs[0], jax.random.key(3)), one(Hs[0], jax.random.key(3)))


def test_vmap_over_traced_factors():
    H = honest(9)
    xs = jnp.array([0.0, 0.5, 1.5, 4.0])
    for name, reference in (("little", ref.little), ("empire", ref.empire)):
        atk = attacks.get(name, factor=1.0)
        out = jax.jit(jax.vmap(lambda x, atk=atk: atk(H, 2, factor=x, negative=True)))(xs)
        for x, byz in zip(np.asarray(xs), out, strict=True):
            close(byz, reference(np.asarray(H), 2, float(x), True))
    scales = jnp.array([0.0, 1.0, 2.0])
    out = jax.vmap(lambda s: attacks.get("signflip")(H, 1, scale=s))(scales)
    close(out[:, 0], [ref.signflip(np.asarray(H), 1, float(s))[0] for s in scales])


def test_adaptive_with_fewer_real_byzantine():
    """The rule sees ``h + f`` rows and is told ``f_decl``; the search runs under jit."""
    rule = aggregators.get("krum")
    H = honest(10, h=14, d=32)
    atk = attacks.get("empire")
    byz = jax.jit(lambda H: atk(H, 3, rule=rule, f_decl=5))(H)
    chex.assert_shape(byz, (3, 32))
    assert np.isfinite(np.asarray(byz)).all()


# ------------------------------------------------------------------------------------------- #
# Validation


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("little", {"factor": -1.5}, "attack little: factor=-1.5 is negative but not an integer"),
        ("little", {"factor": "bogus"}, "attack little: unknown factor mode 'bogus'"),
        ("little", {"factor": float("nan")}, "attack little: factor must be finite, got nan"),
        ("empire", {"factor": "auto"}, "attack empire: unknown factor mode 'auto'"),
        (
            "little",
            {"negative": "yes"},
            "attack little: parameter negative='yes' is invalid; pass True or False",
        ),
        ("little", {"stages": 0}, "attack little: parameter stages=0 is invalid; pass an integer"),
        (
            "empire-strict",
            {"stages": 1.0},
            "attack empire-strict: parameter stages=1.0 is invalid; pass an integer >= 1",
        ),
        (
            "gaussian",
            {"scale": -1.0},
            "attack gaussian: parameter scale=-1.0 is invalid; pass a finite number >= 0",
        ),
        (
            "signflip",
            {"scale": float("inf")},
            "attack signflip: parameter scale=inf is invalid; pass a finite number",
        ),
        ("mimic", {"index": -1}, "attack mimic: parameter index=-1 is invalid; pass an integer"),
        (
            "mimic",
            {"index": "first"},
            "attack mimic: parameter index='first' is invalid; pass an integer >= 0 or 'random'",
        ),
        (
            "bulyan",
            {"target_idx": "x"},
            "attack bulyan: parameter target_idx='x' is invalid; pass an integer or 'all'",
        ),
        (
            "anticge",
            {"margin": 1.5},
            "attack anticge: parameter margin=1.5 is invalid; pass a finite number >= 0 and < 1",
        ),
        (
            "labelflip",
            {"momentum": 1},
            "attack labelflip: parameter momentum=1 is invalid; pass True or False",
        ),
        ("inf", {"negative": None}, "attack inf: parameter negative=None is invalid; pass True"),
    ],
)
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        attacks.get(name, **params)


def test_array_parameters_pass_unchecked():
    """A ``jax.Array`` (a traced call-time override) is not validated; integers still are."""
    H = honest()
    atk = attacks.get("signflip", scale=jnp.asarray(2.0))
    close(atk(H, 2), ref.signflip(np.asarray(H), 2, 2.0))
    attacks.get("little", factor=1.0, negative=jnp.asarray(True))
    index = jnp.asarray(1)
    message = f"attack mimic: parameter index={index!r} is invalid; pass an integer >= 0"
    with pytest.raises(ValueError, match=re.escape(message)):
        attacks.get("mimic", index=index)
    message = "attack signflip: parameter foo=2 is invalid; attack signflip has no parameter 'foo'"
    with pytest.raises(ValueError, match=re.escape(message)):
        attacks.get("signflip")(H, 2, foo=2)


def test_call_errors():
    H = honest()
    with pytest.raises(ValueError, match="rule"):
        attacks.get("little")(H, 2)
    with pytest.raises(ValueError, match="target_idx=99"):
        attacks.get("bulyan", factor=1.0, target_idx=99)(H, 2)
    with pytest.raises(ValueError, match="nb-real-byz=5"):
        attacks.get("little").check(20, 4, 5)
