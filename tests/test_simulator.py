"""The simulator core: placements, determinism, seed batching, momentum maths, metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import metrics, momentum
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation, make_train

DATA = make_synthetic(n_train=2000, n_test=500, shape=(12, 12, 1), seed=3)


def small(**changes) -> Config:
    base = Config(
        dataset="synthetic",
        nb_workers=9,
        nb_decl_byz=2,
        gar="median",
        attack="little",
        attack_args={"factor": 1.5},
        batch_size=16,
        nb_steps=20,
        evaluation_delta=10,
        learning_rate=0.1,
        momentum=0.9,
    )
    if changes.get("attack", "little") != "little":
        changes.setdefault("attack_args", {})
    return base.replace(**changes)


@pytest.fixture(scope="module")
def placement_thetas():
    """Parameters after 20 steps with the average, no attack, for each placement."""
    out = {}
    for placement in momentum.PLACEMENTS:
        config = small(
            gar="average",
            nb_decl_byz=0,
            attack="nan",
            momentum_at=placement,
            dampening=0.2,
            gradient_clip=1.0,
        )
        out[placement] = np.asarray(jax.jit(make_train(config, DATA))(jax.random.key(0))["theta"])
    return out


def test_placements_agree_with_average(placement_thetas):
    """With a linear rule the three placements are the same algorithm (paper, Section 3)."""
    ref = placement_thetas["update"]
    for placement in ("worker", "server"):
        np.testing.assert_allclose(placement_thetas[placement], ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref, 0)


def test_same_seed_same_result():
    train = jax.jit(make_train(small(nb_steps=10, evaluation_delta=5), DATA))
    a, b = train(jax.random.key(7)), train(jax.random.key(7))
    np.testing.assert_array_equal(a["theta"], b["theta"])
    np.testing.assert_array_equal(a["accuracy"], b["accuracy"])
    c = train(jax.random.key(8))
    assert not np.array_equal(a["theta"], c["theta"])


def test_vmapped_seeds_match_single_runs():
    """Seeds batched with vmap give each seed its own curve (tolerance: 1e-5 relative on theta,
    identical accuracy curves up to one test example)."""
    train = make_train(small(nb_steps=10, evaluation_delta=5, gar="krum", nb_workers=11), DATA)
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(train))(keys)
    single = jax.jit(train)
    for i in range(3):
        alone = single(keys[i])
        np.testing.assert_allclose(batched["theta"][i], alone["theta"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched["accuracy"][i], alone["accuracy"], atol=1.0 / 500)


def test_run_learns_without_attack():
    config = small(gar="average", nb_decl_byz=0, attack="nan", nb_steps=60, evaluation_delta=20)
    out = jax.jit(make_train(config, DATA))(jax.random.key(0))
    assert out["accuracy"].shape == (4,)
    assert out["accuracy"][-1] > 0.6 > out["accuracy"][0]


def test_outputs_shapes_and_uneven_segments():
    config = small(nb_steps=13, evaluation_delta=5)
    sim = make_simulation(config, DATA)
    np.testing.assert_array_equal(sim.evaluation_steps(), [0, 5, 10, 13])
    out = jax.jit(sim.run)(jax.random.key(0))
    assert out["accuracy"].shape == (4,)
    for name in metrics.NAMES:
        assert out["study"][name].shape == (13,), name
    assert np.isfinite(out["study"]["variance_norm_ratio"]).all()
    # median selects nothing: acceptance is not defined
    assert np.isnan(out["study"]["byzantine_accepted"]).all()


def test_traced_hyperparameters_change_the_run():
    train = jax.jit(make_train(small(nb_steps=5, evaluation_delta=5), DATA))
    key = jax.random.key(0)
    base = train(key)
    same = train(key, {"learning_rate": jnp.float32(0.1)})
    other = train(key, {"learning_rate": jnp.float32(0.05)})
    np.testing.assert_array_equal(base["theta"], same["theta"])
    assert not np.allclose(base["theta"], other["theta"])


def test_nan_attack_is_survived_by_median():
    config = small(attack="nan", nb_steps=10, evaluation_delta=5)
    out = jax.jit(make_train(config, DATA))(jax.random.key(0))
    assert np.isfinite(out["theta"]).all()


def test_label_flip_hook_runs_real_gradients():
    pytest.importorskip("jaxbyz.attacks.labelflip")
    config = small(attack="labelflip", nb_steps=5, evaluation_delta=5, momentum_at="worker")
    sim = make_simulation(config, DATA)
    assert sim.poisoning and sim.grad_workers == 9
    out = jax.jit(sim.run)(jax.random.key(0))
    # flipped-label gradients are real gradients: finite and not aligned with honest ones
    assert np.isfinite(out["study"]["attack_norm"]).all()
    assert (out["study"]["cos_honest_attack"] < 0.99).all()


# ---------------------------------------------------------------------------------------------- #
# Metrics against NumPy written from the definitions (the transforms: tests/test_transforms.py)


def test_study_metrics_match_numpy():
    rng = np.random.default_rng(1)
    S, H, B = (rng.standard_normal((k, 8)).astype(np.float32) for k in (5, 5, 2))
    agg = rng.standard_normal(8).astype(np.float32)
    accepted = np.array([1, 1, 0, 1, 0, 1, 0], np.float32)
    past = rng.standard_normal((3, 8)).astype(np.float32)  # means of steps 3, 4, 2 (t mod 3)
    out, new_past = metrics.study(
        sampled=S,
        honest=H,
        byzantine=B,
        aggregate=agg,
        accepted=accepted,
        loss=jnp.float32(1.0),
        l2_from_origin=jnp.float32(2.0),
        learning_rate=jnp.float32(0.1),
        past=past,
        step=jnp.int32(5),
        momentum=jnp.float32(0.9),
    )

    def summary(X):
        m = X.mean(0)
        dev = np.sqrt(((X - m) ** 2).sum() / (len(X) - 1))
        return m, np.linalg.norm(m), dev, np.abs(m).max()

    hm, hn, hd, hx = summary(H.astype(np.float64))
    bm, bn, _, _ = summary(B.astype(np.float64))
    assert float(out["honest_norm"]) == pytest.approx(hn, rel=1e-5)
    assert float(out["honest_deviation"]) == pytest.approx(hd, rel=1e-5)
    assert float(out["honest_max"]) == pytest.approx(hx, rel=1e-5)
    assert float(out["variance_norm_ratio"]) == pytest.approx(hd / hn, rel=1e-5)
    cos = hm @ bm / (hn * bn)
    assert float(out["cos_honest_attack"]) == pytest.approx(cos, rel=1e-4, abs=1e-6)
    assert float(out["byzantine_accepted"]) == pytest.approx(0.5)
    # the paper's window of past sampled means: most recent first (steps 4, 3, 2)
    sm = S.astype(np.float64).mean(0)
    recent = [past[1], past[0], past[2]]
    curvature = 0.9 * sum(0.9**i * sm @ p for i, p in enumerate(recent))
    assert float(out["sampled_curvature"]) == pytest.approx(curvature, rel=1e-4)
    cos = sm @ past[1] / (np.linalg.norm(sm) * np.linalg.norm(past[1]))
    assert float(out["cos_sampled_prev"]) == pytest.approx(cos, rel=1e-4)
    np.testing.assert_allclose(new_past[2], sm, rtol=1e-5)  # step 5 goes to row 5 mod 3


def test_past_window_before_it_fills():
    """At step 1 of a window of 4, only the mean of step 0 counts; at step 0, nothing."""
    mean, past = np.ones(3, np.float32), np.zeros((4, 3), np.float32)
    past[0] = 2.0
    prev_cos, curvature, _ = metrics.past_study(
        jnp.asarray(mean), jnp.float32(np.sqrt(3)), past, jnp.int32(1), jnp.float32(0.5)
    )
    assert float(curvature) == pytest.approx(0.5 * 6.0) and float(prev_cos) == pytest.approx(1.0)
    prev_cos, curvature, _ = metrics.past_study(
        jnp.asarray(mean), jnp.float32(np.sqrt(3)), past, jnp.int32(0), jnp.float32(0.5)
    )
    assert np.isnan(curvature) and np.isnan(prev_cos)
