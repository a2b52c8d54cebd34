"""Every attack with every rule compiles and runs one simulator step on synthetic data.

The fast set runs every attack (default parameters: adaptive factors where the attack has one)
against krum, and every rule against "a little is enough" with the paper's fixed factor; the full
cross product with default parameters is marked slow.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from jaxbyz import aggregators, attacks
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation

DATA = make_synthetic(n_train=256, n_test=64, shape=(4, 4, 1), seed=0)
N, F = 15, 3  # bulyan needs n >= 4f+3
PAPER_LITTLE = (("factor", 1.5), ("negative", True))
# The fast suite runs a step of each rule and of each attack once, paired in turn, and the
# paper's pair; `pytest -m slow` runs every other pair.
RULES = aggregators.names()
ATTACKS = [a for a in attacks.names() if a != "dissensus"]  # dissensus: graphs only (its tests)
FAST = [
    (ATTACKS[i % len(ATTACKS)], (), RULES[i % len(RULES)])
    for i in range(max(len(RULES), len(ATTACKS)))
] + [("little", PAPER_LITTLE, "krum")]
FULL = [(a, (), r) for a in ATTACKS for r in RULES if (a, (), r) not in FAST]


@functools.cache
def _simulation(attack: str, attack_args: tuple, rule: str):
    config = Config(
        dataset="synthetic",
        nb_workers=N,
        nb_decl_byz=F,
        gar=rule,
        attack=attack,
        attack_args=dict(attack_args),
        batch_size=4,
        nb_steps=1,
        evaluation_delta=1,
    )
    return make_simulation(config, DATA)


def _one_step(attack: str, attack_args: tuple, rule: str) -> None:
    sim = _simulation(attack, attack_args, rule)
    state = sim.init(jax.random.key(0))
    new_state, study = jax.jit(sim.step)(state, sim.default_hparams(), sim.arrays)
    assert new_state.theta.shape == state.theta.shape
    assert int(new_state.step) == 1
    if rule != "average":  # the average is not robust: NaN attacks may poison it
        assert np.isfinite(np.asarray(new_state.theta)).all(), (attack, rule)
    assert set(study) >= {"loss", "variance_norm_ratio", "byzantine_accepted"}


@pytest.mark.parametrize(("attack", "attack_args", "rule"), FAST)
def test_attack_rule_step(attack, attack_args, rule):
    _one_step(attack, attack_args, rule)


@pytest.mark.slow
@pytest.mark.parametrize(("attack", "attack_args", "rule"), FULL)
def test_attack_rule_step_full(attack, attack_args, rule):
    _one_step(attack, attack_args, rule)
