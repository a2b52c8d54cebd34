"""How the driver compiles: the once-run programs at a lower LLVM level give identical results,
and the compilations overlap."""

from __future__ import annotations

import jax
import numpy as np

from jaxbyz import driver as driver_lib
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.simulator import make_simulation

DATA = make_synthetic(n_train=600, n_test=200, shape=(8, 8, 1), seed=2)


def _host(tree):
    def leaf(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return jax.tree.leaves(jax.tree.map(leaf, tree))


def test_once_run_programs_equal_the_default_level_bit_for_bit():
    """``start`` (initialisation: PRNG, uniform scaling) and ``evaluate`` compiled with
    :data:`jaxbyz.driver.ONCE_OPTIONS` return exactly what the default level returns."""
    config = Config(dataset="synthetic", nb_workers=5, nb_decl_byz=1, gar="median",
                    attack="little", attack_args={"factor": 1.5}, batch_size=8, nb_steps=4,
                    evaluation_delta=2)  # fmt: skip
    sim = make_simulation(config, DATA)
    drv = driver_lib.Driver(sim)
    key, data = jax.random.key(4), sim.arrays
    programs = drv.compile(key, sim.default_hparams(), data)
    assert programs.compile_wall >= max(programs.compile_times.values())
    assert set(programs.compile_times) == {"start", "steps[2]", "evaluate"}
    default_start = jax.jit(drv._start).lower(key, data).compile()
    ours, reference = programs.start(key, data), default_start(key, data)
    for a, b in zip(_host(ours), _host(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    state, _ = programs.steps[2](ours[0], sim.default_hparams(), data)
    default_eval = jax.jit(sim.evaluate).lower(state, data).compile()
    assert float(programs.evaluate(state, data)) == float(default_eval(state, data))
