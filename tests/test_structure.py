"""Structure choices as traced data: one program for runs differing in placement, Nesterov or
a moment-family attack, equal to the dedicated programs it replaces."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbyz import attacks, momentum, structure, transforms
from jaxbyz.config import Config, HyperParams
from jaxbyz.data import make_synthetic
from jaxbyz.experiments import grid as grid_lib
from jaxbyz.simulator import make_simulation, make_train, moment_attack

DATA = make_synthetic(n_train=1500, n_test=300, shape=(8, 8, 1), seed=5)
LITTLE = {"attack": "little", "attack_args": {"factor": 1.5, "negative": True}}
EMPIRE = {"attack": "empire", "attack_args": {"factor": 1.1}}


def small(**changes) -> Config:
    base = Config(
        dataset="synthetic",
        nb_workers=9,
        nb_decl_byz=2,
        gar="median",
        batch_size=16,
        nb_steps=8,
        evaluation_delta=4,
        learning_rate=0.1,
        momentum=0.9,
        dampening=0.2,
        gradient_clip=1.0,
        **LITTLE,
    )
    return base.replace(**changes)


# ---------------------------------------------------------------------------------------------- #
# Building blocks, exactly


def test_switch_returns_the_chosen_branch_and_keeps_the_others_state():
    rng = np.random.default_rng(0)
    branches = (optax.identity(), transforms.momentum(0.9, 0.1), optax.scale(-2.0))
    tx = transforms.switch(1, *branches)
    u1, u2 = (jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(2))
    state = tx.init(jnp.zeros(5))
    out1, state = tx.update(u1, state)
    out2, state = tx.update(u2, state)
    alone = branches[1]
    s = alone.init(jnp.zeros(5))
    ref1, s = alone.update(u1, s)
    ref2, s = alone.update(u2, s)
    np.testing.assert_array_equal(out1, ref1)
    np.testing.assert_array_equal(out2, ref2)
    np.testing.assert_array_equal(transforms.velocity(state.states[1]), transforms.velocity(s))
    for index in (0, 2):  # the other branches, traced indices under vmap
        outs, _ = jax.vmap(
            lambda i: transforms.switch(i, *branches).update(u1, tx.init(jnp.zeros(5)))
        )(jnp.asarray([index, 1]))
        np.testing.assert_array_equal(outs[0], branches[index].update(u1, ())[0] if index else u1)
        np.testing.assert_array_equal(outs[1], ref1)


@pytest.mark.parametrize("placement", momentum.PLACEMENTS)
def test_traced_composition_equals_the_dedicated_one(placement):
    """Three steps of the worker and server stages: the traced composition gives the dedicated
    one's submissions, update and velocity (tolerance: float32 rounding, 1e-6 relative)."""
    rng = np.random.default_rng(1)
    h, d = 4, 6
    kwargs = dict(beta=0.9, dampening=0.2, optimizer=optax.sgd(0.1), num_workers=h)
    code = structure.PLACEMENT_CODES[placement]
    pair = (momentum.compose(placement, **kwargs), momentum.compose_traced(code, **kwargs))
    theta = jnp.zeros(d)
    states = [(c.worker.init(theta), c.server.init(theta)) for c in pair]
    previous = jnp.asarray(rng.normal(size=d), jnp.float32)
    for _ in range(3):
        grads = jnp.asarray(rng.normal(size=(h, d)), jnp.float32)
        outs = []
        for c, (ws, ss) in zip(pair, states, strict=True):
            sent, ws = c.worker.update(grads, ws, theta, previous_aggregate=previous)
            update, ss = c.server.update(sent[1:].mean(0), ss, theta)
            agg = transforms.RobustAggregateState(previous=previous, accepted=jnp.zeros(0))
            velocity = jnp.broadcast_to(c.velocity(ws, agg, ss), (h, d))
            outs.append((sent, update, velocity, (ws, ss)))
        for a, b in zip(outs[0][:3], outs[1][:3], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        states = [o[3] for o in outs]
        previous = outs[0][0].mean(0)


@pytest.mark.parametrize("spec", [LITTLE, EMPIRE], ids=["little", "empire"])
def test_moment_attack_equals_the_attack_exactly(spec):
    H = jnp.asarray(np.random.default_rng(2).normal(size=(7, 33)), jnp.float32)
    attack = attacks.get(spec["attack"], **spec["attack_args"])
    a, b = structure.attack_moments(attack.name, attack.params)
    coefficients = {"attack_std": jnp.float32(a), "attack_mean": jnp.float32(b)}
    np.testing.assert_array_equal(
        jax.jit(moment_attack, static_argnums=1)(H, 3, coefficients),
        jax.jit(lambda H: attack(H, 3))(H),
    )


def test_which_choices_are_traceable():
    assert structure.traceable(small()) == structure.Traced(True, True, True)
    adaptive = small(attack_args={"factor": -4})  # a searched factor: a program of its own
    assert not structure.traceable(adaptive).attack
    flip = small(attack="labelflip", attack_args={})  # its workers run the placement's stage
    assert structure.traceable(flip) == structure.Traced(False, True, False)
    assert structure.attack_moments("little", {"factor": 2, "negative": False}) == (2.0, 0.0)
    assert structure.attack_moments("empire", {"factor": 1.1}) == (0.0, -1.1)
    assert structure.attack_moments("signflip", {"scale": 1.0}) is None
    with pytest.raises(ValueError, match="placement of this configuration cannot be traced"):
        make_simulation(flip, DATA, traced=structure.Traced(placement=True))


def test_paper_grid_is_thirteen_programs():
    """The paper's Fashion-MNIST grid (920 runs): 92 dedicated programs, 13 with the placement,
    Nesterov and the attack traced (11 rule x f settings and 2 baselines)."""
    grid = grid_lib.load_grid("paper-fashion-mnist")
    assert len(grid.runs) == 920
    assert len(grid_lib.group_programs(grid.runs, trace_structure=False)) == 92
    programs = grid_lib.group_programs(grid.runs)
    assert len(programs) == 13
    assert {p.traced for p in programs} == {
        structure.Traced(True, True, True),
        structure.Traced(nesterov=True),
    }


# ---------------------------------------------------------------------------------------------- #
# Whole runs: the traced program against the dedicated ones


QUICK = [("worker", True, EMPIRE), ("server", False, LITTLE)]  # each choice takes two values
FULL = [
    (p, nesterov, spec)
    for p, (nesterov, spec) in itertools.product(
        momentum.PLACEMENTS, [(False, LITTLE), (True, EMPIRE), (True, LITTLE), (False, EMPIRE)]
    )
]


@pytest.mark.parametrize(
    "combos", [QUICK, pytest.param(FULL, marks=pytest.mark.slow)], ids=["two", "all-twelve"]
)
def test_traced_program_equals_dedicated_programs(combos):
    """Runs (placements x Nesterov x little/empire) vmapped through one traced program equal
    each run's dedicated program: accuracies within one test example, parameters and study
    metrics within 1e-4 relative (vmapped and single programs round differently; the same
    tolerance as seeds batched by vmap)."""
    configs = [small(momentum_at=p, momentum_nesterov=n, **spec) for p, n, spec in combos]
    traced = structure.varying(configs)
    assert traced == structure.Traced(True, True, True)
    train = make_train(configs[0], DATA, traced=traced)
    hps = [
        HyperParams.from_config(c)._replace(attack={}) for c in configs
    ]  # the factors live in the moment coefficients
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *hps)
    keys = jnp.stack([jax.random.key(3)] * len(configs))
    together = jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(keys, stacked, train.data)
    for i, config in enumerate(configs):
        alone = jax.jit(make_train(config, DATA))(jax.random.key(3))
        np.testing.assert_allclose(
            together["accuracy"][i], alone["accuracy"], atol=1.01 / 300, err_msg=str(i)
        )
        np.testing.assert_allclose(together["theta"][i], alone["theta"], rtol=1e-4, atol=1e-5)
        for name in ("honest_norm", "attack_norm", "aggregate_norm"):
            np.testing.assert_allclose(
                together["study"][name][i], alone["study"][name], rtol=1e-4, err_msg=name
            )
    # the six runs are not one run: the choices really change the trajectory
    assert len({np.asarray(t).tobytes() for t in together["theta"]}) == len(configs)
