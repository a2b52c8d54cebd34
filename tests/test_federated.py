"""Federated rounds: K local steps, partial participation (NumPy references, equivalences)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import data as data_lib
from jaxbyz.config import Config
from jaxbyz.federated import FederatedSimulation, sample_clients
from jaxbyz.simulator import Simulation, make_simulation
from jaxbyz.validation import check_config

DATA = data_lib.make_synthetic(n_train=600, n_test=100, shape=(6, 6, 1), seed=5)


def small(**changes) -> Config:
    base = Config(
        dataset="synthetic",
        model="logreg",
        nb_workers=9,
        nb_decl_byz=2,
        gar="median",
        attack="little",
        attack_args={"factor": 1.5},
        batch_size=8,
        nb_steps=4,
        evaluation_delta=0,
        learning_rate=0.1,
        learning_rate_decay=0,
    )
    return base.replace(**changes)


def run_steps(sim, steps: int, seed: int = 0):
    state = sim.init(jax.random.key(seed))
    hp = sim.default_hparams()
    step = jax.jit(lambda s, d: sim.step(s, hp, d))
    studies = []
    for _ in range(steps):
        state, study = step(state, sim.arrays)
        studies.append(study)
    return state, studies


def as_federated(sim: Simulation) -> FederatedSimulation:
    fields = {f.name: getattr(sim, f.name) for f in dataclasses.fields(sim)}
    return FederatedSimulation(**fields)


@pytest.mark.parametrize(
    "changes",
    [
        {},  # little against the median, worker momentum
        pytest.param(
            {
                "momentum_at": "update",
                "gar": "krum",
                "attack": "empire",
                "attack_args": {"factor": 1.1},
            },
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"attack": "labelflip", "attack_args": {}, "momentum_at": "server"},
            marks=pytest.mark.slow,
        ),
    ],
)
def test_one_local_step_is_the_synchronous_step(changes):
    """K = 1 with every client taking part is today's step, bit for bit."""
    sim = make_simulation(small(**changes), DATA)
    assert type(sim) is Simulation
    base, base_studies = run_steps(sim, 3)
    fed, fed_studies = run_steps(as_federated(sim), 3)
    np.testing.assert_array_equal(fed.theta, base.theta)
    for a, b in zip(base_studies, fed_studies, strict=True):
        np.testing.assert_array_equal(a["loss"], b["loss"])
        np.testing.assert_array_equal(a["variance_norm_ratio"], b["variance_norm_ratio"])


# ---------------------------------------------------------------------------------------------- #
# K local steps on a linear model against NumPy


def one_per_class() -> data_lib.Dataset:
    """Ten training examples, one per class: with ``--partition sorted`` and ten honest clients
    each client's batches are copies of its own example, so a NumPy reference knows them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2, 2, 1)).astype(np.float32)
    y = np.arange(10, dtype=np.int32)
    return dataclasses.replace(
        data_lib.make_synthetic(n_train=10, n_test=10, shape=(2, 2, 1), seed=1),
        train_x=x,
        train_y=y,
    )


def numpy_rounds(W, b, X, Y, rounds, K, lr, beta, keep):
    """Local SGD with worker momentum on softmax regression (definition): each client starts a
    round from the server's model, takes K steps ``m = β m + g``, ``θ -= lr m``, sends ``Σ_k m_k``;
    the server takes ``θ -= lr * mean_i Σ_k m_k``."""
    n = len(X)
    mW, mb = np.zeros((n, *W.shape)), np.zeros((n, *b.shape))
    for _ in range(rounds):
        if not keep:
            mW[:], mb[:] = 0, 0
        sW, sb = np.zeros_like(mW), np.zeros_like(mb)
        for i in range(n):
            w, c = W.copy(), b.copy()
            for _ in range(K):
                z = X[i] @ w + c
                p = np.exp(z - z.max())
                p /= p.sum()
                p[Y[i]] -= 1.0  # d(-log softmax_y)/dz
                gW, gb = np.outer(X[i], p), p
                mW[i] = beta * mW[i] + gW
                mb[i] = beta * mb[i] + gb
                w, c = w - lr * mW[i], c - lr * mb[i]
                sW[i] += mW[i]
                sb[i] += mb[i]
        W, b = W - lr * sW.mean(0), b - lr * sb.mean(0)
    return W, b


@pytest.mark.parametrize(("K", "keep"), [(3, True), pytest.param(5, False, marks=pytest.mark.slow)])
def test_local_steps_match_numpy_linear_model(K, keep):
    dataset = one_per_class()
    config = small(
        nb_workers=10,
        nb_decl_byz=0,
        gar="average",
        attack="nan",
        attack_args={},
        partition="sorted",
        no_transform=True,
        gradient_clip=None,
        l2_regularize=0.0,
        momentum=0.5,
        nb_local_steps=K,
        local_state="keep" if keep else "reset",
        learning_rate=0.3,
    )
    sim = make_simulation(config, dataset)
    assert isinstance(sim, FederatedSimulation)
    state = sim.init(jax.random.key(0))
    params = sim.unravel(state.theta)["Dense_0"]
    X = np.asarray(data_lib.preprocess(dataset.train_x, dataset, xp=np)).reshape(10, -1)
    table = np.asarray(sim.arrays["partition_table"])[:, 0]  # each client's one example
    W, b = numpy_rounds(
        np.asarray(params["kernel"], np.float64),
        np.asarray(params["bias"], np.float64),
        X[table],
        dataset.train_y[table],
        rounds=2,
        K=K,
        lr=0.3,
        beta=0.5,
        keep=keep,
    )
    final, _ = run_steps(sim, 2)
    got = sim.unravel(final.theta)["Dense_0"]
    np.testing.assert_allclose(got["kernel"], W, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got["bias"], b, rtol=2e-5, atol=2e-6)


def test_fedavg_is_the_average_of_the_clients_models():
    """With the average, SGD at the server and server learning rate 1, the new model is the mean
    of the clients' models after their K local steps (FedAvg); 0.5 halves the step (FedOpt)."""
    config = small(
        gar="average", nb_decl_byz=0, attack="nan", attack_args={}, momentum=0.0,
        nb_local_steps=4, nb_steps=1,
    )  # fmt: skip
    sim = make_simulation(config, DATA)
    state = sim.init(jax.random.key(3))
    new, _ = jax.jit(lambda s: sim.step(s, sim.default_hparams(), sim.arrays))(state)
    half = make_simulation(config.replace(server_learning_rate=0.5), DATA)
    new_half, _ = jax.jit(lambda s: half.step(s, half.default_hparams(), half.arrays))(state)
    np.testing.assert_allclose(
        new_half.theta - state.theta, 0.5 * (new.theta - state.theta), rtol=1e-4, atol=1e-7
    )
    assert not np.allclose(new.theta, state.theta)


def test_restarted_state_is_no_momentum():
    """``--local-state reset`` restarts every worker's momentum (data-poisoning attackers'
    too) at each round: with one local step, worker momentum is then no momentum at all."""
    flip = {"attack": "labelflip", "attack_args": {}, "momentum_at": "worker"}
    reset = make_simulation(small(**flip, local_state="reset"), DATA)
    assert isinstance(reset, FederatedSimulation)
    plain = make_simulation(small(**flip, momentum=0.0), DATA)
    np.testing.assert_array_equal(run_steps(reset, 3)[0].theta, run_steps(plain, 3)[0].theta)


# ---------------------------------------------------------------------------------------------- #
# Partial participation


def test_client_sampling_is_uniform():
    """Each client takes part with frequency M/n (chi-square over 4,000 rounds, p > 1e-4); the
    M sampled are distinct."""
    n, m, rounds = 20, 5, 4000
    keys = jax.random.split(jax.random.key(11), rounds)
    chosen = np.asarray(jax.vmap(lambda k: sample_clients(k, n, m))(keys))
    assert all(len(set(row)) == m for row in chosen[:200])
    counts = np.bincount(chosen.ravel(), minlength=n)
    expected = rounds * m / n
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 51.7  # the 1 - 1e-4 quantile of chi-square with 19 degrees of freedom


def test_partial_participation_keeps_absent_clients_state():
    config = small(
        nb_workers=12, nb_decl_byz=3, clients_per_round=6, round_decl_byz=2, nb_local_steps=2
    )
    sim = make_simulation(config, DATA)
    assert sim.partial and sim.worker_rows == 6
    state = sim.init(jax.random.key(0))
    hp = sim.default_hparams()
    step = jax.jit(lambda s: sim.step(s, hp, sim.arrays))
    state, _ = step(state)
    before = np.asarray(jax.tree.leaves(state.worker_state)[0])
    _, k_sample, *_ = jax.random.split(state.key, 4)
    clients = np.asarray(sample_clients(k_sample, 12, 6))
    after_state, study = step(state)
    after = np.asarray(jax.tree.leaves(after_state.worker_state)[0])
    absent = np.setdiff1d(np.arange(12), clients)
    np.testing.assert_array_equal(after[absent], before[absent])
    assert not np.allclose(after[clients], before[clients])
    assert int(study["byzantine_participants"]) == int(np.sum(clients >= 9))


def test_partial_participation_records_byzantine_participants():
    config = small(nb_workers=12, nb_decl_byz=3, clients_per_round=6, nb_steps=40)
    sim = make_simulation(config, DATA)
    state = sim.init(jax.random.key(0))
    study = jax.jit(lambda s: sim.steps(s, sim.default_hparams(), sim.arrays, 40))(state)[1]
    counts = np.asarray(study["byzantine_participants"])
    assert set(np.unique(counts)) <= {0, 1, 2, 3} and len(np.unique(counts)) > 1
    assert abs(counts.mean() - 6 * 3 / 12) < 0.6  # hypergeometric mean 1.5, sd ~0.8/sqrt(40)
    assert np.all(np.isfinite(np.asarray(study["loss"])))


def test_masked_attack_uses_only_the_sampled_honest_rows():
    """The moment attack's row is mu + a sigma of the honest sampled rows (NumPy)."""
    from jaxbyz.attacks.statistics import masked_mean_std

    rng = np.random.default_rng(2)
    X = rng.normal(size=(7, 5)).astype(np.float32)
    mask = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    mu, sigma = masked_mean_std(jnp.asarray(X), jnp.asarray(mask))
    np.testing.assert_allclose(mu, X[mask].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, X[mask].std(0, ddof=1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- #
# Bad input: one line, before compiling


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"nb_local_steps": 0}, "--nb-local-steps must be a positive integer, got 0"),
        ({"clients_per_round": 10}, "--clients-per-round 10 exceeds the 9 clients"),
        ({"clients_per_round": 0}, "--clients-per-round must be a positive integer"),
        ({"round_decl_byz": 1}, "--round-decl-byz 1 is for partial participation"),
        ({"clients_per_round": 5, "round_decl_byz": 5}, "must be below the 5 clients"),
        ({"local_state": "forget"}, "--local-state 'forget' is unknown"),
        ({"server_learning_rate": 0.0}, "--server-learning-rate"),
        ({"nb_local_steps": 2, "momentum_nesterov": True}, "--momentum-nesterov with federated"),
        (
            {"clients_per_round": 6, "attack": "minmax", "attack_args": {}},
            "--attack minmax .* with --clients-per-round",
        ),
        ({"clients_per_round": 4, "gar": "krum"}, "--gar krum: .*4 clients per round, told 2"),
    ],
)
def test_bad_federated_input(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        check_config(small(**changes))
    assert "\n" not in str(info.value)
