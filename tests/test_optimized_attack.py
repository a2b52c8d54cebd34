"""Tests of the ``optimized`` attack (jaxbyz/attacks/optimized.py).

Compilations are kept few and small (d <= 16, steps <= 10): the attack compiles its starts, a
``vmap`` over them of a ``scan`` of gradient steps through the rule, and the exact rule.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_aggregators as ref_rules

from jaxbyz import aggregators, attacks
from jaxbyz.aggregators.base import Rule
from jaxbyz.attacks.optimized import (
    RELAXATIONS,
    START_PARAMS,
    objective_value,
)
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation

H_ROWS, D, F = 8, 8, 2
TOL = 1e-5
KEY_START = jax.random.key(0)


def honest(seed: int, h: int = H_ROWS, d: int = D) -> jax.Array:
    """A random ``[h, d]`` honest matrix with a common mean."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (h, d)) + jax.random.normal(k2, (d,))


def start_output(name: str, H: jax.Array, f: int, rule: Rule, key: jax.Array) -> jax.Array:
    """The output of start ``name`` with the settings the attack uses."""
    return attacks.get(name, **START_PARAMS.get(name, {}))(H, f, key=key, rule=rule, f_decl=f)


@functools.cache
def jitted(rule_name: str, **params):
    """The jitted attack ``(H, key[, drift]) -> [F, d]`` against ``rule_name``."""
    rule = aggregators.get(rule_name)
    atk = attacks.get("optimized", **params)
    return jax.jit(lambda H, key, drift=None: atk(H, F, key=key, rule=rule, f_decl=F, drift=drift))


# ------------------------------------------------------------------------------------------- #
# NumPy references of the objective (float64, from the definition)


def np_rule(name: str, G: np.ndarray) -> np.ndarray:
    if name == "average":
        return G.mean(axis=0)
    if name == "median":  # lower middle value for an even count, as the library's default
        return np.sort(G, axis=0)[(G.shape[0] - 1) // 2]
    raise NotImplementedError(name)


def np_objective(objective: str, rule: str, H: np.ndarray, B: np.ndarray) -> float:
    H, B = np.asarray(H, np.float64), np.asarray(B, np.float64)
    mu = H.mean(axis=0)
    agg = np_rule(rule, np.concatenate([H, B]))
    if objective == "deviation":
        return float(np.sum((agg - mu) ** 2))
    if objective == "directed":
        return float(-(agg @ mu) / np.linalg.norm(mu))
    return float(-(agg @ mu) / (np.linalg.norm(agg) * np.linalg.norm(mu)))


@pytest.mark.parametrize("objective", ["deviation", "cosine", "directed"])
@pytest.mark.parametrize("rule", ["average", "median"])
def test_objective_against_numpy(objective, rule):
    for seed in range(3):
        H = honest(seed)
        B = jax.random.normal(jax.random.key(50 + seed), (F, D)) * 3.0
        got = objective_value(objective, aggregators.get(rule), H, B, F, None)
        np.testing.assert_allclose(float(got), np_objective(objective, rule, H, B), rtol=1e-5)


# ------------------------------------------------------------------------------------------- #
# Never weaker than the starts; shared rows; jit


@pytest.mark.parametrize(
    ("rule_name", "objective", "starts"),
    [
        ("median", "deviation", ("little", "empire")),
        pytest.param("trmean", "deviation", ("little", "empire"), marks=pytest.mark.slow),
        pytest.param(
            "krum", "deviation", ("little", "empire", "minmax", "minsum"), marks=pytest.mark.slow
        ),
        ("cclip", "cosine", ("little", "empire")),
        ("median", "directed", ("little", "minsum")),
        pytest.param("geomed", "deviation", ("little", "empire"), marks=pytest.mark.slow),
    ],
)
def test_never_weaker_than_its_starts(rule_name, objective, starts):
    rule = aggregators.get(rule_name)
    run = jitted(rule_name, objective=objective, starts=starts, steps=4)
    key = jax.random.key(7)
    gains = []
    for seed in range(3):
        H = honest(seed)
        B = run(H, key)
        assert B.shape == (F, D) and np.isfinite(np.asarray(B)).all()
        np.testing.assert_array_equal(np.asarray(B[0]), np.asarray(B[1]))  # shared=True
        got = float(objective_value(objective, rule, H, B, F, None))
        # the attack gives start i the key fold_in(split(key)[0], i)
        key_starts = jax.random.split(key)[0]
        best = max(
            float(
                objective_value(
                    objective, rule, H,
                    start_output(name, H, F, rule, jax.random.fold_in(key_starts, i)), F, None,
                )
            )
            for i, name in enumerate(starts)
        )  # fmt: skip
        assert got >= best - TOL * max(1.0, abs(best)), (rule_name, seed, got, best)
        gains.append(got - best)
    if rule_name in ("krum", "geomed", "trmean"):  # the ascent does move past the starts there
        assert max(gains) > 1e-3, gains


@pytest.mark.slow
def test_jit_and_eager_agree_and_unshared_rows():
    rule = aggregators.get("median")
    atk = attacks.get("optimized", starts=("empire",), steps=2, shared=False)
    H, key = honest(3), jax.random.key(1)
    eager = atk(H, F, key=key, rule=rule, f_decl=F)
    compiled = jax.jit(lambda H, key: atk(H, F, key=key, rule=rule, f_decl=F))(H, key)
    assert eager.shape == (F, D)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(compiled), rtol=1e-5, atol=1e-5)
    assert atk(H, 0, key=key, rule=rule).shape == (0, D)


# ------------------------------------------------------------------------------------------- #
# The optimisation moves where it must; the ball


def test_improves_against_average_within_the_ball():
    """Against the average the deviation ``(f/n)^2 ||b - mu||^2`` grows with ``||b - mu||``:
    the ascent leaves ``empire`` (``-0.1 mu``) and stops on the ball."""
    rule = aggregators.get("average")
    run = jitted("average", starts=("empire",), steps=10, radius=3.0, learning_rate=1.0)
    H = honest(5)
    B = run(H, jax.random.key(0))
    mu = np.asarray(H, np.float64).mean(axis=0)
    spread = np.linalg.norm(np.asarray(H, np.float64) - mu, axis=1).max()
    start = start_output("empire", H, F, rule, jax.random.key(0))
    radius = max(3.0 * spread, np.linalg.norm(np.asarray(start[0], np.float64) - mu))
    got = np_objective("deviation", "average", H, B)
    assert got > 1.5 * np_objective("deviation", "average", H, start)
    assert np.linalg.norm(np.asarray(B, np.float64) - mu, axis=1).max() <= radius * (1 + 1e-5)
    n = H_ROWS + F
    assert got <= (F / n) ** 2 * radius**2 * (1 + 1e-5)
    np.testing.assert_allclose(float(objective_value("deviation", rule, H, B, F, None)), got,
                               rtol=1e-5)  # fmt: skip


def test_directed_reaches_the_analytic_optimum_against_average():
    """Against the average ``-<F, mu>/||mu|| = -(h ||mu|| + f <b, mu>/||mu||) / n`` is largest on
    the ball ``||b - mu|| <= r`` at ``b = mu - r mu/||mu||``; plain gradient steps from ``empire``
    (on that line) follow the constant gradient ``-(f/n) mu/||mu||`` there."""
    run = jitted(
        "average", objective="directed", starts=("empire",), steps=10, optimizer="sgd",
        learning_rate=100.0, radius=3.0,
    )  # fmt: skip
    H = honest(6)
    B = np.asarray(run(H, jax.random.key(0)), np.float64)
    H64 = np.asarray(H, np.float64)
    mu = H64.mean(axis=0)
    norm = np.linalg.norm(mu)
    start = np.asarray(start_output("empire", H, F, aggregators.get("average"), jax.random.key(0)))
    radius = max(3.0 * np.linalg.norm(H64 - mu, axis=1).max(), np.linalg.norm(start[0] - mu))
    np.testing.assert_allclose(B, np.tile(mu - radius * mu / norm, (F, 1)), rtol=1e-4, atol=1e-4)
    optimum = -(H_ROWS * norm + F * (norm - radius)) / (H_ROWS + F)
    np.testing.assert_allclose(np_objective("directed", "average", H, B), optimum, rtol=1e-4)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_direction_start_goes_along_the_start_to_the_ball():
    """``direction="start"`` moves only along the start's displacement from ``mu``. Against the
    average the deviation ``(f/n)^2 ||b - mu||^2`` grows with the length: the best point of the
    ray inside the ball is on the sphere ``||b - mu|| = r``, in the start's direction."""
    rule = aggregators.get("average")
    run = jitted(
        "average", starts=("little",), steps=10, radius=3.0, learning_rate=1.0, direction="start"
    )
    H = honest(8)
    B = np.asarray(run(H, jax.random.key(0)), np.float64)
    H64 = np.asarray(H, np.float64)
    mu = H64.mean(axis=0)
    start = np.asarray(start_output("little", H, F, rule, jax.random.key(0))[0], np.float64)
    radius = max(3.0 * np.linalg.norm(H64 - mu, axis=1).max(), np.linalg.norm(start - mu))
    assert radius > 1.5 * np.linalg.norm(start - mu)  # the start is well inside the ball
    expected = mu + radius * unit(start - mu)
    np.testing.assert_allclose(B, np.tile(expected, (F, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rule_name", ["median", "average"])
def test_direction_start_keeps_a_start_direction_and_is_never_weaker(rule_name):
    rule = aggregators.get(rule_name)
    starts = ("little", "empire")
    run = jitted(rule_name, starts=starts, steps=4, direction="start")
    key = jax.random.key(3)
    key_starts = jax.random.split(key)[0]
    for seed in range(3):
        H = honest(20 + seed)
        B = np.asarray(run(H, key), np.float64)
        mu = np.asarray(H, np.float64).mean(axis=0)
        outputs = [
            np.asarray(start_output(name, H, F, rule, jax.random.fold_in(key_starts, i)))
            for i, name in enumerate(starts)
        ]
        cosines = [float(unit(B[0] - mu) @ unit(out[0] - mu)) for out in outputs]
        assert max(cosines) > 1 - 1e-5, cosines  # on a start's ray, on its side
        got = np_objective("deviation", rule_name, H, B)
        best = max(np_objective("deviation", rule_name, H, out) for out in outputs)
        assert got >= best * (1 - 1e-5), (seed, got, best)


# ------------------------------------------------------------------------------------------- #
# Relaxations: the exact rule in the zero-temperature limit


def test_relaxations_reach_the_exact_rule():
    """At a tiny temperature each relaxation is its rule (Bulyan's: the mean of the rows its
    Multi-Krum stage uses, the coordinate stage being dropped); at a finite one its gradient
    is finite."""
    G = jnp.concatenate([honest(11, 9, D), 4.0 + jax.random.normal(jax.random.key(3), (2, D))])
    for rule, accepted_mean in (
        (aggregators.get("krum"), False),
        (aggregators.get("krum", m=1), False),
        (aggregators.get("krum", squared=True), False),
        (aggregators.get("brute"), False),
        (aggregators.get("geomed", tol=0.0, max_iter=200), False),
        (aggregators.get("cge"), False),
        (aggregators.get("aksel"), False),
        (aggregators.get("aksel", mode="n-f"), False),
        (aggregators.get("monna"), False),
        (aggregators.get("monna", pivot=0), False),
        (aggregators.get("bulyan"), True),
    ):
        relax = RELAXATIONS[rule.name]

        def check(G, rule=rule, relax=relax):
            soft = relax(rule, G, F, key=None, temperature=1e-4)

            def total(B):
                return jnp.sum(
                    relax(rule, jnp.concatenate([G[:9], B]), F, key=None, temperature=0.5)
                )

            return soft, rule.aggregate(G, F), jax.grad(total)(G[9:])

        soft, (exact, accepted), grad = jax.jit(check)(G)
        if accepted_mean:
            exact = np.asarray(accepted) @ np.asarray(G) / np.sum(np.asarray(accepted))
        np.testing.assert_allclose(np.asarray(soft), np.asarray(exact), rtol=1e-4, atol=1e-4)
        assert np.isfinite(np.asarray(grad)).all(), rule


@pytest.mark.parametrize("n,f,d", [(7, 1, 5), (11, 3, 16), (51, 12, 40)])
def test_trmean_surrogate_is_the_trimmed_mean_and_its_gradient(n, f, d):
    """The trmean entry of the table is the exact rule written as a masked mean: its value is
    the NumPy trimmed mean (also with a NaN row trimmed away), its gradient the kept-rank mask
    over ``n - 2f``, as reverse-mode autodiff of the exact rule gives it (compared at the small
    sizes: at ``n = 51`` that autodiff takes a minute to compile on the 2-core CPU)."""
    rule = aggregators.get("trmean")
    surrogate = RELAXATIONS["trmean"]
    G = jax.random.normal(jax.random.key(n + d), (n, d))
    weights = jax.random.normal(jax.random.key(1), (d,))

    def projected(fn):
        return jax.jit(jax.grad(lambda G: jnp.dot(fn(G), weights)))

    value = jax.jit(lambda G: surrogate(rule, G, f, key=None, temperature=0.1))
    np.testing.assert_allclose(value(G), ref_rules.trmean(np.asarray(G), f), rtol=1e-5, atol=1e-6)
    grad = projected(lambda G: surrogate(rule, G, f, key=None, temperature=0.1))(G)
    S = np.sort(np.asarray(G), axis=0)
    kept = (np.asarray(G) >= S[f]) & (np.asarray(G) <= S[n - f - 1])
    np.testing.assert_allclose(grad, kept * np.asarray(weights) / (n - 2 * f), atol=1e-6)
    if n <= 11:  # reverse-mode through the exact sorting network at n = 51 compiles for a minute
        np.testing.assert_allclose(grad, projected(lambda G: rule(G, f))(G), atol=1e-6)
    poisoned = G.at[0].set(jnp.nan)
    np.testing.assert_allclose(
        value(poisoned), ref_rules.trmean(np.asarray(poisoned), f), rtol=1e-5, atol=1e-6
    )


def test_starts_are_the_papers_attacks():
    """The starts ``little`` and ``empire`` are the settings of the paper's experiments, from
    their definitions: ``mu - 1.5 sigma`` (unbiased std) and ``(1 - 1.1) mu = -0.1 mu``: the
    honest mean pushed against itself, not amplified (``2.1 mu``, which ``negative=True`` would
    give and which the deviation objective cannot tell from an attack)."""
    H = honest(4)
    Hn = np.asarray(H, np.float64)
    mu, sigma = Hn.mean(axis=0), Hn.std(axis=0, ddof=1)
    rule = aggregators.get("median")
    expected = {"little": mu - 1.5 * sigma, "empire": -0.1 * mu}
    for name, row in expected.items():
        B = np.asarray(start_output(name, H, F, rule, KEY_START))
        np.testing.assert_allclose(B, np.broadcast_to(row, B.shape), rtol=1e-5, atol=1e-5)


def test_straight_through_for_a_rule_autodiff_cannot_reverse():
    """A rule outside the relaxation table whose ``while_loop`` defeats reverse-mode autodiff
    (a renamed geomed) still runs, and keeps its guarantee."""
    base = aggregators.get("geomed")
    rule = Rule(name="geomed-copy", fn=base.fn, params=base.params, check_fn=base.check_fn)
    atk = attacks.get("optimized", starts=("little",), steps=3)
    H, key = honest(2), jax.random.key(4)
    B = jax.jit(lambda H, key: atk(H, F, key=key, rule=rule, f_decl=F))(H, key)
    start = start_output("little", H, F, rule, key)
    assert (
        float(objective_value("deviation", rule, H, B, F, None))
        >= float(objective_value("deviation", rule, H, start, F, None)) - TOL
    )


# ------------------------------------------------------------------------------------------- #
# Memory: the deviation caused so far, carried into the objective


@pytest.mark.parametrize("towards", ["little", "empire"])
def test_memory_keeps_the_direction_of_the_drift(towards):
    """Against the median, where many candidates tie on the one-step deviation, a large
    remembered drift ``e`` along one start's push (``little`` lowers every coordinate,
    ``empire`` moves each against the honest mean) makes the attack push the aggregate along
    ``e``; the result is never weaker than its starts on the carried objective
    ``||F + m e - mu||^2``."""
    rule = aggregators.get("median")
    memory, starts = 0.9, ("little", "empire", "minmax", "minsum")
    run = jitted("median", memory=memory, starts=starts, steps=4)
    key = jax.random.key(5)
    key_starts = jax.random.split(key)[0]
    for seed in range(3):
        H = honest(seed)
        mu = np.asarray(H, np.float64).mean(axis=0)
        push = np.asarray(start_output(towards, H, F, rule, key_starts)[0]) - mu
        drift = jnp.asarray(10.0 * np.sqrt(D) * push / np.linalg.norm(push), jnp.float32)
        B = run(H, key, drift)
        agg = np_rule("median", np.concatenate([np.asarray(H), np.asarray(B)]))
        assert float((agg - mu) @ np.asarray(drift)) > 0, (towards, seed)
        carried = memory * drift
        got = float(objective_value("deviation", rule, H, B, F, None, carried))
        np.testing.assert_allclose(got, np.sum((agg + np.asarray(carried) - mu) ** 2), rtol=1e-4)
        for i, name in enumerate(starts):
            start = start_output(name, H, F, rule, jax.random.fold_in(key_starts, i))
            best = float(objective_value("deviation", rule, H, start, F, None, carried))
            assert got >= best - TOL * abs(best), (name, seed, got, best)


def test_no_memory_ignores_the_drift():
    """``memory=0`` (the default) is the greedy attack: it reads no drift."""
    rule = aggregators.get("median")
    greedy = attacks.get("optimized", starts=("little", "empire"), steps=2)
    assert not greedy.needs_drift and attacks.get("optimized", memory=0.5).needs_drift
    H, key = honest(2), jax.random.key(3)
    drift = 10.0 * jnp.ones(D)
    np.testing.assert_array_equal(
        np.asarray(greedy(H, F, key=key, rule=rule, f_decl=F)),
        np.asarray(greedy(H, F, key=key, rule=rule, f_decl=F, drift=drift)),
    )
    with pytest.raises(ValueError, match=re.escape("drift must be a [8] float vector")):
        attacks.get("optimized", memory=0.5)(H, F, key=key, rule=rule, drift=jnp.ones(3))


# ------------------------------------------------------------------------------------------- #
# Parameters


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"objective": "angle"}, "parameter objective='angle' is invalid; choose one of"),
        ({"shared": 1}, "parameter shared=1 is invalid; pass True or False"),
        ({"steps": -1}, "parameter steps=-1 is invalid; pass an integer >= 0"),
        ({"steps": 2.5}, "parameter steps=2.5 is invalid"),
        ({"optimizer": "nope"}, "parameter optimizer='nope' is invalid; pass the name of an"),
        ({"learning_rate": 0}, "parameter learning_rate=0 is invalid; pass a finite number > 0"),
        ({"temperature": -1.0}, "parameter temperature=-1.0 is invalid"),
        ({"radius": 0}, "parameter radius=0 is invalid"),
        ({"memory": 1.0}, "parameter memory=1.0 is invalid; pass a finite number >= 0 and < 1"),
        ({"memory": -0.1}, "parameter memory=-0.1 is invalid"),
        ({"direction": "sideways"}, "parameter direction='sideways' is invalid; choose one of"),
        ({"starts": ()}, "parameter starts=() is invalid; pass a non-empty tuple"),
        ({"starts": ("little", "nope")}, "each start must be a registered attack"),
        ({"starts": ("optimized",)}, "optimized cannot start from itself"),
        ({"starts": ("labelflip",)}, "labelflip poisons data"),
        ({"foo": 1}, "attack optimized has no parameter 'foo'"),
    ],
)
def test_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        attacks.get("optimized", **params)
    assert "\n" not in str(err.value)


def test_registered_with_aliases_and_defaults():
    atk = attacks.get("optimised")
    assert atk.name == "optimized" and atk.needs_rule and atk.needs_key
    assert atk.params["starts"] == ("little", "empire", "minmax", "minsum")
    assert atk.params["direction"] == "free" and atk.params["memory"] == 0
    assert attacks.get("optimized", starts=["alie", "ipm"]).params["starts"] == (
        "little",
        "empire",
    )


# ------------------------------------------------------------------------------------------- #
# Through the simulator


def optimized_simulation(nb_workers: int, **attack_args):
    """A two-step synthetic run against the median under a cheap optimized attack."""
    config = Config(
        dataset="synthetic",
        nb_workers=nb_workers,
        nb_decl_byz=3,
        gar="median",
        attack="optimized",
        attack_args={"starts": ["little", "empire"], **attack_args},
        batch_size=4,
        nb_steps=2,
    )
    return make_simulation(config, make_synthetic(n_train=128, n_test=32, shape=(4, 4, 1), seed=0))


@pytest.mark.slow
def test_simulator_smoke():
    sim = optimized_simulation(15, steps=3)
    state = sim.init(jax.random.key(0))
    step = jax.jit(sim.step)
    for _ in range(2):
        state, study = step(state, sim.default_hparams(), sim.arrays)
    assert int(state.step) == 2
    assert np.isfinite(np.asarray(state.theta)).all()
    assert np.isfinite(np.asarray(study["loss"])).all()


@pytest.mark.slow
def test_simulator_carries_the_drift():
    """The simulator keeps ``e_t = m e_{t-1} + (F_t - mu_t)`` and hands ``e_{t-1}`` to the
    attack: two steps of the step's last stage on known honest rows, against a NumPy median of
    the rows the attack returns given the drift."""
    memory = 0.8
    sim = optimized_simulation(11, steps=2, memory=memory)
    hp = sim.default_hparams()
    stages = sim.stages(hp)
    state = sim.init(jax.random.key(0))
    assert state.attack_drift.shape == (sim.dim,) and not np.asarray(state.attack_drift).any()
    rule, atk = aggregators.get("median"), attacks.get("optimized", **sim.config.attack_args)
    expected = np.zeros(sim.dim)
    for t in range(2):
        H = jax.random.normal(jax.random.key(10 + t), (sim.honest, sim.dim)) + 0.1 * t
        sub = sim._submissions(state, stages, hp, sim.arrays, jax.random.key(20 + t))
        sub = sub._replace(honest=H)
        keys = jax.random.split(jax.random.key(30 + t), 3)
        state, _ = sim._conclude(state, stages, hp, sub, rule, None, *keys)
        B = atk(H, 3, key=keys[1], rule=rule, f_decl=3, drift=jnp.asarray(expected, H.dtype))
        agg = np_rule("median", np.concatenate([np.asarray(H), np.asarray(B)]))
        expected = memory * expected + agg - np.asarray(H, np.float64).mean(axis=0)
        np.testing.assert_allclose(np.asarray(state.attack_drift), expected, rtol=1e-4, atol=1e-5)
