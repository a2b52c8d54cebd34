"""The step's memory: a small constant number of ``n x d`` matrices, whatever the rule.

XLA plans every buffer of a compiled program ahead (``compiled.memory_analysis()``), so the test
compiles the step at n = 256 (nothing runs) and bounds its temporaries: the gradients, the
submissions and what the attack and the rule need, with distances built from an ``[n, n]`` Gram
matrix, never ``[n, n, d]`` differences. The worker momenta ``[h, d]`` are the state, an input.
"""

from __future__ import annotations

import jax
import pytest

from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation

MATRICES = 3  # measured: 1.5 (average, median), 1.75 (krum), 2.0 (bulyan) at n = 256 and 1024


@pytest.mark.parametrize(
    "rule", ["average", "median", "krum", pytest.param("bulyan", marks=pytest.mark.slow)]
)
def test_step_temporaries_are_a_few_worker_matrices(rule):
    n, f = 256, 63
    config = Config(
        dataset="synthetic",
        nb_workers=n,
        nb_decl_byz=f,
        gar=rule,
        attack="little",
        attack_args={"factor": 1.5, "negative": True},
        momentum_at="worker",
    )
    sim = make_simulation(config, make_synthetic(n_train=1_000, n_test=100))
    state = jax.eval_shape(sim.init, jax.random.key(0))
    compiled = jax.jit(sim.step).lower(state, sim.default_hparams(), sim.arrays).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    matrices = analysis.temp_size_in_bytes / (n * sim.dim * 4)
    assert matrices <= MATRICES, f"{rule}: temporaries = {matrices:.2f} n x d matrices"
