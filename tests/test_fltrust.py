"""FLTrust against a NumPy transcription of its definition (Cao et al., NDSS 2021), and the
simulator's server gradient on the root set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import aggregators
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic, preprocess
from jaxbyz.simulator import make_simulation, root_indices


def fltrust_reference(G: np.ndarray, g0: np.ndarray) -> np.ndarray:
    """``Σ ReLU(cos(g_i, g0)) (‖g0‖/‖g_i‖) g_i / Σ ReLU(cos)``, float64, one row at a time."""
    G, g0 = np.asarray(G, np.float64), np.asarray(g0, np.float64)
    total, scores = np.zeros_like(g0), []
    for g in G:
        norm = np.linalg.norm(g)
        ok = np.all(np.isfinite(g)) and norm > 0
        score = max(0.0, g @ g0 / (norm * np.linalg.norm(g0))) if ok else 0.0
        scores.append(score)
        if score > 0:
            total += score * np.linalg.norm(g0) / norm * g
    return total / sum(scores) if sum(scores) > 0 else total


@pytest.mark.parametrize("n,d,seed", [(5, 3, 0), (11, 16, 1), (20, 40, 2)])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_the_definition(n, d, seed, jit):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(n, d)).astype(np.float32)
    g0 = (rng.normal(size=d) + 0.5).astype(np.float32)
    rule = aggregators.get("fltrust")
    fn = (
        (lambda G, r: rule(G, 2, reference=r))
        if not jit
        else jax.jit(lambda G, r: rule(G, 2, reference=r))
    )
    np.testing.assert_allclose(fn(G, g0), fltrust_reference(G, g0), rtol=2e-5, atol=1e-6)


def test_opposed_and_nonfinite_rows_get_no_weight():
    rng = np.random.default_rng(3)
    g0 = rng.normal(size=8).astype(np.float32)
    honest = g0 + 0.1 * rng.normal(size=(6, 8)).astype(np.float32)
    bad = np.stack([-100 * g0, np.full(8, np.nan), np.full(8, np.inf), 1e30 * -g0])
    G = np.concatenate([honest, bad.astype(np.float32)])
    aggregate, trust = aggregators.get("fltrust").aggregate(jnp.asarray(G), 4, reference=g0)
    assert np.all(np.isfinite(aggregate))
    np.testing.assert_allclose(aggregate, fltrust_reference(honest, g0), rtol=2e-5, atol=1e-6)
    assert np.all(np.asarray(trust)[6:] == 0) and np.all(np.asarray(trust)[:6] > 0)
    # the norm is the server's: a huge aligned row weighs no more than a unit one
    aligned = np.stack([1e6 * g0, g0]).astype(np.float32)
    np.testing.assert_allclose(aggregators.get("fltrust")(aligned, 0, reference=g0), g0, rtol=1e-5)


def test_no_positive_score_gives_zero_and_reference_is_required():
    g0 = np.ones(4, np.float32)
    G = -np.abs(np.random.default_rng(0).normal(size=(5, 4))).astype(np.float32)
    assert np.all(np.asarray(aggregators.get("fltrust")(G, 1, reference=g0)) == 0)
    with pytest.raises(ValueError, match="pass reference=g0"):
        aggregators.get("fltrust")(G, 1)
    with pytest.raises(ValueError, match="reference has shape"):
        aggregators.get("fltrust")(G, 1, reference=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="root_size=0"):
        aggregators.get("fltrust", root_size=0)


def test_bound_composed_and_mixed_rules_pass_the_reference():
    rng = np.random.default_rng(4)
    G = rng.normal(size=(9, 6)).astype(np.float32)
    g0 = rng.normal(size=6).astype(np.float32)
    rule = aggregators.get("fltrust", root_size=7)
    bound = rule.with_reference(g0)
    assert not bound.needs_reference and rule.needs_reference and rule.reference_size == 7
    np.testing.assert_array_equal(bound(G, 2), rule(G, 2, reference=g0))
    composed = aggregators.get("fltrust", pre=["nnm"])
    assert composed.reference_size == 100
    got = composed(G, 2, reference=g0)
    assert np.all(np.isfinite(got))
    mixture = aggregators.from_gars("fltrust,1;median,0")
    assert mixture.reference_size == 100
    np.testing.assert_allclose(
        mixture(G, 2, key=jax.random.key(0), reference=g0), rule(G, 2, reference=g0), rtol=1e-6
    )


def test_root_set_is_fixed_distinct_and_checked():
    a, b = root_indices(1000, 100, 1), root_indices(1000, 100, 1)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 100 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, root_indices(1000, 100, 2))
    with pytest.raises(ValueError, match="root_size=2000"):
        root_indices(1000, 2000, 1)


def test_simulator_gives_the_server_gradient_on_the_root_set():
    data = make_synthetic(n_train=256, n_test=64, shape=(4, 4, 1), seed=0)
    config = Config(
        dataset="synthetic", nb_workers=9, nb_decl_byz=2, gar="fltrust", gar_args={"root_size": 16},
        attack="empire", attack_args={"factor": 1.1, "negative": True}, batch_size=8,
        nb_steps=3, evaluation_delta=0, gradient_clip=None,
    )  # fmt: skip
    sim = make_simulation(config, data)
    indices = np.asarray(sim.arrays["root_indices"])
    np.testing.assert_array_equal(indices, root_indices(256, 16, config.seed))
    state = sim.init(jax.random.key(0))
    hp = sim.default_hparams()
    got = sim._reference_gradient(state, jax.random.key(1), hp, sim.arrays)
    # the same loss on the same examples, computed apart
    x = preprocess(jnp.asarray(data.train_x[indices])[None], data)[0]
    y = jnp.asarray(data.train_y[indices])
    want = jax.grad(lambda t: sim._loss(t, state.model_state, x, y, jax.random.key(2), hp)[0])(
        state.theta
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    state, _ = jax.jit(sim.step)(state, hp, sim.arrays)
    assert np.all(np.isfinite(np.asarray(state.theta)))


def test_runs_of_other_seeds_are_other_programs():
    from jaxbyz.experiments.grid import program_key

    base = Config(dataset="synthetic", gar="fltrust", nb_workers=9, nb_decl_byz=2)
    assert program_key(base) != program_key(base.replace(seed=2))
    median = base.replace(gar="median")
    assert program_key(median) == program_key(median.replace(seed=2))
